"""``tagcap dedupe``: exact duplicates by the PCM digest recorded at caption time, near
duplicates (re-encoded, another gain, shifted) by fingerprint, within and across corpora, on
real ESC-50 recordings; the key list it writes is read by ``caption --exclude`` and by
``pretrain --exclude-keys``; ``inspect`` reports the counts."""

import io
import json
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset as wds

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.corpus_summary import summarize
from tagcap.pipeline.dedupe import run_dedupe
from tagcap.schemas.config import CaptionConfig
from tagcap.workers.datasets import drop_excluded, tar_samples
from tagcap.workers.exclusion import load_exclusions
from tagcap.workers.fingerprint import bit_error_rate, fingerprint, pcm_digest
from tagcap.workers.storage import Storage
from tests.builders import encode, make_tar, segments_csv
from tests.conftest import shared_data
from tests.helpers import check_output, cli_env, tagcap_cmd

SPEECH = ["/m/09x0r"]


def _esc50(n: int) -> list[np.ndarray]:
    folder = shared_data("esc50", "audio")
    names = sorted(p.name for p in folder.iterdir())[:: 400 // n][:n]
    return [sf.read(folder / name, dtype="float32")[0] for name in names]


def _mp3(x: np.ndarray, rate: int = 16000) -> bytes:
    return encode(x, rate, "MP3")


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _ytid(tag: str, i: int) -> str:
    return f"{tag}{i:0{11 - len(tag)}d}"


def _corpus(tmp_path, name: str, clips: list[tuple[str, bytes, str]], audio: str = "copy") -> str:
    """Caption ``(ytid, audio bytes, ext)`` clips with the template captioner; the root."""
    folder = tmp_path / name
    folder.mkdir()
    make_tar([(f"Y{y}_0.{ext}", data) for y, data, ext in clips], str(folder / "in.tar"))
    (folder / "segments.csv").write_text(segments_csv([(y, 0.0, 4.0, SPEECH) for y, _, _ in clips]))
    out = str(folder / "out")
    cfg = CaptionConfig(
        input=[str(folder / "in.tar")],
        segments=[str(folder / "segments.csv")],
        labels=str(shared_data("audioset", "class_labels_indices.csv")),
        output=out,
        progress=False,
        audio=audio,
    )
    assert run_caption(cfg) == 0
    check_output(out, expected_inputs=len(clips))
    return out


def test_the_fingerprint_survives_codecs_gain_and_shifts_and_tells_recordings_apart():
    a, b = _esc50(2)
    rate = 16000
    base = fingerprint(a[: 4 * rate], rate)
    same = {
        "mp3": sf.read(io.BytesIO(_mp3(a[: 4 * rate])), dtype="float32")[0],
        "gain": a[: 4 * rate] * 0.25,
        "shift": a[int(0.7 * rate) : int(4.7 * rate)],
    }
    for what, x in same.items():
        assert bit_error_rate(base, fingerprint(x, rate), 60) < 0.15, what
    assert bit_error_rate(base, fingerprint(b[: 4 * rate], rate), 60) > 0.4
    silence = fingerprint(np.zeros(4 * rate, np.float32), rate)
    assert silence.audible_frames == 0
    assert pcm_digest(np.int16([1, 2]), 16000) != pcm_digest(np.int16([1, 2]), 8000)


def test_dedupe_finds_exact_and_near_duplicates_within_and_across_corpora(ray_local, tmp_path):
    x = _esc50(6)
    rate = 16000
    w = [clip[: 4 * rate] for clip in x]
    shifted = np.clip(x[1][int(0.5 * rate) : int(4.5 * rate)] * 0.5, -1, 1)
    first = [(_ytid("a", i), encode(w[i], rate), "flac") for i in range(4)]
    first += [
        (_ytid("exact", 0), encode(w[0], rate, "WAV", "PCM_16"), "wav"),  # the same PCM as a0
        (_ytid("near", 0), _mp3(shifted), "mp3"),  # a1 shifted 0.5 s, -6 dB, MP3
    ]
    one = _corpus(tmp_path, "one", first)
    index = pq.read_table(f"{one}/index/000000.parquet").to_pydict()
    digests = dict(zip(index["key"], index["pcm_digest"], strict=True))
    assert digests[f"Y{_ytid('exact', 0)}_0"] == digests[f"Y{_ytid('a', 0)}_0"]
    assert len(set(digests.values())) == 5
    # A second corpus: one clip it shares with the first (same key: one clip, not a
    # duplicate), a re-encoding of the first's a2 at +6 dB, and clips of its own.
    second = [
        first[3],
        (_ytid("b", 0), _mp3(np.clip(w[2] * 2.0, -1, 1)), "mp3"),
        (_ytid("b", 1), encode(w[4], rate), "flac"),
        (_ytid("b", 2), encode(w[5], rate), "flac"),
    ]
    two = _corpus(tmp_path, "two", second)

    result = run_dedupe([one, two])
    assert result["exact_groups"] == 1 and result["exact_dropped"] == 1
    assert result["near_groups"] == 2 and result["near_dropped"] == 2
    assert result["shared_keys"] == 1 and result["clips"] == 9
    keys = [line for line in _read(result["keys_url"]).splitlines() if not line.startswith("#")]
    assert sorted(keys) == sorted([f"Y{_ytid('exact', 0)}_0", f"Y{_ytid('near', 0)}_0", f"Y{_ytid('b', 0)}_0"])
    groups = [json.loads(line) for line in _read(result["groups_url"]).splitlines()]
    near = {g["kept"]["key"]: g for g in groups if g["kind"] == "near"}
    assert near[f"Y{_ytid('a', 2)}_0"]["dropped"][0]["corpus"] == two
    assert 0 < near[f"Y{_ytid('a', 1)}_0"]["bit_error_rate"] <= 0.25
    summary_two = json.loads(_read(f"{two}/dedupe/summary.json"))
    assert summary_two["dropped_here"] == 1 and summary_two["clips_here"] == 4

    # The key list as an exclusion list: a rerun of the first corpus leaves them out, as
    # error rows; and pre-training's stream skips them.
    rerun = tmp_path / "rerun"
    cfg = CaptionConfig(
        input=[str(tmp_path / "one" / "in.tar")],
        segments=[str(tmp_path / "one" / "segments.csv")],
        labels=str(shared_data("audioset", "class_labels_indices.csv")),
        output=str(rerun),
        progress=False,
        exclude=[result["keys_url"]],
    )
    assert run_caption(cfg) == 0
    o = check_output(str(rerun), expected_inputs=6)
    excluded = sorted(r["key"] for r in o.error_rows if r["reason"] == "excluded")
    assert excluded == sorted([f"Y{_ytid('exact', 0)}_0", f"Y{_ytid('near', 0)}_0"])
    exclusions = load_exclusions([result["keys_url"]], Storage(), "segment")
    stream = wds.DataPipeline(
        wds.SimpleShardList([f"{two}/000000.tar"]), tar_samples(Storage()), drop_excluded(exclusions)
    )
    kept = sorted([f"Y{_ytid('a', 3)}_0", f"Y{_ytid('b', 1)}_0", f"Y{_ytid('b', 2)}_0"])
    assert sorted(s["__key__"] for s in stream) == kept

    # inspect reports what dedupe found.
    summary = summarize(two).to_dict()
    assert summary["dedupe"]["dropped_here"] == 1 and summary["dedupe"]["near_groups"] == 2


def test_a_corpus_without_its_audio_takes_part_in_the_exact_search(ray_local, tmp_path):
    (x,) = _esc50(1)
    w = x[: 4 * 16000]
    clips = [(_ytid("q", 0), encode(w, 16000), "flac"), (_ytid("q", 1), encode(w, 16000, "WAV", "PCM_16"), "wav")]
    clips.append((_ytid("q", 2), encode(w * 0.5, 16000), "flac"))  # a near copy: not found without audio
    out = _corpus(tmp_path, "silent", clips, audio="none")
    proc = subprocess.run(
        tagcap_cmd("dedupe", out, "--num-cpus", "1"), env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["exact_groups"] == 1 and result["near_groups"] == 0 and result["not_fingerprinted"] == 3
    assert f"Y{_ytid('q', 1)}_0" in _read(result["keys_url"]).splitlines()


def test_dedupe_command_line_and_bad_input(tmp_path):
    proc = subprocess.run(
        tagcap_cmd("dedupe", str(tmp_path / "nothing")), env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr


def test_pretrain_refuses_a_missing_key_list(tmp_path):
    from tagcap.pipeline.pretrain import pretrain_config
    from tagcap.workers.pretrain import PretrainConfig

    with pytest.raises(ValueError, match="exclusion list not found"):
        pretrain_config(PretrainConfig(train=["x.tar"], out=str(tmp_path), exclude_keys=[str(tmp_path / "k.txt")]))
