"""Hostile input, generated with hypothesis: no crash, no hang, nothing written outside the
output, exactly one error row or one sample per input sample."""

import io
import json
import os
import tarfile
from dataclasses import replace

import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagcap.schemas.audioset import LabelMap, SegmentTable, _parse_segment_rows, parse_segments
from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.work import DecodeSpec, WorkUnit
from tagcap.workers.captioners.template import TemplateCaptioner
from tagcap.workers.prepare import prepare_unit
from tagcap.workers.storage import Storage
from tagcap.workers.writer import ProvenanceInfo, write_shard

SPEC = DecodeSpec(16000, 16000, "copy", 0.1, 30.0, 4000, 192000, 4096)
LABELS = LabelMap({"/m/0bt9lr": "Dog"})
YTIDS = ["dogdogdog01", "dogdogdog02", "-_YYYYYYYYY"]
SEGMENTS = SegmentTable(
    parse_segments(
        "YTID,start_seconds,end_seconds,positive_labels\n" + "".join(f'{y},0,10,"/m/0bt9lr"\n' for y in YTIDS)
    )[0]
)


def _wav(rate: int, seconds: float, value: float) -> bytes:
    buf = io.BytesIO()
    frames = max(0, int(min(rate * seconds, 400_000)))
    sf.write(buf, np.full(frames, value, dtype=np.float32), max(rate, 1), format="WAV", subtype="FLOAT")
    return buf.getvalue()


names = st.one_of(
    st.sampled_from([f"Y{y}_0" for y in YTIDS]),
    st.sampled_from(["../../evil", "/abs/path", "a/../../b", "x\\..\\y", "..", "Y" + "a" * 300]),
    st.text(alphabet="abcXYZ_-./0123456789", min_size=1, max_size=30),
)
audio = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        _wav,
        st.sampled_from([1, 100, 3999, 8000, 16000, 192001, 1_000_000]),
        st.sampled_from([0.0, 0.01, 0.5, 2.0]),
        st.sampled_from([0.0, 0.5, float("nan"), float("inf")]),
    ),
)
json_blobs = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.just(b"{" * 5000),
    st.just(json.dumps({"ytid": "dogdogdog01", "start_seconds": 0, "pad": "x" * 5000}).encode()),
    st.dictionaries(
        st.sampled_from(["ytid", "start_seconds", "text"]),
        st.one_of(st.integers(), st.text(max_size=12), st.none(), st.lists(st.integers(), max_size=3)),
    ).map(lambda d: json.dumps(d).encode()),
)
members = st.lists(
    st.tuples(names, st.sampled_from(["flac", "wav", "mp3", "ogg", "txt", ""]), audio, json_blobs), max_size=8
)


def _tar(items) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, ext, data, blob in items:
            for member, payload in ((f"{name}.{ext}" if ext else name, data), (f"{name}.json", blob)):
                if payload is None:
                    continue
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(items=members, cut=st.one_of(st.none(), st.floats(0.05, 0.95)))
def test_hostile_tars_give_one_row_per_sample_and_write_only_under_out(items, cut, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    raw = _tar(items)
    if cut is not None:
        raw = raw[: int(len(raw) * cut)]
    (root / "in.tar").write_bytes(raw)
    unit = WorkUnit(0, "000000", "tar", (str(root / "in.tar"),))
    batch, payload = prepare_unit(unit, SPEC, SEGMENTS, LABELS, Storage())
    assert len(batch) == len(payload.samples) and np.isfinite(batch.waveforms).all()
    # Decoding on several threads changes nothing: same rows, same records, same order.
    threaded, threaded_payload = prepare_unit(unit, replace(SPEC, threads=3), SEGMENTS, LABELS, Storage())
    assert np.array_equal(threaded.waveforms, batch.waveforms) and threaded.keys == batch.keys
    assert threaded_payload.samples == payload.samples and threaded_payload.errors == payload.errors
    assert [bytes(threaded_payload.audio[i]) for i in range(len(payload.audio))] == [
        bytes(payload.audio[i]) for i in range(len(payload.audio))
    ]
    out = root / "out"
    stats = write_shard(
        payload,
        TemplateCaptioner()(batch),
        OutputLayout(str(out)),
        Storage(),
        ProvenanceInfo("template-v1", None, {}, "test"),
    )
    assert stats.written + stats.failed_total == stats.samples_in == payload.samples_in
    written = {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}
    assert all(p == "in.tar" or p.startswith("out" + os.sep) for p in written), written


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet='abcYT_-,"/ #.\n0123456789m', max_size=60), max_size=20))
def test_malformed_segment_csv_rows_never_raise(lines):
    table, report = parse_segments("\n".join(lines))
    assert table.num_rows == report.segments
    rows, rows_report = _parse_segment_rows("\n".join(lines), "<segments>", "")
    assert table.equals(rows) and report == rows_report


