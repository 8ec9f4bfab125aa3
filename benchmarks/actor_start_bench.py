"""The captioner actor's start: a fresh process builds ``CaptionActor`` for the BLAT-size
captioner (imports, weights read and hashed, the model on the GPU, the CUDA-graph warm-up)
as a caption run's actor does, with ``--busy`` other processes keeping cores busy at nice
10 as a run's decode tasks do. Settings interleaved round by round:

    python benchmarks/actor_start_bench.py --work /tmp/tagcap-bench --repeats 5 --busy 16

``current``: this tagcap; ``base_code``: the earlier one under BASE_SITE (see
caption_bench's lever of that name). Each child reports the seconds to import the executor
module (what a Ray worker has done before the actor's ``__init__``) and to construct the
actor; the actor's own account of its start (load / warm-up) is kept beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    BASE_SITE,
    base_code_commit,
    base_code_env,
    blat_checkpoint,
    medians_by_setting,
    run_child,
    write_results,
)

_CHILD = """
import json, sys, time
started = time.perf_counter()
from tagcap.pipeline.executor import ExecutionSettings  # torch not yet, as in a Ray worker
from tagcap.pipeline.stage_actors import CaptionActor
imported = time.perf_counter()
gpu = float(sys.argv[2])
settings = ExecutionSettings(
    captioner_spec="blat:" + sys.argv[1], captioner_config={}, batch_size=256, actors=1,
    gpus_per_actor=gpu, cpus_per_actor=0.0, decode_cpus=1.0, max_inflight=None, max_attempts=1,
)
CaptionActor(settings)
print(json.dumps({"import_s": imported - started, "start_s": time.perf_counter() - imported}))
"""

# A core kept busy at the decode tasks' niceness.
_BUSY = "import os; os.nice(10)\nwhile True: pass"

SETTINGS = {"current": {}, "base_code": base_code_env()}


def _start_once(ckpt: str, env: dict[str, str]) -> dict[str, float]:
    figures, stderr = run_child(_CHILD, [ckpt, "1" if torch.cuda.is_available() else "0"], env)
    said = re.search(r"ready in ([\d.]+) s \(load ([\d.]+) s, warm-up ([\d.]+) s", stderr)
    if said:
        figures.update(ready_s=float(said.group(1)), load_s=float(said.group(2)), warm_up_s=float(said.group(3)))
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each starts every setting once")
    ap.add_argument("--busy", type=int, default=0, help="processes keeping a core busy at nice 10 meanwhile")
    ap.add_argument("--settings", default="current,base_code", help=f"comma-separated, of {sorted(SETTINGS)}")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", default="actor-start")
    args = ap.parse_args()
    chosen = args.settings.split(",")
    if "base_code" in chosen and not os.path.isdir(BASE_SITE):
        ap.error(f"base_code needs an earlier tagcap installed under {BASE_SITE}")
    ckpt = blat_checkpoint(os.path.join(args.work, "blat-ckpt"))
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(args.busy)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    try:
        time.sleep(0.5 if busy else 0.0)
        _start_once(ckpt, SETTINGS[chosen[0]])  # the first start reads everything from the disk
        for _ in range(args.repeats):
            for name in chosen:
                runs[name].append(_start_once(ckpt, SETTINGS[name]))
                print(f"{name}: {json.dumps(runs[name][-1])}", flush=True)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    figures: dict = {"busy_processes": args.busy, "repeats": args.repeats}
    if "base_code" in chosen:
        figures["base_code_commit"] = base_code_commit()
    figures.update(medians_by_setting(runs))
    print(json.dumps(figures, indent=1))
    write_results(args.results, args.name, figures)


if __name__ == "__main__":
    main()
