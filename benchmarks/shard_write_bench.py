"""A shard writer's cost per shard: ``write_shard`` on one unit of 256 clips of 10 s 48 kHz
FLAC (audio copied, as the run's default), CPU seconds (user and system) and wall per
shard, in fresh processes, this tagcap against the one under BASE_SITE where one is
installed, interleaved round by round; and the two tar digests' rates over the same tar.

    python benchmarks/shard_write_bench.py --work /tmp/tagcap-bench --repeats 5

The writers' CPU is taken from the decode tasks in a run (a run on a GPU host is
decode-bound), so what a shard costs its writer is what a run pays for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    BASE_SITE,
    DECODE_SPEC,
    base_code_commit,
    base_code_env,
    interleave_children,
    machine,
    make_corpus,
    medians_by_setting,
    write_results,
)

# In the child: the unit prepared once, then written ``writes`` times into a fresh output
# folder each; the first write is left out of the medians (imports, first touch of pages).
_CHILD = """
import hashlib, json, os, resource, shutil, statistics, sys, time
import xxhash
from tagcap.pipeline.plan import plan_units
from tagcap.schemas.audioset import LabelMap, SegmentTable, parse_segments
from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.work import CaptionResult, DecodeSpec
from tagcap.workers.prepare import prepare_unit
from tagcap.workers.storage import Storage
from tagcap.workers.writer import ProvenanceInfo, write_shard

tar_path, segments_path, labels_path, spec_json, work, writes = sys.argv[1:7]
storage = Storage({})
unit = plan_units([tar_path], storage, 1).units[0]
with open(labels_path) as fh:
    labels = LabelMap.parse(fh.read(), labels_path)
with open(segments_path) as fh:
    segments = SegmentTable(parse_segments(fh.read(), segments_path, split="bench")[0])
_, payload = prepare_unit(unit, DecodeSpec(**json.loads(spec_json)), segments, labels, storage)
text = "a dog barks while a man speaks and a car passes by on a wet road"
results = [CaptionResult(text=text, logprob=-3.5) for _ in payload.samples]
provenance = ProvenanceInfo("blat-0123456789abcdef", "ab" * 32, {"beam": 3, "max_words": 20}, "bench")

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

wall, cpu_s = [], []
for i in range(int(writes)):
    out = os.path.join(work, f"write-{os.getpid()}-{i}")
    shutil.rmtree(out, ignore_errors=True)
    c0, t0 = cpu(), time.perf_counter()
    stats = write_shard(payload, results, OutputLayout(out), storage, provenance)
    wall.append(time.perf_counter() - t0)
    cpu_s.append(cpu() - c0)
    shutil.rmtree(out, ignore_errors=True)
data = payload.audio.data
rates = {}
for name, make in (("sha256", hashlib.sha256), ("xxh3_128", xxhash.xxh3_128)):
    t0 = time.perf_counter()
    make(data).hexdigest()
    rates[f"{name}_mb_per_s"] = round(data.nbytes / 1e6 / (time.perf_counter() - t0), 1)
print(json.dumps({
    "write_cpu_s": statistics.median(cpu_s[1:]),
    "write_wall_s": statistics.median(wall[1:]),
    "audio_mb": round(data.nbytes / 1e6, 1),
    **rates,
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each runs every setting once")
    ap.add_argument("--writes", type=int, default=6, help="shards written per process")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    corpus = make_corpus(os.path.join(args.work, "corpus-write"), 1, 256)
    out = os.path.join(args.work, "shard-write")
    os.makedirs(out, exist_ok=True)
    settings = {"current": {}}
    if os.path.isdir(os.path.join(BASE_SITE, "tagcap")):
        settings["base_code"] = base_code_env()
    child_args = [
        corpus.tars[0],
        corpus.segments,
        corpus.labels,
        json.dumps(asdict(DECODE_SPEC)),
        out,
        str(args.writes),
    ]
    runs = interleave_children(_CHILD, child_args, settings, args.repeats)
    figures = {**machine(), "clips_per_shard": 256, **medians_by_setting(runs)}
    if "base_code" in settings:
        figures["base_code_commit"] = base_code_commit()
        figures["write_cpu_saving_fraction"] = round(
            1 - figures["current_write_cpu_s"] / figures["base_code_write_cpu_s"], 3
        )
    write_results(args.results, "shard-write", figures)
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - started:.0f} s")
