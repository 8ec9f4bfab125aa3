"""Mapping a unit's pages of Ray's object store into the captioner's process ahead of its
caption call.

A process reaches the object store through one shared mapping of the whole store, but
each page costs the process a page fault the first time it touches it. The captioner actor
touches every page of every unit it captions (pinning them for the copy to the GPU), and
in a run each unit arrives in pages it has not touched yet. A decoded unit waits in the
store for its caption call, so the actor maps it in that time, on a thread of its own
(``CaptionActor.map_input``), and the call finds its pages mapped (why:
docs/design/pinned-store-pages.md).

Reading one byte per page maps them (the kernel maps a read fault's neighbours in a shared
file with it; ``madvise(MADV_POPULATE_READ)`` would need Linux 5.14). NumPy's loop releases
the GIL, so the caption calls' threads run meanwhile.
"""

from __future__ import annotations

import mmap

import numpy as np

PAGE = mmap.PAGESIZE


def map_pages(array: np.ndarray) -> int:
    """Touch (read) one byte of every page of ``array``'s memory, so that this process has
    them mapped; its contents are unchanged. The number of pages touched."""
    if array.size == 0:
        return 0
    if not array.flags.c_contiguous:
        raise ValueError("map_pages needs a contiguous array")
    as_bytes = array.reshape(-1).view(np.uint8)
    # From the first page boundary inside it, plus its first byte: every page it spans.
    first = (-array.ctypes.data) % PAGE
    touched = as_bytes[first::PAGE]
    np.bitwise_or.reduce(touched)
    np.bitwise_or.reduce(as_bytes[:1])
    return touched.size + (1 if first else 0)