def test_a_unit_travels_as_pcm16_at_its_most_common_rate(tmp_path):
    """Clips at 48 kHz and one at 22.05 kHz: the batch is int16 at 48 kHz, the odd clip
    resampled to it, every row covering the captioner's clip length at that rate."""
    items = [
        (f"Y{YTIDS[0]}_0", 48000, 0.5),
        (f"Y{YTIDS[1]}_0", 22050, 0.25),
        (f"Y{YTIDS[2]}_0", 48000, 2.0),
    ]
    raw = _tar([(name, "wav", _wav(rate, seconds, 0.5), None) for name, rate, seconds in items])
    (tmp_path / "in.tar").write_bytes(raw)
    batch, payload = prepare_unit(
        WorkUnit(0, "000000", "tar", (str(tmp_path / "in.tar"),)), SPEC, SEGMENTS, LABELS, Storage()
    )
    assert len(payload.samples) == 3 and not payload.errors
    assert batch.sample_rate == 48000 and batch.waveforms.dtype == np.int16
    assert batch.waveforms.shape == (3, 48000)  # SPEC: 1 s at the model's 16 kHz
    held = (batch.waveforms != 0).sum(axis=1)
    assert abs(held[0] - 24000) <= 1 and abs(held[1] - 12000) <= 40 and held[2] == 48000
    # The stored audio is the tar's own buffer (read whole), each clip's bytes sliced from it.
    assert payload.audio.data.nbytes == len(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = [tar.extractfile(m).read() for m in tar.getmembers()]  # type: ignore[union-attr]
    assert [bytes(payload.audio[i]) for i in range(3)] == members
    assert abs(int(batch.waveforms[0, 100]) - 16384) <= 1  # 0.5 full scale


def test_decode_runs_at_a_lower_priority_on_its_own_thread_only(tmp_path):
    """A decode task yields the CPU to the captioner actor and writers (per thread on Linux:
    the worker's other threads keep theirs), and never raises it back (that takes
    privileges)."""
    import threading

    raw = _tar([(f"Y{YTIDS[0]}_0", "wav", _wav(48000, 0.5, 0.5), None)])
    (tmp_path / "in.tar").write_bytes(raw)
    unit = WorkUnit(0, "000000", "tar", (str(tmp_path / "in.tar"),))
    before = os.getpriority(os.PRIO_PROCESS, 0)
    target = max(before, 0) + 3
    seen: dict[str, int] = {}

    def decode_thread() -> None:
        _, payload = prepare_unit(unit, replace(SPEC, niceness=target), SEGMENTS, LABELS, Storage())
        seen["samples"] = len(payload.samples)
        seen["decode"] = os.getpriority(os.PRIO_PROCESS, 0)
        prepare_unit(unit, replace(SPEC, niceness=0), SEGMENTS, LABELS, Storage())
        seen["after_zero"] = os.getpriority(os.PRIO_PROCESS, 0)

    t = threading.Thread(target=decode_thread)
    t.start()
    t.join()
    assert seen["samples"] == 1
    assert seen["decode"] == target == seen["after_zero"]
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
