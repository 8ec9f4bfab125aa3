"""Training the tag-guided captioner: a plain torch loop (single process).

AdamW with linear warmup and cosine decay, bf16 autocast on GPU, gradient clipping.
Every ``checkpoint_every`` steps the model folder (``blat:`` loadable), the optimizer and
scheduler state and ``state.json`` are written to ``out``; a rerun with the same ``out``
resumes from there (step, learning rate, optimizer moments). The data stream after a
resume is reseeded with the step, so it does not replay the exact samples an
uninterrupted run would have seen. Metrics go to ``out/metrics.jsonl``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sacrebleu
import torch
from tqdm import tqdm

from tagcap.workers.datasets import AudioTextExample, example_stream, read_captions
from tagcap.workers.models.captioner import TagGuidedCaptioner
from tagcap.workers.models.checkpoint import load_captioner, save_captioner
from tagcap.workers.models.configs import CaptionerConfig
from tagcap.workers.models.vocab import PAD, TagVocabulary, Vocabulary
from tagcap.workers.storage import Storage
from tagcap.workers.training_state import TrainingState


@dataclass
class TrainConfig:
    train: list[str]
    out: str
    val: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)  # CaptionerConfig fields (sizes, fusion)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    min_word_count: int = 1
    checkpoint_every: int = 500
    eval_every: int = 500
    log_every: int = 50
    eval_beam_size: int = 3
    shuffle_buffer: int = 1000
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_vocabularies(cfg: TrainConfig, storage: Storage) -> tuple[Vocabulary, TagVocabulary]:
    captions: list[str] = []
    tag_names: dict[str, str] = {}
    for texts, mids, names in read_captions(cfg.train, storage):
        captions.extend(texts)
        for i, mid in enumerate(mids):
            tag_names.setdefault(mid, names[i] if i < len(names) else mid)
    if not captions:
        raise ValueError(f"no captions found in {cfg.train}")
    mids = sorted(tag_names)
    return Vocabulary.build(captions, cfg.min_word_count), TagVocabulary(mids, [tag_names[m] for m in mids])


def collate(
    examples: list[AudioTextExample], vocab: Vocabulary, tags: TagVocabulary, max_words: int, step_seed: int
) -> tuple[torch.Tensor, list[list[int]], torch.Tensor]:
    """One caption per clip (a clip's several captions are drawn in turn by step)."""
    waves = torch.from_numpy(np.stack([e.waveform for e in examples]))
    seqs = [vocab.encode(e.captions[(step_seed + i) % len(e.captions)], max_words) for i, e in enumerate(examples)]
    tokens = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
    return waves, [tags.indices(e.mids) for e in examples], tokens


def _batches(stream: Iterator[AudioTextExample], size: int) -> Iterator[list[AudioTextExample]]:
    batch: list[AudioTextExample] = []
    for ex in stream:
        batch.append(ex)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def evaluate(
    model: TagGuidedCaptioner,
    vocab: Vocabulary,
    tags: TagVocabulary,
    urls: list[str],
    batch_size: int,
    beam_size: int,
    device: torch.device,
    storage: Storage,
) -> dict[str, float]:
    """Validation loss, corpus BLEU-4 (sacrebleu) and exact match of the top caption."""
    was_training = model.training
    model.eval()
    cfg = model.cfg
    stream = example_stream(urls, cfg.frontend.sample_rate, model.clip_samples, train=False, storage=storage)
    hyps: list[str] = []
    refs: list[list[str]] = []
    loss_sum, n = 0.0, 0
    for batch in _batches(iter(stream), batch_size):
        waves, tag_idx, tokens = collate(batch, vocab, tags, cfg.max_words, 0)
        waves, tokens = waves.to(device), tokens.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss_sum += float(model.loss(waves, tag_idx, tokens)) * len(batch)
            out = model.generate(waves, tag_idx, beam_size=beam_size)
        n += len(batch)
        hyps.extend(vocab.decode(h[0]) for h in out.tokens)
        refs.extend([" ".join(vocab.decode(vocab.encode(c, 10_000)[1:]).split()) for c in e.captions] for e in batch)
    model.train(was_training)
    if n == 0:
        return {}
    width = max(len(r) for r in refs)
    ref_streams = [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]
    bleu = sacrebleu.corpus_bleu(hyps, ref_streams)
    exact = sum(h in r for h, r in zip(hyps, refs, strict=True)) / n
    return {"val_loss": loss_sum / n, "bleu4": bleu.score, "exact_match": exact, "val_clips": float(n)}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_captioner(cfg: TrainConfig) -> dict[str, Any]:
    storage = Storage(cfg.storage_options)
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    state = TrainingState(cfg.out, storage)
    resumed = state.resumable()
    if resumed:
        ckpt = load_captioner(cfg.out, storage, device)
        model, vocab, tags = ckpt.model, ckpt.vocab, ckpt.tags
    else:
        vocab, tags = build_vocabularies(cfg, storage)
        model_cfg = CaptionerConfig.from_dict({**cfg.model, "vocab_size": len(vocab), "n_tags": len(tags)})
        model = TagGuidedCaptioner(model_cfg).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    start = state.restore(opt, sched) if resumed else 0

    stream = example_stream(
        cfg.train,
        model.cfg.frontend.sample_rate,
        model.clip_samples,
        train=True,
        seed=cfg.seed + start,
        shuffle_buffer=cfg.shuffle_buffer,
        storage=storage,
    )
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0
    )
    log = state.log

    def checkpoint(step: int) -> None:
        save_captioner(cfg.out, model, vocab, tags, storage)
        state.save(opt, sched, step, cfg)

    if resumed:
        log({"event": "resume", "step": start})
    bar = tqdm(total=cfg.steps, initial=start, desc="train-captioner", disable=not cfg.progress, unit="step")
    examples = _batches(iter(loader), cfg.batch_size)
    last: dict[str, Any] = {}
    t0 = time.time()
    for step in range(start, cfg.steps):
        batch = next(examples)
        waves, tag_idx, tokens = collate(batch, vocab, tags, model.cfg.max_words, step)
        waves, tokens = waves.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model.loss(waves, tag_idx, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            last = {
                "step": done,
                "loss": round(loss.item(), 5),
                "lr": sched.get_last_lr()[0],
                "seconds": round(time.time() - t0, 2),
            }
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log(last)
        if cfg.val and (done % cfg.eval_every == 0 or done == cfg.steps):
            scores = evaluate(model, vocab, tags, cfg.val, cfg.batch_size, cfg.eval_beam_size, device, storage)
            last = {"step": done, **scores}
            log(last)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpoint(done)
    bar.close()
    return last
