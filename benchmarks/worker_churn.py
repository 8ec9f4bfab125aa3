"""How many worker processes Ray starts during a caption run, and what they cost: a
``template``-captioner job (no model, so Ray's own work shows) over a generated sample,
under Ray settings given as environment variables, interleaved round by round.

    python benchmarks/worker_churn.py --work /tmp/tagcap-churn --repeats 2

Settings: ``default``; ``ray_idle``, Ray's own idle-worker limit of one per CPU in place
of tagcap's CPUs + 8 (``--tuning idle_workers``; tagcap's default on 2026-12-06 only);
``idle0``, a limit of 0;
``startup1``, Ray starting one worker process at a time
(``RAY_worker_maximum_startup_concurrency=1``; Ray's default is the machine's core count);
``no_prestart``, Ray not starting workers ahead for queued tasks
(``RAY_enable_worker_prestart=0``); ``no_first_driver_prestart``, none started when the
driver connects (``RAY_prestart_worker_first_driver=0``); ``decode_tasks``, the decode
stage as a Ray task per unit (``--tuning decode_actors=false``; the default is a pool
of actors); ``base_code``, an earlier tagcap (under BASE_SITE).
Reported per setting: the run's units phase (from tagcap's summary), the Ray worker
processes seen (decode, write and idle workers; a pool that only served the run's slots
would be about its CPUs plus the actor), and the CPU seconds of workers that never ran a task.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RAY_IDLE_FLAGS, TreeUsage, base_code_commit, base_code_env, machine, write_results

# Per setting: tagcap caption's extra arguments, and the environment it runs under.
SETTINGS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "default": ((), {}),
    "ray_idle": (RAY_IDLE_FLAGS, {}),
    "idle0": (("--tuning", "idle_workers=0"), {}),
    "startup1": ((), {"RAY_worker_maximum_startup_concurrency": "1"}),
    "no_prestart": ((), {"RAY_enable_worker_prestart": "0"}),
    # Ray not starting a worker per CPU when the first driver connects.
    "no_first_driver_prestart": ((), {"RAY_prestart_worker_first_driver": "0"}),
    # The decode stage as a Ray task per unit, not on a pool of actors.
    "decode_tasks": (("--tuning", "decode_actors=false"), {}),
    # The tagcap under BASE_SITE (an earlier commit; see benchmarks/README.md).
    "base_code": ((), base_code_env()),
}
WORKER_ROLES = ("decode_worker", "write_worker", "idle_worker", "ray_worker")


def _tagcap(*args: str) -> list[str]:
    return [sys.executable, "-m", "tagcap", *args]


def run_once(sample: str, out: str, shards: int, setting: tuple[tuple[str, ...], dict[str, str]]) -> dict[str, Any]:
    extra, env = setting
    shutil.rmtree(out, ignore_errors=True)
    cmd = _tagcap(
        "caption",
        "--input",
        os.path.join(sample, "shards", f"{{000000..{shards - 1:06d}}}.tar"),
        "--segments",
        os.path.join(sample, "segments.csv"),
        "--labels",
        os.path.join(sample, "class_labels_indices.csv"),
        "--output",
        out,
        "--captioner",
        "template",
        "--no-progress",
        *extra,
    )
    start = time.perf_counter()
    # From outside the checkout: from its root, the checkout's tagcap is imported whatever
    # PYTHONPATH says (see common.run_child).
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"
    )
    with TreeUsage(proc.pid, every_s=0.1) as usage:
        _, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"tagcap caption failed ({proc.returncode}): {stderr[-2000:]}")
    units = re.search(r"units ([\d.]+) s", stderr)
    return {
        "wall_s": round(wall, 2),
        "units_s": float(units.group(1)) if units else None,
        "worker_processes": sum(n for role, n in usage.processes.items() if role in WORKER_ROLES),
        "never_working_cpu_s": round(sum(usage.cpu_s.get(r, 0.0) for r in ("idle_worker", "ray_worker")), 2),
        "cpu_s": round(sum(usage.cpu_s.values()), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/tagcap-churn")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--clips-per-shard", type=int, default=32)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {sorted(SETTINGS)}")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    sample = os.path.join(args.work, "sample")
    if not os.path.isdir(os.path.join(sample, "shards")):
        subprocess.run(
            _tagcap("sample", sample, "--shards", str(args.shards), "--clips-per-shard", str(args.clips_per_shard)),
            check=True,
            capture_output=True,
        )
    names = args.settings.split(",")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            runs[name].append(run_once(sample, os.path.join(args.work, "out"), args.shards, SETTINGS[name]))
            print(name, runs[name][-1], flush=True)
    figures: dict[str, Any] = {**machine(), "shards": args.shards, "clips_per_shard": args.clips_per_shard}
    if "base_code" in names:
        figures["base_code_commit"] = base_code_commit()
    for name, results in runs.items():
        for key in ("units_s", "worker_processes", "never_working_cpu_s", "cpu_s"):
            values = [r[key] for r in results if r[key] is not None]
            figures[f"{name}_{key}"] = statistics.median(values) if values else None
        figures[f"{name}_runs"] = results
    write_results(args.results, "worker-churn", figures)
    print({k: v for k, v in figures.items() if not isinstance(v, list)})


if __name__ == "__main__":
    main()
