"""One decode task's time per clip: ``prepare_unit`` (read the tar, join the tags, decode,
pack the PCM and the audio) on units of 256 clips of 10 s 48 kHz FLAC, in fresh processes,
the settings interleaved round by round; with ``--procs 1,16`` also that many processes
at once (each on its own tar), as a GPU host's 16 decode slots run.

    python benchmarks/prepare_bench.py --work /tmp/tagcap-bench --repeats 5 --procs 1,16

Settings: ``retain``, freed memory kept for the next unit (tagcap's default); ``no_retain``,
handed back to the kernel (``--tuning retain_freed_memory=false``); ``decode_only``, the decode
ceiling's loop in the same harness (each clip read from the tar and decoded to int16,
nothing kept). ``prepare_unit`` against ``decode_only`` at the same number of processes is
what a decode task costs beyond decoding, without Ray; a caption run's decode tasks against
this is what running beside Ray, the captioner and the writers costs them.

Each process runs its unit ``--units`` times, as a Ray worker runs unit after unit, and
reports the median of all but the first (which pays the imports and the first touch of
every page either way), and its peak resident memory. The machine's transparent huge
page setting is recorded: where the kernel backs large allocations with 2 MB pages, handing
memory back costs far fewer faults.
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
from common import DECODE_SPEC, Corpus, base_code_commit, base_code_env, machine, make_corpus, write_results

# name -> (retain freed memory, what the child runs, tagcap from BASE_SITE)
SETTINGS = {
    "retain": (True, "prepare", False),
    "no_retain": (False, "prepare", False),
    "decode_only": (True, "decode", False),
    # The unit's outputs also serialised as Ray stores them (pickle 5, NumPy arrays out of
    # band, each copied into one buffer allocated once, as the object store's memory is):
    # the copies a decode task makes of its unit, into the store included.
    "put": (True, "prepare_put", False),
    # ``put`` and ``retain`` with an earlier tagcap, installed under BASE_SITE (see
    # caption_bench's base_code lever).
    "base_put": (True, "prepare_put", True),
    "base_retain": (True, "prepare", True),
}

# Runs in the child (without torch, as a decode worker): the unit ``units`` times through
# the decode task's own function (or the ceiling's decode loop), with the benchmarks'
# DecodeSpec.
_CHILD = """
import io, json, pickle, resource, statistics, sys, tarfile, time
from tagcap.pipeline.plan import plan_units
from tagcap.schemas.audioset import LabelMap, SegmentTable, parse_segments
from tagcap.schemas.work import DecodeSpec
from tagcap.workers.audio import read_mono
from tagcap.workers.prepare import prepare_unit
from tagcap.workers.process_settings import retain_freed_memory
from tagcap.workers.storage import Storage

tar_path, segments_path, labels_path, units, what = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[6]
storage = Storage({})
unit = plan_units([tar_path], storage, 1).units[0]
with open(labels_path) as fh:
    labels = LabelMap.parse(fh.read(), labels_path)
with open(segments_path) as fh:
    segments = SegmentTable(parse_segments(fh.read(), segments_path, split="bench")[0])
spec = DecodeSpec(**json.loads(sys.argv[5]))


def decode_only():
    retain_freed_memory(spec.retain_freed_memory)  # as the ceiling's workers
    n = 0
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if member.name.endswith(".flac"):
                n += read_mono(tar.extractfile(member).read(), pcm16=True)[0].shape[0] > 0
    return n


def prepare():
    batch, payload = prepare_unit(unit, spec, segments, labels, storage)
    return len(batch.keys)


store = None


def prepare_put():
    global store
    batch, payload = prepare_unit(unit, spec, segments, labels, storage)
    buffers = []
    inline = [pickle.dumps(x, protocol=5, buffer_callback=buffers.append) for x in (batch, payload)]
    size = sum(len(b) for b in inline) + sum(b.raw().nbytes for b in buffers)
    if store is None or len(store) < size:
        store = bytearray(2 * size)
    view, at = memoryview(store), 0
    for part in [*inline, *(b.raw() for b in buffers)]:
        view[at : at + len(part)] = part
        at += len(part)
    return len(batch.keys)


