"""Reading a run's output back the way its users do, and checking that it reconciles."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pyarrow.parquet as pq
import webdataset as wds
import yaml

from tagcap.pipeline.executor import ExecutionSettings
from tagcap.schemas.config import CaptionConfig
from tagcap.schemas.keys import parse_key
from tagcap.schemas.records import STAGES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Output:
    samples: list[dict]
    index_rows: list[dict]
    error_rows: list[dict]
    stats: dict[str, dict]
    sizes: dict[str, int]
    manifest: dict


# The stages a caption run records per shard: every one but "queued", which stands for three
# of them where a caption call's times are unknown.
RUN_STAGES = tuple(stage for stage in STAGES if stage != "queued")


def _load_json(path: str):
    with open(path) as fh:
        return json.load(fh)


def _sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def read_output(out: str) -> Output:
    tars = sorted(glob.glob(os.path.join(out, "*.tar")))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False)) if tars else []
    index_rows = [
        r for f in sorted(glob.glob(os.path.join(out, "index", "*.parquet"))) for r in pq.read_table(f).to_pylist()
    ]
    error_rows = [
        r for f in sorted(glob.glob(os.path.join(out, "errors", "*.parquet"))) for r in pq.read_table(f).to_pylist()
    ]
    stats = {
        os.path.basename(f).split(".")[0]: _load_json(f) for f in sorted(glob.glob(os.path.join(out, "*.stats.json")))
    }
    sizes = _load_json(os.path.join(out, "sizes.json"))
    manifest = _load_json(os.path.join(out, "manifest.json"))
    return Output(samples, index_rows, error_rows, stats, sizes, manifest)


def check_output(out: str, expected_inputs: int | None = None) -> Output:
    """Every promise of SPEC §3 that can be read off the files."""
    o = read_output(out)
    keys = [s["__key__"] for s in o.samples]
    assert len(keys) == len(set(keys)), "duplicate keys in the shards"
    for s in o.samples:
        parse_key(s["__key__"])  # the key rule
        assert "." not in s["__key__"] and not s["__key__"].startswith("_")
        meta = json.loads(s["json"])
        assert meta["text"] and all(isinstance(t, str) and t for t in meta["text"])
        assert meta["tag"], s["__key__"]
        assert {"ytid", "start_seconds", "end_seconds", "mids"} <= set(meta["original_data"])
        assert {
            "captioner",
            "checkpoint_sha256",
            "params",
            "logprob",
            "clap_score",
            "candidates",
            "tagcap_version",
            "schema",
        } <= set(meta["caption_meta"])
        clip = parse_key(s["__key__"])
        assert meta["original_data"]["ytid"] == clip.ytid
        assert round(meta["original_data"]["start_seconds"] * 1000) == clip.start_ms
    # sizes.json matches the tars
    per_tar: dict[str, int] = {}
    for s in o.samples:
        name = os.path.basename(s["__url__"])
        per_tar[name] = per_tar.get(name, 0) + 1
    assert {k: v for k, v in o.sizes.items() if v} == per_tar
    assert set(o.sizes) == {os.path.basename(t) for t in glob.glob(os.path.join(out, "*.tar"))}
    # index rows <-> samples, errors <-> stats
    assert sorted(r["key"] for r in o.index_rows) == sorted(keys)
    total_in = sum(s["samples_in"] for s in o.stats.values())
    assert sum(s["written"] for s in o.stats.values()) == len(keys)
    assert sum(sum(s["failed"].values()) for s in o.stats.values()) == len(o.error_rows)
    assert len(keys) + len(o.error_rows) == total_in
    for shard, st in o.stats.items():  # where each shard's time went, within its seconds
        stages = st["stage_seconds"]
        assert set(stages) == set(RUN_STAGES), shard
        assert min(stages.values()) >= 0 and stages["prepare_cpu"] > 0, (shard, stages)
        elapsed = sum(t for stage, t in stages.items() if stage != "prepare_cpu")
        assert abs(elapsed - st["seconds"]) <= 0.01, (shard, stages, st["seconds"])
    if expected_inputs is not None:
        assert total_in == expected_inputs
    assert not glob.glob(os.path.join(out, "**", "*.part"), recursive=True)
    return o


def tar_digests(out: str) -> dict[str, str]:
    return {os.path.basename(p): _sha256(p) for p in sorted(glob.glob(os.path.join(out, "*.tar")))}


# The smallest contrastive (CLAP) model the tests build: 1 s at 16 kHz, 32 mels, two blocks.
TINY_CLAP = {
    "clip_seconds": 1.0,
    "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "n_mels": 32, "f_max": 8000},
    "encoder": {"channels": [8, 16], "n_mels": 32, "dropout": 0.0},
    "embed_dim": 32,
}

# The template captioner slowed down per call (tests/plugins.py), for runs to interrupt.
SLOW_TEMPLATE = "tests.plugins:SlowTemplate"


def sample_config(sample, out, **options) -> CaptionConfig:
    """A caption job over the generated sample (``tagcap sample``), progress off."""
    return CaptionConfig(
        input=[sample.shards],
        segments=[sample.segments],
        labels=sample.labels,
        output=str(out),
        progress=False,
        **options,
    )


def execution_settings(captioner_spec: str, **options) -> ExecutionSettings:
    """What the executor runs with for one CPU actor of ``captioner_spec``, batch 4, one
    attempt per unit, the in-flight limits by default; ``options`` override any field."""
    fields = {
        "captioner_spec": captioner_spec,
        "captioner_config": {},
        "batch_size": 4,
        "actors": 1,
        "gpus_per_actor": 0.0,
        "cpus_per_actor": 1.0,
        "decode_cpus": 1.0,
        "max_inflight": None,
        "max_attempts": 1,
    }
    return ExecutionSettings(**{**fields, **options})


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tagcap_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagcap", *args]


def caption_args(sample, out: str, *extra: str) -> list[str]:
    return [
        "caption",
        "--input",
        sample.shards,
        "--segments",
        sample.segments,
        "--labels",
        sample.labels,
        "--output",
        out,
        "--num-cpus",
        "2",
        "--object-store-memory",
        str(100 * 1024 * 1024),
        "--no-progress",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard_flags(port: int) -> list[str]:
    """The dashboard on ``port`` and its agents on free ports: the agents' default ports are
    already taken by the test session's own embedded Ray, and a head whose agent cannot bind
    answers every job submission with "No available agent"."""
    return [
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={port}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, dashboard_port: int | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """A `ray start --head` cluster on 127.0.0.1; yields (address, env for its clients).
    With ``dashboard_port`` it runs the dashboard (and so the job server) there, on 127.0.0.1.

    It gets a temp dir of its own so that its processes are found by it and stopped alone
    at the end (`ray stop` would stop every Ray on the machine, the test session's own)."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    port = free_port()
    # every process of one cluster must agree on the auth mode: token auth stays on
    env = {**cli_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    temp_dir = tempfile.mkdtemp(prefix="tcray", dir="/tmp")  # short: Unix socket paths are limited
    start = subprocess.run(
        [
            ray,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--num-cpus={num_cpus}",
            *(_dashboard_flags(dashboard_port) if dashboard_port else ["--include-dashboard=false"]),
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert start.returncode == 0, start.stderr
        yield f"127.0.0.1:{port}", env
    finally:
        procs = [p for p in psutil.process_iter(["cmdline"]) if any(temp_dir in a for a in (p.info["cmdline"] or []))]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_caption(config: str, env: dict[str, str], *extra: str) -> subprocess.Popen:
    """``tagcap caption --config CONFIG`` in the background, in a session of its own (a test
    can signal its whole process group), its stderr kept for the test to read."""
    return subprocess.Popen(
        tagcap_cmd("caption", "--config", str(config), *extra),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def slow_caption_config(tmp_path, out, sample, sleep: float = 0.5) -> tuple[str, dict[str, str]]:
    """A `tagcap caption --config` file for the sample with the slowed-down template
    captioner, and an environment that sets how slow (SLOW_TEMPLATE_SLEEP does not change the
    run's identity, so reruns without it resume the same run)."""
    path = tmp_path / f"{os.path.basename(str(out))}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": sample.shards,
                "segments": sample.segments,
                "labels": sample.labels,
                "output": str(out),
                "captioner": SLOW_TEMPLATE,
                "captioner_options": {"sleep": 0},
                "num_cpus": 2,
                "object_store_memory": 80 * 1024 * 1024,
                "progress": False,
            }
        )
    )
    return str(path), {**cli_env(), "SLOW_TEMPLATE_SLEEP": str(sleep)}


def run_on_two_nodes(client: str, *args: str, head_cpus: int = 2) -> subprocess.CompletedProcess:
    """``client`` (a Python script) run as a driver joined to a two-node cluster on one
    machine: the head on 127.0.0.1 with ``head_cpus`` CPUs, a second node with 2 on
    127.0.0.2; its first argument is the cluster's address, then ``args``."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": head_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.2")
        cluster.wait_for_nodes()
        return subprocess.run(
            [sys.executable, "-c", client, cluster.address, *args],
            env={**cli_env(), "PYTHONPATH": os.pathsep.join(sys.path)},
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        cluster.shutdown()
