"""Input and output on s3:// through a moto server on 127.0.0.1 (real S3 protocol)."""

import json
import os

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.corpus_summary import summarize
from tagcap.pipeline.report import write_report
from tagcap.schemas.config import CaptionConfig
from tagcap.workers.storage import Storage
from tests.helpers import check_output, sample_config, tar_digests


def test_input_and_output_on_s3(ray_local, sample_input, s3, tmp_path):
    fs, options = s3
    fs.mkdir("tagcap-in")
    fs.mkdir("tagcap-out")
    shard_dir = os.path.dirname(sample_input.shards)
    for name in sorted(os.listdir(shard_dir)):
        fs.put_file(os.path.join(shard_dir, name), f"tagcap-in/shards/{name}")
    fs.put_file(sample_input.segments, "tagcap-in/segments.csv")
    fs.put_file(sample_input.labels, "tagcap-in/labels.csv")

    def cfg(inputs, output):
        return CaptionConfig(
            input=inputs,
            segments=["s3://tagcap-in/segments.csv"],
            labels="s3://tagcap-in/labels.csv",
            output=output,
            storage_options=options,
            progress=False,
        )

    # a brace pattern and a glob over the bucket
    assert run_caption(cfg(["s3://tagcap-in/shards/{000000..000003}.tar"], "s3://tagcap-out/run")) == 0
    assert run_caption(cfg(["s3://tagcap-in/shards/*.tar"], "s3://tagcap-out/glob")) == 0
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("tagcap-out/run"))
    assert names[:4] == ["000000.stats.json", "000000.tar", "000001.stats.json", "000001.tar"]
    assert {"manifest.json", "sizes.json", "index", "errors"} <= set(names)
    # The same bytes as a local run of the same inputs.
    local = tmp_path / "local"
    fs.get("tagcap-out/run/", str(local), recursive=True)
    o = check_output(str(local), expected_inputs=24)
    assert len(o.samples) == 24
    ref = tmp_path / "ref"
    assert run_caption(sample_config(sample_input, ref)) == 0
    assert tar_digests(str(local)) == tar_digests(str(ref))
    # resume on S3: everything committed, nothing redone
    assert run_caption(cfg(["s3://tagcap-in/shards/{000000..000003}.tar"], "s3://tagcap-out/run")) == 0
    assert fs.cat_file("tagcap-out/run/000000.tar") == (ref / "000000.tar").read_bytes()
    # `tagcap inspect` reads the corpus and writes its report on the bucket too.
    storage = Storage(options)
    summary = summarize("s3://tagcap-out/run", storage)
    assert summary.samples_written == 24 and summary.label_classes == 6 and summary.status == "complete"
    page = write_report(summary, "s3://tagcap-out/run/report", storage)
    assert b"tagcap corpus report" in fs.cat_file(page.removeprefix("s3://"))
    assert fs.cat_file("tagcap-out/run/report/top_tags.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_transient_and_permanent_storage_faults(ray_local, sample_input, s3_server, s3, tmp_path):
    from tests.faulty_proxy import FaultyProxy, Rule

    fs, _ = s3
    for bucket in ("fault-in", "fault-out"):
        fs.mkdir(bucket)
    shard_dir = os.path.dirname(sample_input.shards)
    for name in sorted(os.listdir(shard_dir)):
        fs.put_file(os.path.join(shard_dir, name), f"fault-in/shards/{name}")
    fs.put_file(sample_input.segments, "fault-in/segments.csv")
    fs.put_file(sample_input.labels, "fault-in/labels.csv")
    proxy = FaultyProxy(int(s3_server.rsplit(":", 1)[1]))
    options = {"s3": {"endpoint_url": proxy.url, "key": "testing", "secret": "testing", "skip_instance_cache": True}}

    def cfg(output):
        return CaptionConfig(
            input=["s3://fault-in/shards/{000000..000003}.tar"],
            segments=["s3://fault-in/segments.csv"],
            labels="s3://fault-in/labels.csv",
            output=output,
            storage_options=options,
            progress=False,
            max_attempts=2,
        )

    ref = tmp_path / "ref"
    assert run_caption(sample_config(sample_input, ref)) == 0
    try:
        # transient: throttling on reads and writes, and slow answers; retries absorb them
        proxy.rules = [
            Rule("GET", r"/fault-in/shards/00000[02]\.tar", transient=2, delay=0.3),
            Rule("PUT", r"/fault-out/flaky/00000[13]\.tar", transient=2),
            Rule("PUT", r"/fault-out/flaky/index/", transient=1, delay=0.2),
        ]
        assert run_caption(cfg("s3://fault-out/flaky")) == 0
        assert proxy.injected >= 5
        local = tmp_path / "flaky"
        fs.get("fault-out/flaky/", str(local), recursive=True)
        assert tar_digests(str(local)) == tar_digests(str(ref))
        check_output(str(local), expected_inputs=24)

        # permanent: shard 2's tar can never be written
        proxy.rules = [Rule("PUT", r"/fault-out/perm/000002\.tar", permanent=True)]
        assert run_caption(cfg("s3://fault-out/perm")) == 1
        manifest = json.loads(fs.cat_file("fault-out/perm/manifest.json"))
        assert list(manifest["failed_shards"]) == ["000002"]
        assert "PermissionError" in manifest["failed_shards"]["000002"]
        assert not fs.exists("fault-out/perm/000002.tar") and fs.exists("fault-out/perm/000003.tar")
        # the fault is gone: the rerun completes the job
        proxy.rules = []
        assert run_caption(cfg("s3://fault-out/perm")) == 0
        local = tmp_path / "perm"
        fs.get("fault-out/perm/", str(local), recursive=True)
        assert tar_digests(str(local)) == tar_digests(str(ref))
    finally:
        proxy.close()
