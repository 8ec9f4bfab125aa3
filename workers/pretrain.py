"""Contrastive pre-training on caption shards: one loop for a single process, torchrun
(DDP over many nodes) and Ray Train (which sets up torch.distributed before calling it).

Data: each ``--train`` corpus (``URL[::WEIGHT]``) is an endless stream of resampled
shards, shuffled in a buffer, decoded in DataLoader workers with random crops of the
clip length; corpora are mixed by weight. Every (rank, worker) draws its own
deterministic stream from (seed, rank, worker, chunk), which is what splitting by node
and by worker means for resampled shards. An epoch is a fixed number of steps, the same on
every rank.

Resume is exact: the stream is rebuilt at every checkpoint boundary from (seed, step), so
a run resumed from a checkpoint sees the very batches, and computes the very losses, of
the uninterrupted run (on the same hardware and world size). The checkpoint holds the
weights (safetensors), the optimizer and scheduler (``torch.load(weights_only=True)``)
and the step.

Sidecar captions: ``captions`` maps a corpus to a caption-only output of ``tagcap
caption --audio none`` with the same shard names and keys; its ``json`` replaces the
audio shard's, shard by shard, and audio samples it does not hold are skipped.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from tqdm import tqdm

from tagcap.schemas.layout import join_url
from tagcap.workers.audio import fit_length, resample, to_pcm16
from tagcap.workers.datasets import (
    crop,
    decode_native,
    drop_excluded,
    expand_urls,
    sample_captions,
    sample_json,
    tar_samples,
)
from tagcap.workers.exclusion import load_exclusions
from tagcap.workers.model_input import model_waveforms
from tagcap.workers.models.clap import (
    ClapConfig,
    ContrastiveModel,
    average_gradients,
    default_text_model,
    info_nce,
    load_clap,
    save_clap,
)
from tagcap.workers.storage import Storage
from tagcap.workers.train_captioner import lr_factor
from tagcap.workers.training_state import TrainingState


@dataclass
class PretrainConfig:
    train: list[str]  # URL[::WEIGHT]
    out: str
    captions: list[str] = field(default_factory=list)  # sidecar roots, aligned with train ("" for none)
    model: dict[str, Any] = field(default_factory=dict)  # ClapConfig fields
    text_model: str | None = "default"  # "default": the MiniLM package folder if installed
    freeze_text: bool = False  # keep the pretrained text encoder fixed; train its projection only
    steps: int = 1000
    steps_per_epoch: int = 500
    batch_size: int = 32  # per rank
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    shuffle_buffer: int = 1000
    num_workers: int = 0
    checkpoint_every: int = 500
    stop_at: int | None = None  # stop (checkpointed) at this step; rerun to continue (time-boxed slots)
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)
    # Lists of clips never to train on (``tagcap dedupe``'s key list, or any list that
    # ``tagcap caption --exclude`` reads); a key matches its segment, a bare id its video.
    exclude_keys: list[str] = field(default_factory=list)


def parse_corpus(spec: str) -> tuple[str, float]:
    url, sep, weight = spec.rpartition("::")
    if not sep:
        return spec, 1.0
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"bad corpus weight in {spec!r} (expected URL::WEIGHT)") from None
    if value <= 0:
        raise ValueError(f"corpus weight must be > 0 in {spec!r}")
    return url, value


def join_sidecar(storage: Storage, sidecar_root: str):
    """Replace each sample's json by the sidecar shard's (same shard name, same key)."""

    def stage(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        current_url, captions = None, {}
        for sample in src:
            if sample["__url__"] != current_url:
                current_url = sample["__url__"]
                side_url = join_url(sidecar_root, current_url.rsplit("/", 1)[-1])
                captions = {s["__key__"]: s["json"] for s in tar_samples(storage)(iter([{"url": side_url}]))}
            if sample["__key__"] in captions:
                yield {**sample, "json": captions[sample["__key__"]]}

    return stage


def stable_seed(*parts: int) -> int:
    """A seed from integers, the same in every process (``hash()`` of str is salted)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def _worker_info() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class PairStream(torch.utils.data.IterableDataset):
    """(waveform, caption) pairs for one rank; see the module docstring."""

    def __init__(self, cfg: PretrainConfig, clip_samples: int, sample_rate: int, rank: int, chunk: int):
        self.cfg, self.clip_samples, self.sample_rate, self.rank, self.chunk = (
            cfg,
            clip_samples,
            sample_rate,
            rank,
            chunk,
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, int, str]]:
        worker, _ = _worker_info()
        storage = Storage(self.cfg.storage_options)
        streams, weights = [], []
        excluded = load_exclusions(self.cfg.exclude_keys, storage, "segment")
        for i, spec in enumerate(self.cfg.train):
            url, weight = parse_corpus(spec)
            seed = stable_seed(self.cfg.seed, self.rank, worker, self.chunk, i)
            stages: list[Any] = [
                wds.ResampledShards(expand_urls(url), seed=seed, deterministic=True, worker_seed=lambda: 0),
                tar_samples(storage, wds.warn_and_continue),
            ]
            if excluded:
                stages.append(drop_excluded(excluded))
            side = self.cfg.captions[i] if i < len(self.cfg.captions) else ""
            if side:
                stages.append(join_sidecar(storage, side))
            stages.append(
                wds.shuffle(self.cfg.shuffle_buffer, initial=min(self.cfg.shuffle_buffer, 100), rng=random.Random(seed))
            )
            streams.append(wds.DataPipeline(*stages))
            weights.append(weight)
        rng = random.Random(stable_seed(self.cfg.seed, self.rank, worker, self.chunk, -1))
        mixed = wds.RandomMix(streams, weights, longest=True) if len(streams) > 1 else streams[0]
        for sample in mixed:
            try:
                captions = sample_captions(sample_json(sample))
                if not captions:
                    continue
                wave, rate = decode_native(sample, pcm16=True)
            except Exception:  # a bad sample is skipped, as webdataset's warn_and_continue does
                continue
            # Cropped at the file's rate and kept as 16-bit PCM: the training step resamples
            # the whole batch on the GPU (a CPU resampler would cost each loader worker
            # several milliseconds per clip, the largest part of the data stall).
            length = math.ceil(self.clip_samples * rate / self.sample_rate)
            yield to_pcm16(crop(wave, length, rng)), rate, captions[rng.randrange(len(captions))]


