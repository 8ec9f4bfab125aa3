"""``tagcap verify OUT`` and the resume's size check: a truncated tar, a missing tar and a
tar of the right size with flipped bytes are each named with why, locally and on S3; a
rerun redoes a shard whose tar is not the size its stats recorded."""

import hashlib
import json
import os
import subprocess

import xxhash

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.verify import verify_output
from tagcap.workers.storage import Storage
from tests.helpers import cli_env, sample_config, tagcap_cmd, tar_digests


def _verify_cli(out: str) -> subprocess.CompletedProcess:
    return subprocess.run(tagcap_cmd("verify", out), env=cli_env(), capture_output=True, text=True, timeout=120)


def test_verify_names_each_damaged_shard_and_a_rerun_redoes_a_truncated_one(ray_local, sample_input, tmp_path):
    out = tmp_path / "out"
    assert run_caption(sample_config(sample_input, out)) == 0
    whole = tar_digests(str(out))
    ok = _verify_cli(str(out))
    assert ok.returncode == 0 and "4 shards, all whole" in ok.stdout, ok.stdout + ok.stderr

    with open(out / "000001.tar", "r+b") as fh:  # truncated, as a crashed copy leaves it
        fh.truncate(1000)
    with open(out / "000002.tar", "r+b") as fh:  # the right size, bytes flipped
        fh.seek(5000)
        fh.write(b"\xff" * 64)
    report = verify_output(str(out), Storage())
    assert sorted(report.damaged) == ["000001", "000002"]
    assert "is 1000 bytes" in report.damaged["000001"][0]
    assert "xxh3-128" in " ".join(report.damaged["000002"])
    bad = _verify_cli(str(out))
    assert bad.returncode == 1
    assert "000001: its tar is 1000 bytes" in bad.stdout and "000002: its tar's xxh3-128" in bad.stdout

    # The rerun checks each committed shard's size from the listing and redoes 000001; the
    # flipped bytes are the same size, so only verify can tell (000002 is rewritten by hand).
    assert run_caption(sample_config(sample_input, out)) == 0
    assert tar_digests(str(out))["000001.tar"] == whole["000001.tar"]
    os.remove(out / "000002.tar")
    missing = verify_output(str(out), Storage())
    assert missing.damaged == {"000002": ["its tar is missing"]}
    assert run_caption(sample_config(sample_input, out)) == 0
    assert tar_digests(str(out)) == whole and verify_output(str(out), Storage()).ok


def test_verify_on_s3_names_a_truncated_tar(ray_local, sample_input, s3, tmp_path):
    fs, options = s3
    fs.mkdir("verify-out")
    out = tmp_path / "out"
    assert run_caption(sample_config(sample_input, out)) == 0
    for name in os.listdir(out):
        if os.path.isfile(out / name):
            fs.put_file(str(out / name), f"verify-out/run/{name}")
    for folder in ("index", "errors"):
        for name in os.listdir(out / folder):
            fs.put_file(str(out / folder / name), f"verify-out/run/{folder}/{name}")
    storage = Storage(options)
    assert verify_output("s3://verify-out/run", storage).ok
    fs.pipe_file("verify-out/run/000003.tar", (out / "000003.tar").read_bytes()[:2048])
    report = verify_output("s3://verify-out/run", storage)
    assert list(report.damaged) == ["000003"] and "is 2048 bytes" in report.damaged["000003"][0]


def test_stats_carry_the_tars_xxh128_and_older_stats_with_a_sha256_still_verify(ray_local, sample_input, tmp_path):
    out = tmp_path / "out"
    assert run_caption(sample_config(sample_input, out)) == 0
    stats_path = out / "000000.stats.json"
    stats = json.loads(stats_path.read_text())
    tar = (out / "000000.tar").read_bytes()
    # What `xxh128sum 000000.tar` prints; no sha256 is written beside it.
    assert stats["tar_xxh3_128"] == xxhash.xxh3_128(tar).hexdigest() and "tar_sha256" not in stats

    # A shard committed before the change: its stats carry the sha256 and no xxh3-128.
    del stats["tar_xxh3_128"]
    stats["tar_sha256"] = hashlib.sha256(tar).hexdigest()
    stats_path.write_text(json.dumps(stats))
    assert verify_output(str(out), Storage()).ok
    stats["tar_sha256"] = hashlib.sha256(tar + b"x").hexdigest()
    stats_path.write_text(json.dumps(stats))
    report = verify_output(str(out), Storage())
    assert list(report.damaged) == ["000000"] and "its tar's sha256 is" in report.damaged["000000"][0]
