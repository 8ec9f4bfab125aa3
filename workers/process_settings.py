"""Settings a decode task applies to the worker process (or thread) it runs in.

Ray reuses worker processes from task to task, so these are made on the first call and
hold for the process's life; each is a no-op where the platform does not have it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Below this, a freed block stays in the process for the next unit. A unit of 256 clips
# of 10 s at 48 kHz holds about 650 MB at its peak (its audio, and its PCM twice).
_RETAIN_BYTES = 1 << 30

_retained: bool | None = None


def lower_priority(niceness: int) -> None:
    """Raise this thread's nice value to at least ``niceness`` (never lower it: that takes
    privileges). On Linux the value is per thread and inherited by threads it starts, so
    the clips a task decodes on several threads all run at it. Why decode tasks run at 10:
    docs/design/nice-decode.md."""
    if niceness <= 0 or not hasattr(os, "getpriority"):
        return
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) < niceness:
            os.setpriority(os.PRIO_PROCESS, 0, min(niceness, 19))


def retain_freed_memory(wanted: bool = True) -> bool:
    """Keep memory that a unit frees for the next unit instead of handing it back to the
    kernel (glibc's ``mallopt``: blocks up to 1 GB come from the heap, and the heap is not
    trimmed below that). Returns whether the setting is in force.

    glibc maps every block above 32 MB on its own and unmaps it on free, so without this
    each unit's arrays are fresh pages the kernel zeroes and faults in again (what that
    costs: docs/design/decode-path.md). The cost is that a worker keeps its largest unit's
    footprint resident between tasks. ``wanted`` (``tuning.retain_freed_memory``,
    carried in the unit's ``DecodeSpec``) False turns it off; the first call in a process
    decides, as the setting cannot be undone."""
    global _retained
    if _retained is None:
        _retained = False
        if wanted:
            _retained = _mallopt(_M_MMAP_THRESHOLD, _RETAIN_BYTES) and _mallopt(_M_TRIM_THRESHOLD, _RETAIN_BYTES)
    return _retained


def freed_memory_retained() -> bool | None:
    """Whether this process retains freed memory (None: no decode task has decided yet)."""
    return _retained


def _mallopt(param: int, value: int) -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return False
    return bool(mallopt(ctypes.c_int(param), ctypes.c_int(value)))
