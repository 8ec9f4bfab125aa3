"""One decode task's CPU cost per clip: ``prepare_unit`` (read the tar, join the tags,
decode, pack the PCM and the audio) on one unit of 256 clips of 10 s 48 kHz FLAC, in a
fresh process per setting, the settings interleaved round by round.

    python benchmarks/prepare_bench.py --work /tmp/tagcap-bench --repeats 5

Settings: freed memory kept for the next unit (tagcap's default) or handed back to the
kernel (``TAGCAP_RETAIN_FREED_MEMORY=0``). Each process runs the unit ``--units`` times,
as a Ray worker runs unit after unit, and reports the median of all but the first (which
pays the imports and the first touch of every page either way). The machine's transparent
huge page setting is recorded: where the kernel backs large allocations with 2 MB pages,
handing memory back costs far fewer page faults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DECODE_SPEC, machine, make_corpus, write_results

SETTINGS = {"retain": "1", "no_retain": "0"}

# Runs in the child (without torch, as a decode worker): the unit ``units`` times through
# the decode task's own function, with the benchmarks' DecodeSpec.
_CHILD = """
import json, statistics, sys, time
from tagcap.pipeline.plan import plan_units
from tagcap.schemas.audioset import LabelMap, SegmentTable, parse_segments
from tagcap.schemas.work import DecodeSpec
from tagcap.workers.prepare import prepare_unit
from tagcap.workers.storage import Storage

pattern, segments_path, labels_path, units = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
storage = Storage({})
unit = plan_units([pattern], storage, 1).units[0]
with open(labels_path) as fh:
    labels = LabelMap.parse(fh.read(), labels_path)
with open(segments_path) as fh:
    segments = SegmentTable(parse_segments(fh.read(), segments_path, split="bench")[0])
spec = DecodeSpec(**json.loads(sys.argv[5]))
times = []
for _ in range(units):
    start = time.perf_counter()
    batch, payload = prepare_unit(unit, spec, segments, labels, storage)
    times.append(time.perf_counter() - start)
    clips = len(batch.keys)
    del batch, payload
print(json.dumps({"ms_per_clip": 1000 * statistics.median(times[1:]) / clips, "clips": clips}))
"""


def _transparent_hugepages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each runs every setting once")
    ap.add_argument("--units", type=int, default=6, help="the unit this many times per process")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    corpus = make_corpus(os.path.join(args.work, "corpus-prepare"), 1, 256)
    runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, value in SETTINGS.items():
            env = {**os.environ, "TAGCAP_RETAIN_FREED_MEMORY": value}
            spec = json.dumps(asdict(DECODE_SPEC))
            cmd = [sys.executable, "-c", _CHILD, corpus.pattern, corpus.segments, corpus.labels, str(args.units), spec]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            runs[name].append(round(json.loads(out.stdout.strip().splitlines()[-1])["ms_per_clip"], 3))
            print(name, runs[name][-1], "ms/clip", flush=True)
    figures = {
        **machine(),
        "transparent_hugepages": _transparent_hugepages(),
        "clips_per_unit": 256,
        "units_per_process": args.units,
        **{f"prepare_{name}_ms_per_clip": round(statistics.median(v), 3) for name, v in runs.items()},
        **{f"prepare_{name}_ms_per_clip_runs": v for name, v in runs.items()},
    }
    figures["retain_saving_fraction"] = round(
        1 - figures["prepare_retain_ms_per_clip"] / figures["prepare_no_retain_ms_per_clip"], 3
    )
    write_results(args.results, "prepare", figures)
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - started:.0f} s")
