"""Read torch's and CUDA's shared libraries into the page cache ahead of a GPU process's
import of them.

A GPU captioner's process maps about 4 GB of shared libraries (``torch/lib`` and the
``nvidia`` wheels' ``lib`` folders) when it imports torch and makes its CUDA context. On a
machine whose page cache does not hold them yet, the import faults them in a few pages at
a time. ``start`` reads them on background threads in large sequential reads instead,
from a process that may start before the GPU process does (a run's driver, before its
embedded Ray starts). The reads change nothing but the page cache; a file that cannot be
read is skipped. The threads are daemons, so a process never waits for them to end.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass, field

# Each thread reads its files in chunks of this size into one buffer of its own.
_CHUNK_BYTES = 8 << 20


def library_files() -> list[str]:
    """The shared libraries of the installed torch and of the ``nvidia`` wheels, largest
    first, found without importing torch."""
    folders: list[str] = []
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec is not None and torch_spec.submodule_search_locations:
        folders += [os.path.join(place, "lib") for place in torch_spec.submodule_search_locations]
    nvidia_spec = importlib.util.find_spec("nvidia")
    if nvidia_spec is not None and nvidia_spec.submodule_search_locations:
        folders += list(nvidia_spec.submodule_search_locations)
    found: dict[str, int] = {}
    for folder in folders:
        for root, _dirs, names in os.walk(folder):
            for name in names:
                if ".so" not in name:
                    continue
                path = os.path.realpath(os.path.join(root, name))
                try:
                    found[path] = os.path.getsize(path)
                except OSError:
                    continue
    return sorted(found, key=lambda path: found[path], reverse=True)


@dataclass
class Readahead:
    """Threads reading files into the page cache; ``wait`` joins them (benchmarks, tests)."""

    files: list[str]
    threads: list[threading.Thread] = field(default_factory=list)
    bytes_read: list[int] = field(default_factory=list)

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the reads to end; the bytes read so far."""
        for thread in self.threads:
            thread.join(timeout_s)
        return sum(self.bytes_read)


def _read_files(paths: list[str], totals: list[int], slot: int) -> None:
    buffer = bytearray(_CHUNK_BYTES)
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as handle:
                while count := handle.readinto(buffer):
                    totals[slot] += count
        except OSError:
            continue


def start(files: list[str] | None = None, threads: int = 4) -> Readahead:
    """Start reading ``files`` (default: ``library_files()``) on ``threads`` daemon threads,
    the largest files first, dealt round-robin; returns at once."""
    paths = library_files() if files is None else list(files)
    count = max(1, min(threads, len(paths)))
    readahead = Readahead(paths, bytes_read=[0] * count)
    for slot in range(count):
        thread = threading.Thread(
            target=_read_files,
            args=(paths[slot::count], readahead.bytes_read, slot),
            name=f"tagcap-readahead-{slot}",
            daemon=True,
        )
        thread.start()
        readahead.threads.append(thread)
    return readahead
