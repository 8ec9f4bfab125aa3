"""Where a caption call's time goes inside the captioner actor, for measurement.

A run's stats say how long each unit's caption call took (``stage_seconds["caption"]``),
not what the call waited on: the copy of its audio to the GPU, the encoder, its turn at
the beam search's CUDA graph (one search at a time), the search, the captions back on the
host. With a folder given (``tagcap caption --call-trace DIR``, which each captioner actor
applies with :func:`enable`), every call in this process appends one JSON line to
``<folder>/calls-<pid>.jsonl``: its thread, when it began (Unix time) and the
seconds between the marks it passed, in order. Unset (the default), every function here
returns at once.

The marks are wall-clock times on the calling thread: a GPU call that returns before its
work is done shows up in the next mark that waits for it, so the phases say where the
thread waited, not where the GPU worked.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

FOLDER = ""


def enable(folder: str | None) -> None:
    """Trace this process's calls into ``folder`` from now on (None or "": no tracing)."""
    global FOLDER
    FOLDER = folder or ""
    if FOLDER:
        os.makedirs(FOLDER, exist_ok=True)


_local = threading.local()
_write_lock = threading.Lock()


def begin(clips: int) -> None:
    """Start this thread's trace of one call, of ``clips`` clips."""
    if FOLDER:
        _local.clips = clips
        _local.began = time.time()
        _local.last = time.perf_counter()
        _local.phases = []


def mark(phase: str) -> None:
    """Close ``phase``: the seconds since the call began or since its last mark."""
    if FOLDER and getattr(_local, "phases", None) is not None:
        now = time.perf_counter()
        _local.phases.append((phase, round(now - _local.last, 6)))
        _local.last = now


def end() -> None:
    """Write this thread's call as one line and forget it."""
    phases = getattr(_local, "phases", None) if FOLDER else None
    if phases is None:
        return
    _local.phases = None
    line = json.dumps({"thread": threading.get_ident(), "clips": _local.clips, "began": _local.began, "phases": phases})
    with _write_lock, open(os.path.join(FOLDER, f"calls-{os.getpid()}.jsonl"), "a") as fh:
        fh.write(line + "\n")


def read(folder: str) -> list[dict[str, Any]]:
    """Every call traced under ``folder``, each with its ``pid``, sorted by when it began."""
    calls: list[dict[str, Any]] = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("calls-") and name.endswith(".jsonl"):
            pid = int(name[len("calls-") : -len(".jsonl")])
            with open(os.path.join(folder, name)) as fh:
                calls.extend({**json.loads(line), "pid": pid} for line in fh if line.strip())
    return sorted(calls, key=lambda c: float(c["began"]))
