"""The driver's digest of the captioner's weights (what names a ``blat:`` run before Ray
starts): time and the growth of the process's peak memory, for the BLAT-size checkpoint,
this tagcap against the one under BASE_SITE, in fresh processes, interleaved:

    python benchmarks/digest_bench.py --work /tmp/tagcap-bench --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    BASE_SITE,
    base_code_commit,
    base_code_env,
    blat_checkpoint,
    interleave_children,
    medians_by_setting,
    write_results,
)

# The peak from the kernel's VmHWM (as common.peak_rss_mb, written out: the child does not
# import common, which imports torch): getrusage's maxrss carries the parent's over the fork.
_CHILD = """
import json, sys, time
from tagcap.workers.models.checkpoint_files import weights_sha256
from tagcap.workers.storage import Storage

def peak_kb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))

before = peak_kb()
started = time.perf_counter()
digest = weights_sha256(sys.argv[1], Storage())
seconds = time.perf_counter() - started
grown = (peak_kb() - before) / 1024
print(json.dumps({"seconds": seconds, "peak_rss_growth_mb": grown, "digest": digest}))
"""

SETTINGS = {"current": {}, "base_code": base_code_env()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    if not os.path.isdir(BASE_SITE):
        ap.error(f"needs an earlier tagcap installed under {BASE_SITE}")
    ckpt = blat_checkpoint(os.path.join(args.work, "blat-ckpt"))
    runs = interleave_children(_CHILD, [ckpt], SETTINGS, args.repeats)
    if len({r["digest"] for results in runs.values() for r in results}) != 1:
        raise RuntimeError("the digests differ")
    figures: dict = {
        "base_code_commit": base_code_commit(),
        "weights_mb": round(os.path.getsize(os.path.join(ckpt, "model.safetensors")) / 1e6, 1),
    }
    figures.update(medians_by_setting(runs))
    print(json.dumps(figures, indent=1))
    write_results(args.results, "digest", figures)


if __name__ == "__main__":
    main()