run = {"decode": decode_only, "prepare": prepare, "prepare_put": prepare_put}[what]
times = []
for _ in range(units):
    start = time.perf_counter()
    clips = run()
    times.append(time.perf_counter() - start)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"ms_per_clip": 1000 * statistics.median(times[1:]) / clips, "clips": clips, "peak_mb": peak_mb}))
"""


def _transparent_hugepages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            return fh.read().strip()
    except OSError:
        return "unknown"


def _run_at_once(procs: int, setting: str, corpus: Corpus, units: int, spec: str) -> list[tuple[float, float]]:
    """``procs`` children at once, each on its own tar: each one's ms per clip and peak
    resident memory (MB)."""
    retain, what, base = SETTINGS[setting]
    spec = json.dumps({**json.loads(spec), "retain_freed_memory": retain})
    env = dict(os.environ)
    if base:
        env.update(base_code_env())
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, tar, corpus.segments, corpus.labels, str(units), spec, what],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for tar in corpus.tars[:procs]
    ]
    out = []
    for child in children:
        stdout, _ = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"{setting} child failed ({child.returncode})")
        result = json.loads(stdout.strip().splitlines()[-1])
        out.append((result["ms_per_clip"], result["peak_mb"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each runs every setting once")
    ap.add_argument("--units", type=int, default=6, help="the unit this many times per process")
    ap.add_argument("--procs", default="1", help="comma-separated: processes at once")
    ap.add_argument("--settings", default="retain,no_retain", help=f"comma-separated, of {sorted(SETTINGS)}")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    counts = [int(x) for x in args.procs.split(",")]
    settings = args.settings.split(",")
    corpus = make_corpus(os.path.join(args.work, f"corpus-prepare-{max(counts)}"), max(counts), 256)
    spec = json.dumps(asdict(DECODE_SPEC))
    # (setting, procs) -> per round: the median child's ms per clip, and clips/s of all.
    per_clip: dict[tuple[str, int], list[float]] = {(s, n): [] for s in settings for n in counts}
    rate: dict[tuple[str, int], list[float]] = {(s, n): [] for s in settings for n in counts}
    peak: dict[tuple[str, int], list[float]] = {(s, n): [] for s in settings for n in counts}
    for _ in range(args.repeats):
        for n in counts:
            for name in settings:
                children = _run_at_once(n, name, corpus, args.units, spec)
                ms = [m for m, _ in children]
                per_clip[name, n].append(round(statistics.median(ms), 3))
                rate[name, n].append(round(sum(1000 / m for m in ms), 1))
                peak[name, n].append(round(statistics.median(p for _, p in children), 1))
                print(
                    f"{name} x{n}: {per_clip[name, n][-1]} ms/clip, {rate[name, n][-1]} clips/s, "
                    f"peak {peak[name, n][-1]} MB",
                    flush=True,
                )
    figures = {
        **machine(),
        "transparent_hugepages": _transparent_hugepages(),
        "clips_per_unit": 256,
        "units_per_process": args.units,
    }
    if any(SETTINGS[name][2] for name in settings):
        figures["base_code_commit"] = base_code_commit()
    for (name, n), values in per_clip.items():
        # One process: the names of the sessions before (prepare_retain_ms_per_clip).
        suffix = "" if n == 1 else f"_x{n}"
        figures[f"prepare_{name}{suffix}_ms_per_clip"] = round(statistics.median(values), 3)
        figures[f"prepare_{name}{suffix}_ms_per_clip_runs"] = values
        figures[f"prepare_{name}{suffix}_clips_per_s"] = round(statistics.median(rate[name, n]), 1)
        figures[f"prepare_{name}{suffix}_peak_mb"] = round(statistics.median(peak[name, n]), 1)
    if "retain" in settings and "no_retain" in settings and 1 in counts:
        figures["retain_saving_fraction"] = round(
            1 - figures["prepare_retain_ms_per_clip"] / figures["prepare_no_retain_ms_per_clip"], 3
        )
    write_results(args.results, "prepare", figures)
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - started:.0f} s")
