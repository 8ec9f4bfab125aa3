"""A driver killed with SIGKILL mid-run, then rerun, gives the bytes of an uninterrupted run."""

import glob
import os
import random
import signal
import subprocess
import tarfile
import time

import psutil

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.sample import write_sample
from tests.helpers import (
    SLOW_TEMPLATE,
    check_output,
    cli_env,
    sample_config,
    slow_caption_config,
    start_caption,
    tagcap_cmd,
    tar_digests,
)

SHARDS = 8


def _ray_pids() -> set[int]:
    """The Ray processes that hold a node's resources (its agents linger a minute on
    their own timers before noticing the raylet is gone)."""
    names = ("raylet", "gcs_server")
    found = set()
    for p in psutil.process_iter(["name", "cmdline"]):
        text = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        if any(n in text for n in names):
            found.add(p.pid)
    return found


def _all_visible_tars_complete(out: str) -> None:
    for path in glob.glob(os.path.join(out, "*.tar")):
        with tarfile.open(path) as tar:  # raises on a torn tar
            for member in tar:
                assert tar.extractfile(member).read() is not None


def test_sigkilled_driver_then_rerun_gives_identical_output(ray_local, tmp_path):
    sample = write_sample(str(tmp_path / "in"), shards=SHARDS, clips_per_shard=3, seconds=2.0, seed=7)
    reference = tmp_path / "reference"
    assert run_caption(sample_config(sample, reference, captioner=SLOW_TEMPLATE, captioner_options={"sleep": 0})) == 0

    out = tmp_path / "out"
    config, slow_env = slow_caption_config(tmp_path, out, sample, sleep=0.6)
    kills = 0
    ray_before = _ray_pids()
    # Killed at random moments (some before Ray is even up, some mid-shard), each time
    # after the previous kill's rerun made some progress or none.
    rng = random.Random(20261125)
    for delay in [rng.uniform(0.5, 6.0) for _ in range(4)]:
        proc = start_caption(config, slow_env)
        time.sleep(delay)
        if proc.poll() is not None:  # finished before its kill: nothing left to interrupt
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        _all_visible_tars_complete(str(out))
    assert kills >= 3
    final = subprocess.run(
        tagcap_cmd("caption", "--config", str(config)), env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert final.returncode == 0, final.stderr
    assert "already committed" in final.stderr
    assert tar_digests(str(out)) == tar_digests(str(reference))
    o = check_output(str(out), expected_inputs=SHARDS * 3)
    assert len(o.samples) == SHARDS * 3
    # the killed drivers' embedded Ray went with them
    deadline = time.time() + 30
    while time.time() < deadline and (_ray_pids() - ray_before):
        time.sleep(0.5)
    assert not (_ray_pids() - ray_before)
