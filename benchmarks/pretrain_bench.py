"""Training data stall: ``tagcap pretrain`` step time with the real streaming loader,
against the same model and step fed one batch held in memory.

    python benchmarks/pretrain_bench.py --work /tmp/tagcap-bench --batch 256

The corpus is real tagcap output: ``tagcap caption --captioner template`` over 10 s 48 kHz
FLAC shards (benchmarks/common.py), so the loader reads, decodes and crops exactly what a
user's pretraining would. Stall = 1 - (in-memory step time / streaming step time),
from the medians of the steps after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import itertools

import tagcap.workers.pretrain as pretrain_module
from common import machine, make_corpus, write_results
from tagcap.workers.pretrain import PairStream, PretrainConfig, _collate, pretrain, train_step
from tagcap.workers.train_captioner import lr_factor

TINY = {"encoder": {"channels": [8, 16, 32]}, "embed_dim": 64}


def use_minilm_shape(folder: str) -> None:
    """Where the MiniLM package is not installed (its 90 MB of weights exceed what can be
    carried to the GPU machine): a BERT of all-MiniLM-L6-v2's exact shape, random weights,
    with MiniLM's own tokenizer from ``folder`` (its config and tokenizer files). Same
    arithmetic per step; the weights do not change the speed."""
    import json as _json

    from transformers import AutoTokenizer

    from tagcap.workers.models.clap import ClapConfig, ContrastiveModel

    with open(os.path.join(folder, "config.json")) as fh:
        shape = {
            k: v
            for k, v in _json.load(fh).items()
            if k
            in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
                "type_vocab_size",
            )
        }
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def build(cfg: PretrainConfig) -> ContrastiveModel:
        return ContrastiveModel(
            ClapConfig.from_dict({**cfg.model, "text_model": None, "text_config": shape}), tokenizer
        )

    pretrain_module.build_model = build  # pretrain() and in_memory_steps() both build through it


def captioned_corpus(work: str, shards: int, clips_per_shard: int) -> str:
    corpus = make_corpus(os.path.join(work, "corpus-pretrain"), shards, clips_per_shard, seed=1)
    out = os.path.join(work, "pretrain-shards")
    if not os.path.exists(os.path.join(out, "sizes.json")):
        cmd = [sys.executable, "-m", "tagcap", "caption", "--input", corpus.pattern, "--segments", corpus.segments]
        cmd += ["--labels", corpus.labels, "--output", out, "--no-progress"]
        subprocess.run(cmd, check=True)
    return os.path.join(out, f"{{000000..{shards - 1:06d}}}.tar")


def bench_config(urls: str, out: str, batch: int, steps: int, workers: int, tiny: bool) -> PretrainConfig:
    """The benchmarked training run: logs every step (the step times come from its metrics)."""
    return PretrainConfig(
        train=[urls],
        out=out,
        model=TINY if tiny else {},
        steps=steps,
        batch_size=batch,
        num_workers=workers,
        checkpoint_every=steps,
        log_every=1,
        warmup_steps=5,
        shuffle_buffer=256,
        progress=False,
    )


def steps_from_metrics(out: str, warmup: int) -> list[float]:
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if '"loss"' in line]
    seconds = [r["seconds"] for r in rows if r["step"] > warmup]
    return [b - a for a, b in itertools.pairwise(seconds)]


def in_memory_steps(cfg: PretrainConfig, steps: int, warmup: int) -> list[float]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model = pretrain_module.build_model(cfg).to(device)
    stream = PairStream(cfg, model.clip_samples, model.cfg.frontend.sample_rate, 0, 0)
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.batch_size, num_workers=2, collate_fn=_collate)
    batch = next(iter(loader))
    batch.pcm = batch.pcm.pin_memory() if device.type == "cuda" else batch.pcm
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    times = []
    for step in range(steps):
        start = time.perf_counter()
        loss = train_step(model, model, opt, sched, batch, device, cfg.grad_clip)
        loss.item()  # the streaming run syncs here too (it logs every step)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--clips-per-shard", type=int, default=256)
    ap.add_argument("--tiny", action="store_true", help="a tiny audio tower: to check the script on a CPU")
    ap.add_argument("--text-shape", help="folder with MiniLM's config and tokenizer (no weights); see use_minilm_shape")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    print(machine(), flush=True)
    if args.text_shape:
        use_minilm_shape(args.text_shape)
    urls = captioned_corpus(args.work, args.shards, args.clips_per_shard)
    out = os.path.join(args.work, "pretrain-run")
    subprocess.run(["rm", "-rf", out], check=True)
    cfg = bench_config(urls, out, args.batch, args.steps, args.workers, args.tiny)
    pretrain(cfg)
    streaming = steps_from_metrics(out, args.warmup)
    memory = in_memory_steps(cfg, args.steps, args.warmup)
    t_stream, t_mem = statistics.median(streaming), statistics.median(memory)
    figures: dict[str, Any] = {
        "pretrain_batch": args.batch,
        "pretrain_loader_workers": args.workers,
        "pretrain_model": ("tiny" if args.tiny else "cnn14") + ("+minilm-shape" if args.text_shape else "+minilm"),
        "pretrain_step_s_streaming": round(t_stream, 4),
        "pretrain_step_s_in_memory": round(t_mem, 4),
        "pretrain_samples_per_s_streaming": round(args.batch / t_stream, 1),
        "train_data_stall_fraction": round(max(0.0, 1.0 - t_mem / t_stream), 4),
    }
    write_results(args.results, "pretrain", figures)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
