"""Input and output on s3:// through a moto server on 127.0.0.1 (real S3 protocol)."""

import os

from tagcap.pipeline.caption import run_caption
from tagcap.schemas.config import CaptionConfig
from tests.helpers import check_output, tar_digests


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
    local_cfg = CaptionConfig(
        input=[sample_input.shards],
        segments=[sample_input.segments],
        labels=sample_input.labels,
        output=str(ref),
        progress=False,
    )
    assert run_caption(local_cfg) == 0
    assert tar_digests(str(local)) == tar_digests(str(ref))
    # resume on S3: everything committed, nothing redone
    assert run_caption(cfg(["s3://tagcap-in/shards/{000000..000003}.tar"], "s3://tagcap-out/run")) == 0
    assert fs.cat_file("tagcap-out/run/000000.tar") == (ref / "000000.tar").read_bytes()
