"""Driver scale: plan, run and resume jobs of 1k, 10k and 100k small work units on the CPU.

    python benchmarks/driver_scale.py --work /tmp/dscale --units 1000 10000 100000 --run-units 1000 10000

Each work unit is one input tar holding one tiny clip (0.25 s, 8 kHz FLAC) with the
``template`` captioner, so the driver's own costs dominate: listing and sorting the input,
parsing a segment CSV with a row per clip, fingerprinting, planning; at the end of a run,
reading every stats file back for ``sizes.json`` and the manifest; on a resume, finding what
is already committed. For every size:

* ``plan``: ``prepare_run`` in a fresh process (everything before Ray starts), wall time and
  the process's peak RSS, median of ``--repeats``;
* ``resume_scan``: on a finished output, the scan that tells a rerun what is done
  (``committed_shards``) plus reading the stats files back (what the commit does), median;
* ``run`` / ``resume`` (sizes in ``--run-units``): ``tagcap caption`` end to end in a
  subprocess (embedded Ray, every core), wall time and the driver's peak RSS (the driver
  process alone, sampled); then the same command again, which finds everything done.

Writes ``driver_scale-<date>.json`` with ``plan_seconds_100k_units`` and
``resume_scan_seconds_100k_units`` among the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import peak_rss_mb, write_results
from tagcap.schemas.keys import make_key
from tagcap.workers.audio import encode_flac

RATE = 8000
CLIP_SECONDS = 0.25
LABELS = "index,mid,display_name\n0,/m/09x0r,Speech\n1,/m/0jbk,Animal\n2,/m/04rlf,Music\n"
MIDS = ["/m/09x0r", "/m/0jbk", "/m/04rlf"]


def _ytid(i: int) -> str:
    return f"u{i:010d}"  # 11 characters, as a YouTube id


def make_inputs(folder: str, units: int) -> dict[str, str]:
    """``units`` one-clip tars, a segment CSV with a row for each, and a label map."""
    shards = os.path.join(folder, "shards")
    done_marker = os.path.join(folder, "DONE")
    paths = {
        "shards": os.path.join(shards, f"{{000000..{units - 1:06d}}}.tar"),
        "segments": os.path.join(folder, "segments.csv"),
        "labels": os.path.join(folder, "labels.csv"),
    }
    if os.path.exists(done_marker):
        return paths
    os.makedirs(shards, exist_ok=True)
    t = np.arange(int(RATE * CLIP_SECONDS)) / RATE
    flac = encode_flac((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), RATE)
    rows = ["# YTID, start_seconds, end_seconds, positive_labels"]
    for i in range(units):
        key = make_key(_ytid(i), 0)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in ((f"{key}.flac", flac), (f"{key}.json", json.dumps({"ytid": _ytid(i)}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        with open(os.path.join(shards, f"{i:06d}.tar"), "wb") as fh:
            fh.write(buf.getvalue())
        rows.append(f'{_ytid(i)}, 0.000, 10.000, "{MIDS[i % 3]}"')
    with open(paths["segments"], "w") as fh:
        fh.write("\n".join(rows) + "\n")
    with open(paths["labels"], "w") as fh:
        fh.write(LABELS)
    open(done_marker, "w").close()
    return paths


def _caption_args(paths: dict[str, str], out: str, captioner: str = "template") -> list[str]:
    return [
        "--input",
        paths["shards"],
        "--segments",
        paths["segments"],
        "--labels",
        paths["labels"],
        "--output",
        out,
        "--captioner",
        captioner,
        "--no-progress",
    ]


# -- probes, each run in a fresh process so its peak RSS is its own ------------------------
# (from VmHWM: getrusage's maxrss in a child starts at the parent's peak, which Linux
# carries over fork and exec). A probe imports torch (through common) where tagcap's
# driver does not, so its total peak is mostly torch: ``peak_growth_mb``, what the step
# itself added to the process's peak, says how the driver's memory grows.
def probe_plan(args: list[str]) -> dict[str, float]:
    from tagcap.pipeline.caption import prepare_run
    from tagcap.pipeline.cli import build_parser, caption_config

    config = caption_config(build_parser().parse_args(["caption", *args]))
    before = peak_rss_mb()
    t0 = time.perf_counter()
    prep = prepare_run(config)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "units": len(prep.plan.units),
        "peak_rss_mb": peak_rss_mb(),
        "peak_growth_mb": peak_rss_mb() - before,
    }


def probe_resume_scan(out: str) -> dict[str, float]:
    from tagcap.pipeline.outputs import committed_shards, read_stats
    from tagcap.schemas.layout import OutputLayout
    from tagcap.workers.storage import Storage

    layout, storage = OutputLayout(out), Storage()
    before = peak_rss_mb()
    t0 = time.perf_counter()
    done = committed_shards(layout, storage)
    scan = time.perf_counter() - t0
    stats = read_stats(layout, storage, done)
    total = time.perf_counter() - t0
    return {
        "scan_seconds": scan,
        "scan_and_stats_seconds": total,
        "committed": len(done),
        "stats": len(stats),
        "peak_rss_mb": peak_rss_mb(),
        "peak_growth_mb": peak_rss_mb() - before,
    }


def _probe(kind: str, payload: Any) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--probe", kind, json.dumps(payload)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_driver(args: list[str]) -> dict[str, float]:
    """``tagcap caption`` in a subprocess: wall time and the driver process's peak RSS."""
    cmd = [sys.executable, "-m", "tagcap", "caption", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak = max(peak, p.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"tagcap caption failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": wall, "driver_peak_rss_mb": peak / 2**20, "summary": err.strip().splitlines()[-3:]}


def _median(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 4)


def _growth(sizes: list[int], values: list[float]) -> float | None:
    """Log-log slope from the smallest to the largest size: 1.0 is linear."""
    if len(sizes) < 2 or min(values) <= 0:
        return None
    return round(float(np.log(values[-1] / values[0]) / np.log(sizes[-1] / sizes[0])), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/tagcap-driver-scale")
    ap.add_argument("--units", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--run-units", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument(
        "--blat",
        action="store_true",
        help="plan with a BLAT-size checkpoint (random weights; hashed on the driver as a run does), not template",
    )
    ap.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        kind, payload = args.probe[0], json.loads(args.probe[1])
        print(json.dumps(probe_plan(payload) if kind == "plan" else probe_resume_scan(payload)))
        return

    figures: dict[str, Any] = {"units": {}}
    captioner = "template"
    if args.blat:
        from common import blat_checkpoint

        captioner = "blat:" + blat_checkpoint(os.path.join(args.work, "blat-checkpoint"))
        figures["captioner"] = "blat-size"
    for n in sorted(args.units):
        t0 = time.perf_counter()
        paths = make_inputs(os.path.join(args.work, f"in-{n}"), n)
        print(f"{n} units: inputs ready in {time.perf_counter() - t0:.1f} s", flush=True)
        out = os.path.join(args.work, f"out-{n}")
        entry: dict[str, Any] = {}
        plans = [_probe("plan", _caption_args(paths, out, captioner)) for _ in range(args.repeats)]
        entry["plan_seconds"] = _median(plans, "seconds")
        entry["plan_peak_rss_mb"] = _median(plans, "peak_rss_mb")
        entry["plan_peak_growth_mb"] = _median(plans, "peak_growth_mb")
        if n in args.run_units and not args.blat:
            entry["run"] = _run_driver(_caption_args(paths, out))
            entry["resume"] = _run_driver(_caption_args(paths, out))
            print(f"{n} units: run {entry['run']['seconds']:.1f} s, resume {entry['resume']['seconds']:.1f} s")
        if os.path.exists(os.path.join(out, "manifest.json")):
            scans = [_probe("scan", out) for _ in range(args.repeats)]
            entry["resume_scan_seconds"] = _median(scans, "scan_seconds")
            entry["resume_scan_and_stats_seconds"] = _median(scans, "scan_and_stats_seconds")
            entry["resume_scan_peak_rss_mb"] = _median(scans, "peak_rss_mb")
            entry["resume_scan_peak_growth_mb"] = _median(scans, "peak_growth_mb")
            entry["committed"] = scans[0]["committed"]
        figures["units"][str(n)] = entry
        print(f"{n} units: {json.dumps({k: v for k, v in entry.items() if k not in ('run', 'resume')})}", flush=True)

    sizes = sorted(args.units)
    rows = [figures["units"][str(n)] for n in sizes]
    figures["plan_growth_exponent"] = _growth(sizes, [r["plan_seconds"] for r in rows])
    scanned = [(n, r) for n, r in zip(sizes, rows, strict=True) if "resume_scan_seconds" in r]
    if scanned:
        figures["resume_scan_growth_exponent"] = _growth(
            [n for n, _ in scanned], [r["resume_scan_and_stats_seconds"] for _, r in scanned]
        )
    if 100000 in args.units:
        figures["plan_seconds_100k_units"] = figures["units"]["100000"]["plan_seconds"]
        figures["resume_scan_seconds_100k_units"] = figures["units"]["100000"].get("resume_scan_and_stats_seconds")
    write_results(args.results, "driver_scale", figures)


if __name__ == "__main__":
    main()
