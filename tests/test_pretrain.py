"""Contrastive pre-training: all-gathered InfoNCE over ranks, exact resume, sidecar
captions, weighted corpora."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tagcap.pipeline.synthetic import write_compositional_corpus
from tagcap.workers.audio import to_pcm16
from tagcap.workers.models.clap import ClapConfig, ContrastiveModel, average_gradients, info_nce
from tagcap.workers.pretrain import PairStream, PretrainConfig, _collate, parse_corpus, pretrain
from tests import helpers

# Three blocks, and no dropout in the text tower: the gradient checks compare exact values.
TINY_CLAP = {
    **helpers.TINY_CLAP,
    "encoder": {"channels": [8, 16, 32], "n_mels": 32, "dropout": 0.0},
    "text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}
B = 4  # per rank


def _batch(n: int):
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(n, 16000, generator=g) * 0.3
    ids = torch.randint(5, 1000, (n, 7), generator=g)
    mask = torch.ones(n, 7, dtype=torch.long)
    mask[::3, 5:] = 0
    return waves, ids, mask


def _model():
    torch.manual_seed(0)
    # eval mode: BatchNorm then uses its running statistics; in training each rank
    # normalises by its own batch (no SyncBN on CPU), which is not part of the loss.
    return ContrastiveModel(ClapConfig.from_dict(TINY_CLAP)).eval()


def _loss_and_grads(model, waves, ids, mask):
    audio, text, scale = model(waves, ids, mask)
    loss = info_nce(audio, text, scale)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model()
    waves, ids, mask = _batch(world * B)
    part = slice(rank * B, (rank + 1) * B)
    audio, text, scale = model(waves[part], ids[part], mask[part])
    loss = info_nce(audio, text, scale)
    loss.backward()
    average_gradients(model)
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": torch.stack(losses).mean(), "grads": grads}, out)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_one_rank_with_the_global_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_rank, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    loss, grads = _loss_and_grads(_model(), *_batch(2 * B))
    assert torch.allclose(ddp["loss"], loss, atol=1e-5)
    assert set(ddp["grads"]) == set(grads)
    for name, g in grads.items():
        assert torch.allclose(ddp["grads"][name], g, atol=1e-5, rtol=1e-4), name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    train, _ = write_compositional_corpus(str(tmp_path_factory.mktemp("pairs")), per_pair_train=2)
    return train


def _cfg(corpus, out, **kw):
    return PretrainConfig(
        train=[corpus],
        out=str(out),
        model=TINY_CLAP,
        text_model=None,
        steps=6,
        batch_size=4,
        warmup_steps=2,
        checkpoint_every=3,
        log_every=1,
        progress=False,
        shuffle_buffer=20,
        lr=1e-3,
        **kw,
    )


class _TokenizerlessModelPatch:
    """The tiny BERT has no tokenizer folder; hash words to ids instead."""

    @staticmethod
    def tokenize(self, texts, device):
        ids = [[5 + (sum(map(ord, w)) % 990) for w in t.split()][:12] for t in texts]
        width = max(len(i) for i in ids)
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for r, row in enumerate(ids):
            input_ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


@pytest.fixture(autouse=True)
def word_hash_tokenizer(monkeypatch):
    monkeypatch.setattr(ContrastiveModel, "tokenize", _TokenizerlessModelPatch.tokenize)


def _losses(out):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


def test_resume_is_exact(corpus, tmp_path):
    pretrain(_cfg(corpus, tmp_path / "straight"))
    pretrain(_cfg(corpus, tmp_path / "stopped", stop_at=3))
    assert json.loads((tmp_path / "stopped" / "state.json").read_text())["step"] == 3
    assert max(_losses(tmp_path / "stopped")) == 3
    pretrain(_cfg(corpus, tmp_path / "stopped"))
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "stopped")
    assert sorted(straight) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert straight == resumed  # the same batches after the resume
    a = (tmp_path / "straight" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "stopped" / "model.safetensors").read_bytes()

    def lrs(out):
        return [json.loads(x)["lr"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]

    assert lrs(tmp_path / "stopped") == lrs(tmp_path / "straight")
    assert lrs(tmp_path / "straight")[-1] == 0.0


def test_sidecar_captions_replace_the_audio_shards_captions(corpus, tmp_path):
    import io
    import tarfile

    # a sidecar with new captions for half the clips of each shard, same names and keys
    side = tmp_path / "side"
    side.mkdir()
    for shard in sorted(os.listdir(os.path.dirname(corpus))):
        with tarfile.open(os.path.join(os.path.dirname(corpus), shard)) as src, tarfile.open(side / shard, "w") as dst:
            keys = sorted({m.name.split(".")[0] for m in src.getmembers()})
            for key in keys[::2]:
                blob = json.dumps({"text": [f"new caption {key}"]}).encode()
                info = tarfile.TarInfo(f"{key}.json")
                info.size = len(blob)
                dst.addfile(info, io.BytesIO(blob))
    cfg = _cfg(corpus, tmp_path / "x", captions=[str(side)])
    stream = PairStream(cfg, 16000, 16000, rank=0, chunk=0)
    texts = [t for _, (_, _, t) in zip(range(40), iter(stream), strict=False)]
    assert len(texts) == 40 and all(t.startswith("new caption Ysyn") for t in texts)


def test_weighted_corpora(tmp_path):
    a, _ = write_compositional_corpus(str(tmp_path / "a"), per_pair_train=1, seed=1)
    b, _ = write_compositional_corpus(str(tmp_path / "b"), per_pair_train=1, seed=2)
    assert parse_corpus("s3://x/{0..3}.tar::0.25") == ("s3://x/{0..3}.tar", 0.25)
    cfg = _cfg(a, tmp_path / "o")
    cfg.train = [f"{a}::3", f"{b}::1"]
    stream = PairStream(cfg, 16000, 16000, rank=0, chunk=0)
    waves = [w for _, (w, _, _) in zip(range(200), iter(stream), strict=False)]
    assert len(waves) == 200


def test_batches_travel_as_pcm16_at_the_most_common_rate():
    a = to_pcm16(np.full(4800, 0.5, np.float32))
    odd = to_pcm16(np.full(1600, 0.25, np.float32))
    batch = _collate([(a, 48000, "x"), (odd, 16000, "y"), (a, 48000, "z")])
    assert batch.sample_rate == 48000 and batch.pcm.dtype == torch.int16 and tuple(batch.pcm.shape) == (3, 4800)
    assert batch.texts == ["x", "y", "z"]
    assert abs(int(batch.pcm[1, 2400]) - 8192) <= 2  # resampled, level kept
