"""The shard writer's building blocks: the ustar stream is byte for byte tarfile's, and a
unit's audio crosses process boundaries as one out-of-band buffer."""

import io
import itertools
import os
import pickle
import tarfile
from dataclasses import asdict

import numpy as np
import pytest

from tagcap.schemas.work import PackedBytes
from tagcap.workers.writer import _tarinfo, _TarStream

SIZES = [0, 1, 511, 512, 513, 10_000, 70_001]


def _tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """The archive ``tarfile`` itself makes of these members (the reference)."""
    theirs = io.BytesIO()
    with tarfile.open(fileobj=theirs, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
    return theirs.getvalue()


@pytest.mark.parametrize("count", [0, 1, 3, len(SIZES)])
def test_tar_stream_is_byte_identical_to_tarfile(count):
    rng = np.random.default_rng(count)
    members = [(f"{'k' * (i * 13 % 90)}{i}.flac", rng.bytes(size)) for i, size in enumerate(SIZES[:count])]
    ours = io.BytesIO()
    stream = _TarStream(ours)
    for name, data in members:
        stream.add(name, memoryview(data))
    stream.close()
    assert ours.getvalue() == _tarfile_bytes(members)
    with tarfile.open(fileobj=io.BytesIO(ours.getvalue())) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar] == members


