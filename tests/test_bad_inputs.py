"""Bad inputs become error rows with reasons; the job finishes and the counts reconcile."""

import json

import numpy as np
import pyarrow.parquet as pq

from tagcap.pipeline.caption import run_caption
from tagcap.schemas.config import CaptionConfig
from tests.builders import encode, make_tar, segments_csv, tone
from tests.helpers import check_output

LABELS = "index,mid,display_name\n0,/m/0bt9lr,Dog\n1,/m/05tny_,Bark\n"


def _ytid(i: int) -> str:
    return f"bad{i:08d}"


def test_bad_inputs_become_error_rows(ray_local, tmp_path):
    good = encode(tone(1.0), 16000)
    nan = tone(1.0)
    nan[10:20] = np.nan
    rows = []
    members = []

    def add(i, data, ext="flac", mids=("/m/0bt9lr",), segment=True, json_blob=None):
        key = f"Y{_ytid(i)}_0"
        members.append((f"{key}.{ext}", data))
        if json_blob is not None:
            members.append((f"{key}.json", json_blob))
        if segment:
            rows.append((_ytid(i), 0.0, 10.0, list(mids)))

    add(0, good)  # fine
    add(1, good[:200] + b"\x00" * 500)  # corrupt FLAC
    add(2, b"")  # empty file
    add(3, encode(nan, 16000, "WAV", "FLOAT"), ext="wav")  # NaN samples
    add(4, good, segment=False)  # no segment row: no tags
    add(5, good, mids=("/m/unknown1",))  # only unknown tags
    add(6, good, mids=())  # a segment without labels
    add(7, encode(tone(1.0, 1000), 1000, "WAV", "PCM_16"), ext="wav")  # wrong sample rate
    add(8, good, json_blob=b"{not json")  # bad json
    add(9, encode(tone(1.0, 44100, channels=2), 44100), mids=("/m/0bt9lr", "/m/x", "/m/05tny_"))  # fine, stereo 44.1k
    members.append(("../../escape.flac", good))  # unsafe path
    members.append(("Y" + _ytid(10) + "_0.txt", b"no audio here"))  # no audio member
    make_tar(members, str(tmp_path / "000000.tar"))

    # a truncated tar: two good clips, then the third cut mid-data
    clip = encode(tone(0.6, 16000, freq=300), 16000)
    raw = make_tar([(f"Y{_ytid(20 + i)}_0.flac", clip) for i in range(3)])
    block = 512 + -(-len(clip) // 512) * 512
    (tmp_path / "000001.tar").write_bytes(raw[: 2 * block + 512 + 100])
    rows += [(_ytid(20 + i), 0.0, 10.0, ["/m/0bt9lr"]) for i in range(3)]

    (tmp_path / "segments.csv").write_text(segments_csv(rows))
    (tmp_path / "labels.csv").write_text(LABELS)
    out = tmp_path / "out"
    cfg = CaptionConfig(
        input=[str(tmp_path / "{000000..000001}.tar")],
        segments=[str(tmp_path / "segments.csv")],
        labels=str(tmp_path / "labels.csv"),
        output=str(out),
        progress=False,
    )
    assert run_caption(cfg) == 0  # bad samples are not a failed job
    o = check_output(str(out), expected_inputs=12 + 3)
    reasons = {r["key"].split("_")[0].removeprefix("Y"): r["reason"] for r in o.error_rows}
    assert reasons[_ytid(1)] == "decode_error"
    assert reasons[_ytid(2)] == "empty_audio"
    assert reasons[_ytid(3)] == "non_finite"
    assert reasons[_ytid(4)] == "no_segment"
    assert reasons[_ytid(5)] == "unknown_tags"
    assert reasons[_ytid(6)] == "no_tags"
    assert reasons[_ytid(7)] == "bad_sample_rate"
    assert reasons[_ytid(8)] == "bad_json"
    assert reasons[_ytid(10)] == "no_audio"
    assert reasons["../../escape.flac"] == "unsafe_member"
    assert reasons[_ytid(22)] == "truncated_tar"
    written = {s["__key__"]: json.loads(s["json"]) for s in o.samples}
    assert set(written) == {f"Y{_ytid(i)}_0" for i in (0, 9, 20, 21)}
    assert written[f"Y{_ytid(9)}_0"]["tag"] == ["Dog", "Bark"]  # the unknown MID dropped
    errors = pq.read_table(out / "errors" / "000000.parquet").to_pylist()
    assert all(r["detail"] and r["stage"] in {"read", "decode", "join"} for r in errors)
    assert o.stats["000000"]["failed"]["decode_error"] == 1
    assert not list(tmp_path.parent.glob("escape*"))
