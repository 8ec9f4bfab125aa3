"""The driver's parse of an AudioSet-sized segment CSV, column-wise against row by row.

    python benchmarks/segments_bench.py --rows 2000000 --repeats 3

Every caption run (and every resume) parses its segment CSVs on the driver before Ray
starts; AudioSet's unbalanced list has about two million rows. The file is made here in
Google's original shape (``#`` lines, ``", "`` between fields, labels quoted) and as a
re-saved plain copy, with fresh YouTube ids and label lists drawn from 527 MIDs with a long
tail, 1-4 per row, like AudioSet's. Both parsers run on the same text, interleaved, in one
process; the tables must be equal. Medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, write_results
from tagcap.schemas.audioset import _parse_segment_rows, parse_segments

YTID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))


def make_csv(rows: int, google: bool, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    ytids = ["".join(r) for r in YTID_CHARS[rng.integers(0, len(YTID_CHARS), (rows, 11))]]
    starts = rng.integers(0, 300, rows)
    weights = 1.0 / np.arange(1, 528) ** 0.8
    weights /= weights.sum()
    counts = rng.integers(1, 5, rows)
    picks = rng.choice(527, size=int(counts.sum()), p=weights)
    sep = ", " if google else ","
    lines = (
        [
            "# Segments csv created by benchmarks/segments_bench.py",
            f"# num_ytids={rows}, num_segs={rows}, num_unique_labels=527",
            "# YTID, start_seconds, end_seconds, positive_labels",
        ]
        if google
        else ["YTID,start_seconds,end_seconds,positive_labels"]
    )
    at = 0
    for ytid, start, n in zip(ytids, starts, counts, strict=True):
        mids = ",".join(f"/m/bench{i:03d}" for i in picks[at : at + n])
        at += n
        lines.append(sep.join([ytid, f"{start}.000", f"{start + 10}.000", f'"{mids}"']))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    figures: dict = {**machine(), "rows": args.rows}
    for shape in ("google", "plain"):
        text = make_csv(args.rows, google=shape == "google")
        times: dict[str, list[float]] = {"columns": [], "rows": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            table, report = parse_segments(text, "bench", "bench")
            times["columns"].append(round(time.perf_counter() - start, 3))
            start = time.perf_counter()
            expected, _ = _parse_segment_rows(text, "bench", "bench")
            times["rows"].append(round(time.perf_counter() - start, 3))
            if not table.equals(expected) or report.segments != args.rows:
                raise RuntimeError(f"{shape}: the two parsers disagree")
        for kind, values in times.items():
            figures[f"segments_parse_{shape}_{kind}_seconds"] = statistics.median(values)
            figures[f"segments_parse_{shape}_{kind}_seconds_runs"] = values
        print(f"{shape}: column-wise {times['columns']} s, row by row {times['rows']} s", flush=True)
    write_results(args.results, "segments", figures)


if __name__ == "__main__":
    main()
