"""``tagcap prepare-captions``: caption CSVs joined to AudioSet segments, then shards."""

import json
import subprocess

import webdataset as wds

from tagcap.pipeline.prepare_captions import join_tags, parse_caption_csv
from tagcap.schemas.audioset import SegmentTable, parse_segments
from tests.builders import encode, tone
from tests.conftest import shared_data
from tests.helpers import cli_env, tagcap_cmd


def _segments(name):
    return SegmentTable(parse_segments(shared_data("audioset", name).read_text())[0])


def test_musiccaps_joins_the_shared_audioset_csvs():
    fmt, clips = parse_caption_csv(shared_data("captions", "musiccaps", "musiccaps-public.csv").read_text())
    assert fmt == "musiccaps" and len(clips) == 5521
    joined_eval, _ = join_tags([c for c in clips], _segments("eval_segments.csv"))
    assert joined_eval == 2858
    fmt, clips = parse_caption_csv(shared_data("captions", "musiccaps", "musiccaps-public.csv").read_text())
    joined_bal, _ = join_tags(clips, _segments("balanced_train_segments.csv"))
    assert joined_bal == 2663
    # the labels MusicCaps carries agree with the segment CSV's
    import csv

    rows = {r["ytid"]: r for r in csv.DictReader(shared_data("captions", "musiccaps", "musiccaps-public.csv").open())}
    for clip in clips:
        if clip.mids:
            assert set(clip.mids) == set(rows[clip.ytid]["audioset_positive_labels"].split(","))


def test_caption_csv_shapes():
    fmt, clips = parse_caption_csv(shared_data("captions", "audiocaps", "val.csv").read_text())
    assert fmt == "audiocaps" and len(clips) == 495 and all(len(c.captions) == 5 for c in clips)
    fmt, clips = parse_caption_csv(shared_data("captions", "clotho", "clotho_captions_evaluation.csv").read_text())
    assert fmt == "clotho" and len(clips) == 1045 and all(len(c.captions) == 5 for c in clips)


def test_prepare_captions_end_to_end(tmp_path):
    """Synthesized audio for the first MusicCaps clips in the eval split, named as PANNs
    downloads name them, through the CLI into shards that train-captioner reads."""
    csv_path = shared_data("captions", "musiccaps", "musiccaps-public.csv")
    _, clips = parse_caption_csv(csv_path.read_text())
    join_tags(clips, _segments("eval_segments.csv"))
    chosen = [c for c in clips if c.mids][:5]
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, clip in enumerate(chosen[:4]):  # the fifth has no audio
        (audio / f"Y{clip.ytid}.wav").write_bytes(encode(tone(1.0, 16000, 200 + 50 * i), 16000, "WAV", "PCM_16"))
    small_csv = tmp_path / "captions.csv"
    lines = csv_path.read_text().splitlines()
    keep = {c.ytid for c in chosen}
    small_csv.write_text("\n".join([lines[0], *[ln for ln in lines[1:] if ln.split(",")[0] in keep]]) + "\n")
    proc = subprocess.run(
        tagcap_cmd(
            "prepare-captions",
            "--captions",
            str(small_csv),
            "--audio",
            str(audio),
            "--segments",
            str(shared_data("audioset", "eval_segments.csv")),
            "--labels",
            str(shared_data("audioset", "class_labels_indices.csv")),
            "--output",
            str(tmp_path / "out"),
            "--clips-per-shard",
            "3",
        ),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "prepare-captions: 100%" in proc.stderr and "4/4" in proc.stderr  # progress on stderr
    summary = json.loads(proc.stdout)
    assert summary == {
        "format": "musiccaps",
        "clips": 5,
        "with_audio": 4,
        "missing_audio": 1,
        "joined_tags": 5,
        "missing_segment": 0,
        "shards": 2,
    }
    samples = list(wds.WebDataset(str(tmp_path / "out" / "{000000..000001}.tar"), shardshuffle=False))
    assert len(samples) == 4
    for s in samples:
        meta = json.loads(s["json"])
        clip = next(c for c in chosen if s["__key__"] == c.key)
        assert meta["text"] == clip.captions and meta["original_data"]["mids"] == clip.mids
        assert meta["tag"] and "wav" in s
