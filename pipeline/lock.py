"""A lease on an output root, so two runs never interleave their shards.

``OUT/.lock`` names its holder (host, pid, run id) and a heartbeat the holder refreshes
every ``heartbeat_s``. Another run refuses while the lease is live. A lease is dead, and
is taken over, when its heartbeat is older than ``ttl_s`` (a holder on another machine
that vanished) or when its holder ran on this host and that pid is gone (SIGKILL): a dead
run never holds an output forever.

Creation is exclusive on local filesystems (``O_EXCL``); on object stores it is
read-then-write, which leaves a window of one round trip between two runs started at the
same instant.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from tagcap.schemas.layout import OutputLayout
from tagcap.workers.storage import Storage


class OutputLocked(RuntimeError):
    pass


@dataclass
class LeaseInfo:
    host: str
    pid: int
    run_id: str
    started: float
    heartbeat: float


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLease:
    def __init__(self, layout: OutputLayout, storage: Storage, ttl_s: float = 120.0, heartbeat_s: float = 15.0):
        self.url = layout.lock
        self.storage = storage
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self.info = LeaseInfo(socket.gethostname(), os.getpid(), uuid.uuid4().hex, time.time(), time.time())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> LeaseInfo | None:
        try:
            raw = json.loads(self.storage.read_bytes(self.url))
            return LeaseInfo(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None  # a torn or foreign lock file holds nothing

    def _dead(self, other: LeaseInfo) -> bool:
        if time.time() - other.heartbeat > self.ttl_s:
            return True
        return other.host == self.info.host and not _pid_alive(other.pid)

    def _write(self, exclusive: bool) -> bool:
        data = json.dumps(asdict(self.info)).encode()
        fs, path = self.storage.fs(self.url)
        if exclusive and self.storage.is_local(fs):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        self.storage.publish_bytes(data, self.url)
        return True

    def acquire(self) -> None:
        for _ in range(3):
            other = self._read()
            if other is not None and other.run_id != self.info.run_id:
                if not self._dead(other):
                    age = time.time() - other.heartbeat
                    raise OutputLocked(
                        f"output is in use by another run (host {other.host}, pid {other.pid}, "
                        f"heartbeat {age:.0f} s ago); it is released when that run ends, or taken over "
                        f"{self.ttl_s:.0f} s after its last heartbeat"
                    )
                self.storage.remove(self.url)  # a dead run's lease
            if self._write(exclusive=True):
                self._thread = threading.Thread(target=self._beat, name="tagcap-lease", daemon=True)
                self._thread.start()
                return
        raise OutputLocked("could not take the output lease (another run is starting at the same time)")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.info.heartbeat = time.time()
            # A failed beat is retried at the next; the ttl spans several beats.
            with contextlib.suppress(OSError):
                self._write(exclusive=False)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        other = self._read()
        if other is not None and other.run_id == self.info.run_id:
            self.storage.remove(self.url)

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