def test_tar_stream_hands_what_it_wrote_to_the_disk_in_order_and_stays_identical(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    members = [(f"{i}.flac", rng.bytes(size)) for i, size in enumerate([5_000, 700, 12_000, 0, 3_333, 9_000])]
    handed: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def spy(fd, offset, length, advice):
        handed.append((offset, length))
        assert advice == os.POSIX_FADV_DONTNEED
        # What it hands over is on the file already, not in Python's buffer.
        assert os.fstat(fd).st_size >= offset + length
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    path = tmp_path / "shard.tar"
    with open(path, "wb") as fh:
        stream = _TarStream(fh, writeback=4096)
        for name, data in members:
            stream.add(name, data)
        stream.close()
    assert path.read_bytes() == _tarfile_bytes(members)
    # Contiguous ranges from 0, each at least the writeback size, never past the members.
    assert len(handed) >= 3 and handed[0][0] == 0
    for (a, n), (b, _) in itertools.pairwise(handed):
        assert b == a + n and n >= 4096
    assert handed[-1][0] + handed[-1][1] <= stream.offset


def test_packed_bytes_round_trip_out_of_band():
    items = [b"", os.urandom(700), b"x", b"", os.urandom(3)]
    packed = PackedBytes.pack(items)
    assert len(packed) == len(items) and [bytes(packed[i]) for i in range(len(items))] == items
    buffers: list[pickle.PickleBuffer] = []
    blob = pickle.dumps(packed, protocol=5, buffer_callback=buffers.append)
    # The audio is not inside the pickle: it travels as a separate buffer (zero-copy in Ray).
    assert len(blob) < 700 and 704 in [len(b.raw()) for b in buffers]
    back = pickle.loads(blob, buffers=buffers)
    assert [bytes(back[i]) for i in range(len(items))] == items
    assert len(PackedBytes.pack([])) == 0


def test_views_of_one_buffer_travel_as_that_buffer():
    """Members sliced from a tar read whole: the tar's bytes are the array, not a copy."""
    whole = os.urandom(4096)
    view = memoryview(whole)
    items = [view[512:1700], view[2048:2048], view[2048:4000], view[100:200]]
    packed = PackedBytes.pack(items)
    assert np.shares_memory(packed.data, np.frombuffer(whole, np.uint8)) and packed.data.nbytes == 4096
    assert [bytes(packed[i]) for i in range(len(items))] == [bytes(v) for v in items]
    buffers: list[pickle.PickleBuffer] = []
    back = pickle.loads(pickle.dumps(packed, protocol=5, buffer_callback=buffers.append), buffers=buffers)
    assert [bytes(back[i]) for i in range(len(items))] == [bytes(v) for v in items]
    # Views of two buffers, bytes among the views, or views of a small part of the buffer:
    # joined into one new buffer as before.
    for mixed in ([view[0:10], memoryview(os.urandom(20))], [view[0:10], b"abc"], [view[0:10], view[100:2000]]):
        joined = PackedBytes.pack(mixed)
        assert not np.shares_memory(joined.data, np.frombuffer(whole, np.uint8))
        assert [bytes(joined[i]) for i in range(2)] == [bytes(m) for m in mixed]


def test_sample_json_is_the_records_fields_sorted_and_compact():
    # The member's bytes are part of the byte-identical-shards guarantee: they must be the
    # canonical encoding of every field, nested ones included (tuples as lists).
    import json
    from dataclasses import asdict

    from tagcap.schemas.records import CaptionMeta, SampleRecord

    record = SampleRecord(
        text=["a dog barks, then a café door closes"],
        tag=["Dog", "Bark"],
        original_data={"ytid": "-abc", "start_seconds": 30.0, "end_seconds": 40.0, "mids": ["/m/0bt9lr"]},
        caption_meta=CaptionMeta(
            captioner="blat-1",
            checkpoint_sha256=None,
            params={"beam_size": 3, "nested": {"b": [1, 2], "a": None}},
            logprob=-3.25,
            clap_score=None,
            candidates=("a dog barks", "a dog"),  # type: ignore[arg-type]
            tagcap_version="0.1.0",
        ),
    )

    def canonical(rec):
        # The optional provenance keys (an alm chain's answers, later stages) are left out when None.
        fields = asdict(rec)
        fields["caption_meta"] = {
            k: v for k, v in fields["caption_meta"].items() if v is not None or k not in {"answers", "stages"}
        }
        return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()

    assert record.to_json_bytes() == canonical(record)
    assert json.loads(record.to_json_bytes())["caption_meta"]["candidates"] == ["a dog barks", "a dog"]
    assert "answers" not in json.loads(record.to_json_bytes())["caption_meta"]
    from dataclasses import replace

    chained = replace(
        record,
        caption_meta=replace(
            record.caption_meta, answers=["a dog", "no speech"], stages=[{"stage": "rewrite", "output": {"x": [1]}}]
        ),
    )
    assert chained.to_json_bytes() == canonical(chained)
    assert json.loads(chained.to_json_bytes())["caption_meta"]["answers"] == ["a dog", "no speech"]


def test_stage_medians_follow_a_units_path_and_skip_stats_without_them():
    from tagcap.schemas.records import ShardStats, median_stage_seconds

    def stats(**stages):
        return ShardStats(shard="000000", source="x", samples_in=1, written=1, stage_seconds=stages)

    got = median_stage_seconds(
        [stats(write=0.3, read=0.1, queued=2.0), stats(write=0.5, read=0.3, queued=4.0), stats(write=0.4), stats()]
    )
    assert list(got) == ["read", "queued", "write"]
    assert got == {"read": 0.2, "queued": 3.0, "write": 0.4}
    assert median_stage_seconds([stats()]) == {}
    assert ShardStats.from_dict({**asdict(stats(read=1.0)), "unknown": 1}).stage_seconds == {"read": 1.0}


def test_stage_seconds_split_a_units_time_and_never_go_below_zero():
    from tagcap.schemas.work import UnitPayload, WorkUnit
    from tagcap.workers.writer import stage_seconds

    decoded = {"read": 0.5, "decode": 1.5, "prepare_cpu": 1.2}
    payload = UnitPayload(
        WorkUnit(0, "000000", "tar", ("x.tar",)), [], PackedBytes.pack([]), [], 0, dict(decoded), prepared_at=103.0
    )
    # Submitted at 100, decoded 101-103, captioned 104-106, written 106.5-107.
    got = stage_seconds(payload, 100.0, (104.0, 106.0), 106.5, 107.0)
    assert got == {**decoded, "pending": 1.0, "to_captioner": 1.0, "caption": 2.0, "to_writer": 0.5, "write": 0.5}
    assert sum(v for k, v in got.items() if k != "prepare_cpu") == 107.0 - 100.0
    # Without the caption call's times, one stage between decode and write.
    got = stage_seconds(payload, 100.0, None, 106.5, 107.0)
    assert got["queued"] == 3.5 and not {"to_captioner", "caption", "to_writer"} & set(got)
    # The captioner's clock a little behind the decode worker's: no negative gap.
    got = stage_seconds(payload, 100.0, (102.9, 106.0), 106.5, 107.0)
    assert got["to_captioner"] == 0.0 and got["caption"] == pytest.approx(3.1)
    # A payload made elsewhere (no decode times): only the write.
    bare = UnitPayload(WorkUnit(0, "000000", "tar", ("x.tar",)), [], PackedBytes.pack([]), [], 0)
    assert stage_seconds(bare, 100.0, (104.0, 106.0), 106.5, 107.0) == {"write": 0.5}
