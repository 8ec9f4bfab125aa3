"""Bounded retries: a dead actor is survived, a poison shard is reported while the rest finish."""

import json
import os
import random
import subprocess

import yaml

from tagcap.pipeline.caption import run_caption
from tagcap.schemas.config import CaptionConfig
from tests.helpers import check_output, cli_env, read_output, tagcap_cmd, tar_digests


def _config(sample, out, **kw):
    return CaptionConfig(
        input=[sample.shards], segments=[sample.segments], labels=sample.labels, output=str(out), progress=False, **kw
    )


def test_actor_killed_mid_run_is_retried_and_output_identical(ray_local, sample_input, tmp_path):
    ref = tmp_path / "ref"
    # The reference run also checks that the actor warms its captioner up for the batch size
    # before the first call (WarmUpTemplate fails every batch otherwise).
    assert run_caption(_config(sample_input, ref, captioner="tests.plugins:WarmUpTemplate", batch_size=2)) == 0
    # 24 clips in batches of 2: the actor dies at a random one of its 12 batches
    die_at = random.Random(os.getpid()).randint(1, 12)
    counter = tmp_path / "calls"
    out = tmp_path / "out"
    cfg = _config(
        sample_input,
        out,
        captioner="tests.plugins:DieOnceTemplate",
        batch_size=2,
        captioner_options={"counter": str(counter), "die_at": die_at},
    )
    assert run_caption(cfg) == 0
    assert int(counter.read_text()) > 12  # it died, and the lost unit was captioned again
    assert tar_digests(str(out)) == tar_digests(str(ref)), f"die_at={die_at}"
    check_output(str(out), expected_inputs=24)


def test_poison_shard_fails_after_bounded_attempts_and_the_rest_finish(sample_input, tmp_path):
    # The first clip of shard 2 poisons its batch every time.
    first_key = None
    import tarfile

    shard2 = sample_input.shards.replace("{000000..000003}", "000002")
    with tarfile.open(shard2) as tar:
        first_key = tar.getmembers()[0].name.split(".")[0]
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": sample_input.shards,
                "segments": sample_input.segments,
                "labels": sample_input.labels,
                "output": str(out),
                "captioner": "tests.plugins:PoisonTemplate",
                "captioner_options": {"poison": first_key},
                "max_attempts": 2,
                "num_cpus": 2,
                "object_store_memory": 80 * 1024 * 1024,
                "progress": False,
            }
        )
    )
    proc = subprocess.run(
        tagcap_cmd("caption", "--config", str(config)), env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    assert "failed shard 000002: failed after 2 attempts: RuntimeError" in proc.stderr
    o = read_output(str(out))
    assert sorted(o.stats) == ["000000", "000001", "000003"]
    assert o.manifest["status"] == "incomplete"
    assert "poisoned batch" in o.manifest["failed_shards"]["000002"]
    assert not (out / "000002.tar").exists()
    assert json.loads((out / "sizes.json").read_text()) == {"000000.tar": 6, "000001.tar": 6, "000003.tar": 6}


def test_a_hanging_unit_is_cancelled_after_its_deadline_and_the_rest_finish(ray_local, sample_input, tmp_path):
    import tarfile

    with tarfile.open(sample_input.shards.replace("{000000..000003}", "000001")) as tar:
        first_key = tar.getmembers()[0].name.split(".")[0]
    out = tmp_path / "out"
    cfg = _config(
        sample_input,
        out,
        captioner="tests.plugins:HangTemplate",
        captioner_options={"hang": first_key},
        max_attempts=2,
        unit_timeout_s=10.0,
        actors=2,
    )
    assert run_caption(cfg) == 1
    o = read_output(str(out))
    assert sorted(o.stats) == ["000000", "000002", "000003"]
    assert "did not finish within 10 s" in o.manifest["failed_shards"]["000001"]
