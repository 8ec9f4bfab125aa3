"""Runs the named benchmark suites of ``suites.yaml`` and checks their goals.

    python3 benchmarks/run.py SUITE [SUITE ...] [--results DIR] [--work DIR]
    python3 benchmarks/run.py --list

Each suite's script writes its result JSON under ``--results`` (default: a folder outside
the checkout; raw results are never tracked in git). A name that is not a suite is refused
(exit status 2) before anything runs; a goal that a result misses, or a suite that fails,
gives exit status 1 once every suite named has run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SUITES_FILE = os.path.join(HERE, "suites.yaml")


def load_suites(path: str = SUITES_FILE) -> dict[str, dict[str, Any]]:
    with open(path) as fh:
        suites = yaml.safe_load(fh)["suites"]
    for name, suite in suites.items():
        if ("script" in suite) == ("command" in suite):
            raise ValueError(f"suite {name}: give exactly one of script and command")
    return suites


def command(suite: dict[str, Any], results: str, work: str) -> list[str]:
    values = {"results": results, "work": work, "here": os.path.dirname(HERE)}
    if "command" in suite:
        return [str(part).format(**values) for part in suite["command"]]
    script = os.path.join(HERE, suite["script"])
    return [sys.executable, script, *(str(arg).format(**values) for arg in suite.get("args", []))]


def check_goals(name: str, goals: dict[str, dict[str, float]], results: str, since: float) -> list[str]:
    """The goals a suite's newest result JSON (written after ``since``) misses, one line each."""
    files = [p for p in glob.glob(os.path.join(results, "*.json")) if os.path.getmtime(p) >= since]
    figures: dict[str, Any] = {}
    for path in sorted(files, key=os.path.getmtime):
        with open(path) as fh:
            loaded = json.load(fh)
        if isinstance(loaded, dict):
            figures.update(loaded)
    missed = []
    for key, bound in goals.items():
        value = figures.get(key)
        if not isinstance(value, (int, float)):
            missed.append(f"{name}: {key} not in its results")
        elif "min" in bound and value < bound["min"]:
            missed.append(f"{name}: {key} = {value} below its goal {bound['min']}")
        elif "max" in bound and value > bound["max"]:
            missed.append(f"{name}: {key} = {value} above its goal {bound['max']}")
    return missed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suites", nargs="*")
    ap.add_argument("--list", action="store_true", help="list the suites and exit")
    ap.add_argument("--results", default=os.environ.get("OUT") or "/tmp/tagcap-bench-results")
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    args = ap.parse_args(argv)
    suites = load_suites()
    if args.list or not args.suites:
        for name, suite in suites.items():
            print(f"{name:18} [{suite['machine']}] {suite['about']}")
        return 0 if args.list else 2
    unknown = [name for name in args.suites if name not in suites]
    if unknown:
        print(f"unknown suite(s): {', '.join(unknown)} (known: {', '.join(suites)})", file=sys.stderr)
        return 2
    os.makedirs(args.results, exist_ok=True)
    failures: list[str] = []
    for name in args.suites:
        suite = suites[name]
        started = time.time()
        print(f"== suite {name}: {suite['about']}", flush=True)
        # Outside the checkout, so that the installed tagcap is the one imported.
        done = subprocess.run(command(suite, args.results, args.work), cwd=tempfile.gettempdir())
        if done.returncode != 0:
            failures.append(f"{name}: exit status {done.returncode}")
            continue
        failures += check_goals(name, suite.get("goals", {}), args.results, started)
    for line in failures:
        print(f"goal missed: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
