"""Ctrl-C during `tagcap caption`: one line, exit status 130, and the rerun resumes."""

import glob
import os
import signal
import subprocess
import time

from tagcap.pipeline.sample import write_sample
from tests.helpers import check_output, cli_env, slow_caption_config, tagcap_cmd

SHARDS = 8


def _default_sigint() -> None:
    # A background job of a non-interactive shell ignores SIGINT, and a child inherits that:
    # what a terminal's Ctrl-C reaches has the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_one_line_exits_130_and_the_rerun_resumes(tmp_path):
    sample = write_sample(str(tmp_path / "in"), shards=SHARDS, clips_per_shard=3, seconds=2.0, seed=3)
    out = tmp_path / "out"
    config, slow_env = slow_caption_config(tmp_path, out, sample, sleep=1.0)
    proc = subprocess.Popen(
        tagcap_cmd("caption", "--config", str(config)),
        env=slow_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(str(out / "*.stats.json")) and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert glob.glob(str(out / "*.stats.json")), "no shard was committed in time"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    said = [line for line in lines if "interrupted" in line]
    assert len(said) == 1 and said[0] == lines[-1], stderr
    committed = len(glob.glob(str(out / "*.stats.json")))
    assert said[0] == (
        f"tagcap caption: interrupted: {committed} of {SHARDS} shards committed; rerun the same command to resume"
    )
    assert 1 <= committed < SHARDS
    # The rerun picks up where it stopped.
    rerun = subprocess.run(
        tagcap_cmd("caption", "--config", str(config)), env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"({committed} already committed, {SHARDS - committed} to do)" in rerun.stderr
    check_output(str(out), expected_inputs=SHARDS * 3)
    assert not os.path.exists(out / "tagcap.lock") or rerun.returncode == 0
