"""``tagcap pretrain`` under torchrun on 1 and N GPUs of one host (issue 5, item 2).

    python benchmarks/pretrain_scaling.py --work /tmp/tagcap-bench --gpus 2 --batch 256 --text-shape .bench_text

* **Scaling**: the real streaming loader and training loop (``tagcap.workers.pretrain``)
  under ``torchrun --nproc_per_node N`` with a fixed batch per rank (weak scaling), on the
  captioned corpus of ``pretrain_bench.py``; samples/s = N × batch / median step time after
  the warm-up, efficiency = rate(N) / (N × rate(1)).
* **Loss check**: N ranks, each holding its slice of one global batch, compute the
  all-gathered InfoNCE and average their gradients over the process group (NCCL on GPUs,
  gloo on CPUs); rank 0 then leaves the group and computes the same loss and gradients on
  the whole batch alone. The differences are reported (and must be at float32 rounding).

On a CPU (``--gpus 2 --tiny``) it runs the same code with gloo, to check the script.
Writes ``pretrain-scaling-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, write_results
from pretrain_bench import bench_config, captioned_corpus, steps_from_metrics, use_minilm_shape
from tagcap.workers.models.clap import ClapConfig, ContrastiveModel, average_gradients, info_nce
from tagcap.workers.pretrain import pretrain

# The loss check's model: small, fp32, eval mode (BatchNorm on running statistics, so the
# check is about the gathered loss, not about per-rank batch statistics).
CHECK_MODEL = {
    "clip_seconds": 1.0,
    "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "n_mels": 32, "f_max": 8000},
    "encoder": {"channels": [16, 32, 64], "n_mels": 32, "dropout": 0.0},
    "embed_dim": 64,
    "text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
}
CHECK_ROWS = 8  # per rank


def _device() -> torch.device:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")


def _check_batch(rows: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    waves = torch.randn(rows, 16000, generator=g) * 0.3
    ids = torch.randint(5, 1000, (rows, 9), generator=g)
    mask = torch.ones(rows, 9, dtype=torch.long)
    mask[::3, 6:] = 0
    return waves.to(device), ids.to(device), mask.to(device)


def _check_model(device: torch.device) -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel(ClapConfig.from_dict(CHECK_MODEL)).to(device).eval()


def _loss_and_grads(model: ContrastiveModel, *batch: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    audio, text, scale = model(*batch)
    loss = info_nce(audio, text, scale)
    loss.backward()
    if dist.is_initialized():
        average_gradients(model)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def loss_check(out: str) -> None:
    """Run under torchrun: see the module docstring."""
    device = _device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    waves, ids, mask = _check_batch(world * CHECK_ROWS, device)
    part = slice(rank * CHECK_ROWS, (rank + 1) * CHECK_ROWS)
    loss, grads = _loss_and_grads(_check_model(device), waves[part], ids[part], mask[part])
    losses = [torch.zeros((), device=device) for _ in range(world)]
    dist.all_gather(losses, torch.tensor(loss, device=device))
    dist.barrier()  # every rank done with the group before any leaves it
    dist.destroy_process_group()
    if rank != 0:
        return
    one_loss, one_grads = _loss_and_grads(_check_model(device), waves, ids, mask)
    ranks_loss = float(torch.stack(losses).mean())
    # Largest gradient difference relative to the largest gradient: a per-parameter ratio
    # would divide by the near-zero gradients some parameters have.
    scale = max(float(g.abs().max()) for g in one_grads.values())
    worst = max(float((grads[n] - g).abs().max()) for n, g in one_grads.items() if n in grads) / max(scale, 1e-12)
    result = {
        "world": world,
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "rows_per_rank": CHECK_ROWS,
        "loss_ranks": ranks_loss,
        "loss_one_rank_global_batch": one_loss,
        "loss_abs_diff": abs(ranks_loss - one_loss),
        "grad_max_diff_over_max_grad": worst,
        "same_parameters_with_grads": set(grads) == set(one_grads),
    }
    with open(out, "w") as fh:
        json.dump(result, fh)


def rank_run(args: argparse.Namespace) -> None:
    """Run under torchrun: the real training loop, one rank per GPU."""
    if args.text_shape:
        use_minilm_shape(args.text_shape)
    pretrain(bench_config(args.urls, args.out, args.batch, args.steps, args.workers, args.tiny))


def _torchrun(n: int, *script_args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    subprocess.run([*cmd, os.path.abspath(__file__), *script_args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--gpus", type=int, default=max(1, torch.cuda.device_count()))
    ap.add_argument("--batch", type=int, default=256, help="per rank")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", type=int, help="loader workers per rank (default: the CPUs shared out, less one)")
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--clips-per-shard", type=int, default=256)
    ap.add_argument("--tiny", action="store_true", help="a tiny audio tower: to check the script on a CPU")
    ap.add_argument("--text-shape", help="MiniLM's config and tokenizer folder (see pretrain_bench.use_minilm_shape)")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--loss-check", metavar="OUT", help=argparse.SUPPRESS)  # a torchrun rank
    ap.add_argument("--rank-run", action="store_true", help=argparse.SUPPRESS)  # a torchrun rank
    ap.add_argument("--urls", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loss_check:
        loss_check(args.loss_check)
        return
    if args.rank_run:
        rank_run(args)
        return

    print(machine(), flush=True)
    urls = captioned_corpus(args.work, args.shards, args.clips_per_shard)
    figures: dict[str, Any] = {"pretrain_scaling_batch_per_rank": args.batch, "pretrain_scaling_gpus": args.gpus}
    rates: dict[int, float] = {}
    for n in sorted({1, args.gpus}):
        out = os.path.join(args.work, f"pretrain-scaling-{n}")
        shutil.rmtree(out, ignore_errors=True)
        workers = args.workers or max(1, (os.cpu_count() or 2) // n - 1)
        extra = ["--tiny"] if args.tiny else []
        extra += ["--text-shape", args.text_shape] if args.text_shape else []
        _torchrun(
            n,
            *("--rank-run", "--urls", urls, "--out", out, "--batch", str(args.batch)),
            *("--steps", str(args.steps), "--workers", str(workers), *extra),
        )
        step = statistics.median(steps_from_metrics(out, args.warmup))
        rates[n] = n * args.batch / step
        figures[f"pretrain_{n}gpu_step_s"] = round(step, 4)
        figures[f"pretrain_{n}gpu_samples_per_s"] = round(rates[n], 1)
        figures[f"pretrain_{n}gpu_loader_workers_per_rank"] = workers
        print(f"{n} GPU(s): step {step:.3f} s, {rates[n]:.0f} samples/s", flush=True)
    if args.gpus > 1:
        figures["pretrain_scaling_efficiency"] = round(rates[args.gpus] / (args.gpus * rates[1]), 3)
    check = os.path.join(args.work, "loss-check.json")
    _torchrun(max(2, args.gpus), "--loss-check", check)
    with open(check) as fh:
        figures["pretrain_loss_check"] = json.load(fh)
    write_results(args.results, "pretrain-scaling", figures)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