def _dist() -> tuple[int, int]:
    """(rank, world size): torchrun's environment, or a process group Ray Train set up."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_model(cfg: PretrainConfig) -> ContrastiveModel:
    text_model = default_text_model() if cfg.text_model == "default" else cfg.text_model
    return ContrastiveModel(ClapConfig.from_dict({**cfg.model, "text_model": text_model}))


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    rank, world = _dist()
    storage = Storage(cfg.storage_options)
    if cfg.device == "auto":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    state = TrainingState(cfg.out, storage)
    resumed = state.resumable()
    if resumed:
        model, _ = load_clap(cfg.out, storage, device)
        model.train()
    else:
        model = build_model(cfg).to(device)
    if world > 1:  # every rank starts from rank 0's weights
        for p in model.parameters():
            dist.broadcast(p.data, 0)
    core = model
    if cfg.freeze_text:
        core.text_encoder.requires_grad_(False)
    trainable = [p for p in core.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    start = state.restore(opt, sched) if resumed else 0

    def log(record: dict[str, Any]) -> None:
        if rank == 0:  # one writer
            state.log(record)

    if resumed:
        log({"event": "resume", "step": start})
    bar = tqdm(total=cfg.steps, initial=start, desc="pretrain", unit="step", disable=not cfg.progress or rank != 0)
    last: dict[str, Any] = {}
    t0 = time.time()
    data_wait = 0.0
    step = start
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    while step < end:
        chunk_end = min(end, (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every)
        stream = PairStream(cfg, core.clip_samples, core.cfg.frontend.sample_rate, rank, step)
        loader = torch.utils.data.DataLoader(
            stream,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            collate_fn=_collate,
            drop_last=True,
            # Page-locked batches: the step's copy to the GPU (a quarter GB of PCM at batch
            # 256) then runs at full bus speed; from pageable memory it stalled every step.
            pin_memory=device.type == "cuda",
        )
        batches = iter(loader)
        while step < chunk_end:
            tw = time.time()
            batch = next(batches)
            data_wait += time.time() - tw
            loss = train_step(model, core, opt, sched, batch, device, cfg.grad_clip)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                last = {
                    "step": step,
                    "epoch": (step - 1) // cfg.steps_per_epoch,
                    "loss": round(loss.item(), 6),
                    "lr": sched.get_last_lr()[0],
                    "temperature": round(1.0 / core.scale().item(), 5),
                    "seconds": round(time.time() - t0, 3),
                    "data_wait_seconds": round(data_wait, 3),
                }
                log(last)
        del batches, loader
        if rank == 0:
            save_clap(cfg.out, core, storage)
            state.save(opt, sched, step, cfg)
        if world > 1:
            dist.barrier()
    bar.close()
    return last


@dataclass
class PairBatch:
    """A collated training batch: 16-bit PCM at one rate, and one caption per clip."""

    pcm: torch.Tensor  # (B, samples) int16
    sample_rate: int
    texts: list[str]

    def pin_memory(self) -> PairBatch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        return PairBatch(self.pcm.pin_memory(), self.sample_rate, self.texts)


def _collate(items: list[tuple[np.ndarray, int, str]]) -> PairBatch:
    """Stack at the rate most clips have; the few at another rate are resampled to it."""
    rate = Counter(r for _, r, _ in items).most_common(1)[0][0]
    length = max(w.shape[0] for w, r, _ in items if r == rate)
    rows = [
        w if r == rate else to_pcm16(fit_length(resample(w.astype(np.float32) / 32768.0, r, rate), length))
        for w, r, _ in items
    ]
    return PairBatch(torch.from_numpy(np.stack(rows)), rate, [t for _, _, t in items])


def train_step(
    model: torch.nn.Module,
    core: ContrastiveModel,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    batch: PairBatch,
    device: torch.device,
    grad_clip: float,
) -> torch.Tensor:
    """One optimisation step on one rank; returns the loss (not synchronised)."""
    waves = model_waveforms(batch.pcm, batch.sample_rate, core.cfg.frontend.sample_rate, core.clip_samples, device)
    tokens = core.tokenize(batch.texts, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        audio, text, scale = model(waves, tokens["input_ids"], tokens["attention_mask"])
        loss = info_nce(audio, text, scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(core)
    torch.nn.utils.clip_grad_norm_(core.parameters(), grad_clip)
    opt.step()
    sched.step()
    return loss
