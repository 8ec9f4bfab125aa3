"""The command line: config files, and bad configurations failing at once, before Ray."""

import json
import re
import subprocess

import pytest
import yaml

from tagcap.pipeline.cli import build_parser, caption_config
from tests.helpers import RUN_STAGES, caption_args, check_output, cli_env, tagcap_cmd


def _run(*args, timeout=120, **env):
    return subprocess.run(tagcap_cmd(*args), capture_output=True, text=True, env={**cli_env(), **env}, timeout=timeout)


def _assert_fails_fast(proc, needle, out_dir):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Ray" not in proc.stderr  # nothing was started
    assert not out_dir.exists()


def test_missing_input_fails_at_once(sample_input, tmp_path):
    proc = _run(*caption_args(sample_input, str(tmp_path / "out")), "--input", str(tmp_path / "nope" / "x.tar"))
    _assert_fails_fast(proc, "input not found", tmp_path / "out")


def test_unknown_captioner_fails_at_once(sample_input, tmp_path):
    proc = _run(*caption_args(sample_input, str(tmp_path / "out"), "--captioner", "gpt9"))
    _assert_fails_fast(proc, "unknown captioner 'gpt9'", tmp_path / "out")


def test_a_bad_captioner_is_reported_before_bad_metadata(sample_input, tmp_path):
    """The models are described on a thread beside the metadata: with both wrong, the
    captioner's error is still the one said, as when it was described first."""
    proc = _run(
        *caption_args(sample_input, str(tmp_path / "out"), "--captioner", "gpt9"),
        "--labels",
        str(tmp_path / "labels.csv"),
    )
    _assert_fails_fast(proc, "unknown captioner 'gpt9'", tmp_path / "out")


def test_missing_labels_and_bad_urls_fail_at_once(sample_input, tmp_path):
    proc = _run(*caption_args(sample_input, str(tmp_path / "out")), "--labels", str(tmp_path / "labels.csv"))
    _assert_fails_fast(proc, "label file not found", tmp_path / "out")
    proc = _run(*caption_args(sample_input, str(tmp_path / "out")), "--input", "pipe:curl http://x | cat")
    _assert_fails_fast(proc, "pipe: URLs", tmp_path / "out")
    proc = _run(*caption_args(sample_input, str(tmp_path / "out"), "--audio", "mp3:9"))
    _assert_fails_fast(proc, "--audio", tmp_path / "out")


def test_yaml_config_and_flags_merge(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": ["a/{000000..000001}.tar"],
                "segments": "s1.csv,s2.csv",
                "labels": "l.csv",
                "output": "out",
                "batch-size": 7,
                "actors": 3,
            }
        )
    )
    args = build_parser().parse_args(["caption", "--config", str(path), "--actors", "2"])
    cfg = caption_config(args)
    assert cfg.segments == ["s1.csv", "s2.csv"] and cfg.batch_size == 7 and cfg.actors == 2
    assert cfg.input == ["a/{000000..000001}.tar"]
    path.write_text(yaml.safe_dump({"inputs": "x"}))
    proc = _run("caption", "--config", str(path))
    assert proc.returncode == 2 and "unknown option(s): inputs" in proc.stderr


def test_sample_command_then_caption_from_the_cli(tmp_path):
    proc = _run("sample", str(tmp_path / "s"), "--shards", "2", "--clips-per-shard", "3", "--seconds", "2")
    assert proc.returncode == 0, proc.stderr
    assert "next: tagcap caption" in proc.stderr
    s = tmp_path / "s"
    proc = _run(
        "caption",
        "--input",
        str(s / "shards" / "{000000..000001}.tar"),
        "--segments",
        str(s / "segments.csv"),
        "--labels",
        str(s / "class_labels_indices.csv"),
        "--output",
        str(tmp_path / "out"),
        "--num-cpus",
        "2",
        "--object-store-memory",
        str(80 * 1024 * 1024),
        "--dashboard",
        "--ray-timeline",
        str(tmp_path / "timeline.json"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Ray dashboard: http://127.0.0.1:" in proc.stderr  # on loopback, and said where
    assert "caption: 100%" in proc.stderr and "2/2" in proc.stderr  # the progress bar
    assert "status: complete" in proc.stderr and "samples: 6 in, 6 written, 0 failed" in proc.stderr
    # Where the time went: the phases add up to the run's wall-clock time.
    wall = float(re.search(r"this run: 6 clips in ([\d.]+) s", proc.stderr).group(1))
    phases = [float(x) for x in re.findall(r"(?:plan|Ray start|units|Ray stop|finish) ([\d.]+) s", proc.stderr)]
    assert len(phases) == 5 and abs(sum(phases) - wall) <= 0.2 and phases[2] > 0
    # And where the shards' time went, stage by stage, in the order a unit goes through them.
    stages = re.findall(r"(\w+) ([\d.]+) s", re.search(r"per shard, median: (.*)", proc.stderr).group(1))
    assert tuple(name for name, _ in stages) == RUN_STAGES
    assert RUN_STAGES[0] == "pending" and RUN_STAGES[-1] == "write"
    assert all(float(seconds) >= 0 for _, seconds in stages)
    check_output(str(tmp_path / "out"), expected_inputs=6)
    # The run's Ray timeline holds a decode task per unit and the writers' calls. (The captioner
    # actor's calls may be missing: its events are lost when the actor is killed at the end.)
    events = json.loads((tmp_path / "timeline.json").read_text())
    names = [e["name"] for e in events if e.get("ph") == "X"]
    assert names.count("prepare") == 2  # a decode actor's call per unit
    assert sum(n == "write_shard" for n in names) >= 1


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("cuda_sync=sleepy", "tuning.cuda_sync must be one of"),
        ("map_ahead=maybe", "tuning.map_ahead: 'maybe' is not a bool"),
        ("store_fraction=most", "tuning.store_fraction: 'most' is not a float"),
        ("warp_speed=9", "unknown tuning setting 'warp_speed'"),
        ("cuda_sync", "expected KEY=VALUE"),
    ],
)
def test_a_bad_tuning_setting_fails_at_once(sample_input, tmp_path, setting, needle):
    # Checked on the driver and carried to the workers: a typo fails before Ray, not in a worker.
    proc = _run(*caption_args(sample_input, str(tmp_path / "out")), "--tuning", setting)
    _assert_fails_fast(proc, needle, tmp_path / "out")


def test_a_bad_tuning_mapping_in_the_yaml_fails_at_once(sample_input, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("tuning:\n  writeback_mb: -1\n")
    proc = _run(*caption_args(sample_input, str(tmp_path / "out")), "--config", str(config))
    _assert_fails_fast(proc, "tuning.writeback_mb must be >= 0", tmp_path / "out")
