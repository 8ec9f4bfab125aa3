"""The embedded Ray's start and stop, as ``tagcap caption`` opens and closes it
(``pipeline.ray_runtime.ray_session``), without and with Ray's API server and autoscaler
monitor (``TAGCAP_RAY_HEAD_SERVICES``), in fresh processes, interleaved round by round:

    python benchmarks/ray_start_bench.py --repeats 5

Each child opens the session, runs one task (so the node is up and serving), and closes
it; it reports the seconds of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleave_children, medians_by_setting, write_results

_CHILD = """
import json, sys, time
import ray
from tagcap.pipeline.ray_runtime import ray_session

session = ray_session(None, num_cpus=int(sys.argv[1]), object_store_memory=200 * 1024 * 1024)
started = time.perf_counter()
session.__enter__()
up = time.perf_counter()
ray.get(ray.remote(lambda: None).remote())
ran = time.perf_counter()
session.__exit__(None, None, None)
stopped = time.perf_counter()
print(json.dumps({"start_s": up - started, "first_task_s": ran - up, "stop_s": stopped - ran}))
"""

SETTINGS = {"lean": {"TAGCAP_RAY_HEAD_SERVICES": ""}, "head_services": {"TAGCAP_RAY_HEAD_SERVICES": "1"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    settings = {name: {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **env} for name, env in SETTINGS.items()}
    runs = interleave_children(_CHILD, [str(args.cpus)], settings, args.repeats)
    figures: dict = {"ray_cpus": args.cpus, "repeats": args.repeats}
    figures.update(medians_by_setting(runs))
    print(json.dumps({k: v for k, v in figures.items() if not k.endswith("_runs")}, indent=1))
    write_results(args.results, "ray-start", figures)


if __name__ == "__main__":
    main()
