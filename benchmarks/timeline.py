"""What a run's Ray timeline says: for each kind of task or actor call, how many ran, how
long each took, how many ran at once on average over the run (busy workers), and over each
tenth of the run (where fill, steady state and drain show)."""

from __future__ import annotations

import itertools
import json
import statistics
from collections import defaultdict
from typing import Any


def summarize_timeline(path: str) -> dict[str, Any]:
    """Chrome-trace events from ``ray.timeline`` (complete events, microseconds), grouped
    by name; ``busy`` is summed duration over the span from the first start to the last end."""
    with open(path) as fh:
        events = [e for e in json.load(fh) if e.get("ph") == "X" and "dur" in e]
    if not events:
        return {}
    start = min(e["ts"] for e in events)
    end = max(e["ts"] + e["dur"] for e in events)
    span_s = (end - start) / 1e6
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in events:
        by_name[e["name"]].append(e["dur"] / 1e6)
    out: dict[str, Any] = {"span_s": round(span_s, 2), **_steady_state(events, start)}
    for name, durations in sorted(by_name.items(), key=lambda kv: -sum(kv[1])):
        if sum(durations) < 0.01 * span_s:
            continue  # bookkeeping events too small to matter
        mine = [e for e in events if e["name"] == name]
        out[name] = {
            "count": len(durations),
            "median_s": round(statistics.median(durations), 4),
            "total_s": round(sum(durations), 2),
            "busy": round(sum(durations) / span_s, 2),
            "first_start_s": round((min(e["ts"] for e in mine) - start) / 1e6, 2),
            "last_end_s": round((max(e["ts"] + e["dur"] for e in mine) - start) / 1e6, 2),
            "busy_by_tenth": _busy_by_window(mine, start, end, 10),
        }
    return out


def _steady_state(events: list[dict[str, Any]], start: float) -> dict[str, Any]:
    """Units decoded per second once the pipeline flows, in the window from one decode
    task's length after the first caption call (the captioner is up, and decode slots that
    idled while it started have refilled) to the last decode task's start (every slot could
    still be fed). Each decode task counts by the fraction of it inside the window, so the
    rate is what the slots did there, not how many happened to end there.

    (Until 2026-12-01 the window opened at the first caption call and counted the tasks
    that ended in it: the refill after the captioner's start, when few tasks end, made that
    figure low by a fifth to a quarter.)"""
    # A decode task (executor._prepare) or a decode actor's call (prepare).
    prepares = [e for e in events if e["name"].endswith("._prepare") or e["name"] == "prepare"]
    captions = [e for e in events if e["name"] == "caption"]
    if not prepares or not captions:
        return {}
    refill = statistics.median(e["dur"] for e in prepares)
    lo = min(e["ts"] for e in captions) + refill
    hi = max(e["ts"] for e in prepares)
    if hi <= lo:
        return {}
    units = sum(_overlap(e, lo, hi) / e["dur"] for e in prepares if e["dur"] > 0)
    busy = sum(_overlap(e, lo, hi) for e in prepares) / (hi - lo)
    return {
        "steady_window_s": [round((lo - start) / 1e6, 2), round((hi - start) / 1e6, 2)],
        "steady_units_per_s": round(units / ((hi - lo) / 1e6), 3),
        "steady_decode_slots_busy": round(busy, 2),
    }


def _busy_by_window(events: list[dict[str, Any]], start: float, end: float, windows: int) -> list[float]:
    """Average number of these events running at once in each of ``windows`` equal slices."""
    width = (end - start) / windows
    busy = [0.0] * windows
    for e in events:
        a, b = e["ts"], e["ts"] + e["dur"]
        for w in range(int((a - start) // width), min(windows, int((b - start) // width) + 1)):
            busy[w] += _overlap(e, start + w * width, start + (w + 1) * width)
    return [round(x / width, 2) for x in busy]


def _overlap(event: dict[str, Any], lo: float, hi: float) -> float:
    """How long ``event`` ran inside [lo, hi] (microseconds)."""
    return max(0.0, min(event["ts"] + event["dur"], hi) - max(event["ts"], lo))


def summarize_calls(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The captioner's calls as ``workers.call_trace`` recorded them in its actor: how
    many, the clips per second from the first call's start to the last call's end, the
    median seconds of a call and of each phase in it, and per calling thread the share of
    that span it spent in calls and the median gap between its calls (time outside the
    captioner: Ray handing results back and the next unit in, or no unit to caption)."""
    if not calls:
        return {}
    ends = [c["began"] + sum(s for _, s in c["phases"]) for c in calls]
    first, last = min(c["began"] for c in calls), max(ends)
    span = max(last - first, 1e-9)
    by_phase: dict[str, list[float]] = defaultdict(list)
    by_thread: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for call, end in zip(calls, ends, strict=True):
        for phase, seconds in call["phases"]:
            by_phase[phase].append(seconds)
        by_thread[(call["pid"], call["thread"])].append((call["began"], end))
    busy, gaps = [], []
    for spans in by_thread.values():
        spans.sort()
        busy.append(round(sum(e - b for b, e in spans) / span, 3))
        gaps += [b - e for (_, e), (b, _) in itertools.pairwise(spans)]
    return {
        "calls": len(calls),
        "clips_per_s": round(sum(c["clips"] for c in calls) / span, 1),
        "call_s_median": round(statistics.median(e - c["began"] for c, e in zip(calls, ends, strict=True)), 4),
        "phase_s_median": {p: round(statistics.median(v), 4) for p, v in by_phase.items()},
        "thread_busy": busy,
        "gap_s_median": round(statistics.median(gaps), 4) if gaps else None,
    }
