"""End to end on the generated sample, with a real local Ray."""

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tagcap.pipeline.caption import ConfigError, run_caption
from tagcap.schemas.audioset import LabelMap, SegmentTable, parse_segments
from tagcap.schemas.keys import parse_key
from tests.helpers import check_output, sample_config, tar_digests

N_CLIPS = 24  # sample_input: 4 shards x 6 clips


@pytest.fixture(scope="module")
def reference_run(ray_local, sample_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert run_caption(sample_config(sample_input, out)) == 0
    return out


def test_sample_end_to_end(reference_run, sample_input):
    o = check_output(str(reference_run), expected_inputs=N_CLIPS)
    assert len(o.samples) == N_CLIPS and not o.error_rows
    assert sorted(o.sizes) == ["000000.tar", "000001.tar", "000002.tar", "000003.tar"]
    segments = SegmentTable(parse_segments(Path(sample_input.segments).read_text())[0])
    labels = LabelMap.parse(Path(sample_input.labels).read_text())
    for s in o.samples:
        meta = json.loads(s["json"])
        clip = parse_key(s["__key__"])
        seg = SegmentTable.choose(segments.lookup([clip.ytid])[clip.ytid], clip.start_ms)
        assert meta["tag"] == [labels[m] for m in seg.mids]  # tags are the clip's own
        assert meta["text"][0].startswith("The sound of ")
        audio, rate = sf.read(io.BytesIO(s["flac"]))
        assert rate == 16000 and audio.shape[0] == 4 * 16000
    assert o.manifest["status"] == "complete" and o.manifest["samples_written"] == N_CLIPS
    assert o.manifest["captioner"] == "template-v1"
    assert len(o.manifest["input_fingerprint"]["urls"]) == 4


def test_two_runs_give_byte_identical_shards(reference_run, sample_input, tmp_path):
    # Other actors and batches, and each unit mapped into its actor ahead of its call
    # (by default only where the actor has a GPU).
    config = sample_config(sample_input, tmp_path / "again", actors=2, batch_size=5, tuning={"map_ahead": True})
    assert run_caption(config) == 0
    assert tar_digests(str(tmp_path / "again")) == tar_digests(str(reference_run))


def test_resume_skips_committed_and_redoes_partial_shards(reference_run, sample_input, tmp_path):
    out = tmp_path / "resume"
    assert run_caption(sample_config(sample_input, out)) == 0
    before = {name: os.stat(out / name).st_mtime_ns for name in ("000000.tar", "000003.tar")}
    # Shard 1: crashed after the tar, before its stats (not committed). Shard 2: a torn tar
    # left by something else under the final name, no stats.
    os.unlink(out / "000001.stats.json")
    os.unlink(out / "000002.stats.json")
    with open(out / "000002.tar", "r+b") as fh:
        fh.truncate(1000)
    os.unlink(out / "sizes.json")
    assert run_caption(sample_config(sample_input, out)) == 0
    assert tar_digests(str(out)) == tar_digests(str(reference_run))
    assert {name: os.stat(out / name).st_mtime_ns for name in before} == before  # skipped, untouched
    check_output(str(out), expected_inputs=N_CLIPS)


def test_a_changed_configuration_is_refused_unless_overwrite(reference_run, sample_input, tmp_path):
    out = tmp_path / "changed"
    assert run_caption(sample_config(sample_input, out)) == 0
    with pytest.raises(ConfigError, match="holds a different run"):
        run_caption(sample_config(sample_input, out, audio="none"))
    # execution-only settings are not a different run
    assert run_caption(sample_config(sample_input, out, batch_size=3, actors=2)) == 0
    # What dedupe and eval captions wrote of the old corpus goes with it.
    for folder, name in (("dedupe", "summary.json"), ("eval", "captions.json")):
        (out / folder).mkdir()
        (out / folder / name).write_text("{}")
    assert run_caption(sample_config(sample_input, out, audio="none", overwrite=True)) == 0
    assert not (out / "dedupe" / "summary.json").exists() and not (out / "eval" / "captions.json").exists()
    o = check_output(str(out), expected_inputs=N_CLIPS)
    assert all(set(s) == {"__key__", "__url__", "__local_path__", "json"} for s in o.samples)


def test_flac_reencode_mode(sample_input, ray_local, tmp_path):
    out = tmp_path / "flac8k"
    assert run_caption(sample_config(sample_input, out, audio="flac:8000")) == 0
    o = check_output(str(out), expected_inputs=N_CLIPS)
    audio, rate = sf.read(io.BytesIO(o.samples[0]["flac"]))
    assert rate == 8000 and audio.ndim == 1 and abs(audio.shape[0] - 4 * 8000) <= 1
    assert np.abs(audio).max() > 0.01
