"""The captioner actor's start: a fresh process builds ``CaptionActor`` for the BLAT-size
captioner (imports, weights read and hashed, the model on the GPU, the CUDA-graph warm-up)
as a caption run's actor does, with ``--busy`` other processes keeping cores busy at nice
10 as a run's decode tasks do. Settings interleaved round by round:

    python benchmarks/actor_start_bench.py --work /tmp/tagcap-bench --repeats 5 --busy 16

``current``: this tagcap; ``base_code``: the earlier one under BASE_SITE (see
caption_bench's lever of that name); ``evicted``: this tagcap after the page cache of torch's
and CUDA's libraries and of torch's Python files is dropped (``posix_fadvise``
``DONTNEED``), as on a machine that has not started a GPU process since it booted. The
very first start of the benchmark is kept as ``first_start`` (on a fresh machine, the truly
cold one). Each child reports the seconds to import the executor module (what a Ray worker
has done before the actor's ``__init__``) and to construct the actor; the actor's own
account of its start (load / warm-up) is kept beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    BASE_SITE,
    base_code_commit,
    base_code_env,
    evict_from_page_cache,
    machine,
    medians_by_setting,
    run_child,
    torch_files,
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


@dataclass(frozen=True)
class Setting:
    env: dict[str, str] = field(default_factory=dict)
    evict: bool = False


SETTINGS = {
    "current": Setting(),
    "base_code": Setting(env=base_code_env()),
    "evicted": Setting(evict=True),
}


def _checkpoint(folder: str) -> str:
    """The BLAT-size checkpoint, built in a child process: this one keeps off torch, so
    that evicting torch's files from the page cache leaves none of them behind."""
    build = (
        "import sys; sys.path.insert(0, sys.argv[1]); from common import blat_checkpoint; blat_checkpoint(sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", build, os.path.dirname(os.path.abspath(__file__)), folder], check=True)
    return folder


def _start_once(ckpt: str, gpu: bool, setting: Setting) -> dict[str, float]:
    if setting.evict:
        evict_from_page_cache(torch_files())
    figures, stderr = run_child(_CHILD, [ckpt, "1" if gpu else "0"], setting.env)
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
    ckpt = _checkpoint(os.path.join(args.work, "blat-ckpt"))
    gpu = machine()["gpu"] != "none"
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(args.busy)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    try:
        time.sleep(0.5 if busy else 0.0)
        runs["first_start"] = [_start_once(ckpt, gpu, SETTINGS["current"])]  # reads everything from the disk
        print(f"first_start: {json.dumps(runs['first_start'][0])}", flush=True)
        for _ in range(args.repeats):
            for name in chosen:
                runs[name].append(_start_once(ckpt, gpu, SETTINGS[name]))
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
