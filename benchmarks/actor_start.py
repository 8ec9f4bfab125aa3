"""What a BLAT captioner actor's start costs, step by step, each in a fresh process (as a
Ray actor starts): importing torch and the model code, the CUDA context, reading and
hashing the weights, building the model and moving it to the GPU, the warm-up (CUDA graph
capture) and the first real batch. Medians of ``--repeats`` processes.

    python benchmarks/actor_start.py --work /tmp/tagcap-bench --repeats 3
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import blat_checkpoint, machine, write_results

# Runs in the fresh process; prints one JSON line of step -> seconds.
_STEPS = r"""
import json, sys, time
marks = {}
t = time.perf_counter()
def mark(name):
    global t
    now = time.perf_counter()
    marks[name] = round(now - t, 3)
    t = now
import torch
mark("import_torch")
from tagcap.workers.captioners.blat import BlatCaptioner
from tagcap.workers.captioners import blat_runtime
mark("import_model_code")
if torch.cuda.is_available():
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
mark("cuda_context")
captioner = BlatCaptioner({"target": sys.argv[1]})
mark("load_weights_to_device")
captioner.warm_up(int(sys.argv[2]))
if torch.cuda.is_available():
    torch.cuda.synchronize()
mark("warm_up")
import numpy as np
from tagcap.schemas.work import ModelBatch
n = int(sys.argv[2])
pcm = (np.random.default_rng(0).standard_normal((n, 480000)) * 3000).astype(np.int16)
mark("make_input")  # not the actor's: numpy making the test batch
empty = [[] for _ in range(n)]
batch = ModelBatch(keys=[str(i) for i in range(n)], waveforms=pcm, sample_rate=48000, tags=empty, mids=empty)
captioner(batch)
if torch.cuda.is_available():
    torch.cuda.synchronize()
mark("first_batch")
print("STEPS " + json.dumps(marks))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    ckpt = blat_checkpoint(os.path.join(args.work, "blat-tiny" if args.tiny else "blat"), tiny=args.tiny)
    runs: list[dict[str, float]] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _STEPS, ckpt, str(args.batch)], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        steps = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("STEPS "))[6:])
        steps["process_total"] = round(time.perf_counter() - start - steps["make_input"], 3)
        runs.append(steps)
        print(steps, flush=True)
    figures: dict[str, Any] = {
        "machine": machine(),
        "batch": args.batch,
        "actor_start_runs": runs,
        "actor_start_median_s": {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]},
    }
    print(json.dumps(figures["actor_start_median_s"], indent=1))
    write_results(args.results, "actor-start", figures)


if __name__ == "__main__":
    main()
