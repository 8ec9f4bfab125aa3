"""All I/O on URLs goes through here: open, list, atomic publish, retry.

Any fsspec URL works (local path, ``file://``, ``s3://``, ``gs://``, ``http(s)://``).
Publishing is atomic on every backend: a local file is written beside its final name and
renamed into place; an object store shows an object only once its upload has completed,
so a crash never leaves a truncated file under a final name.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import fsspec
from fsspec.core import url_to_fs

T = TypeVar("T")

_FORBIDDEN_PROTOCOLS = ("pipe:",)
# Errors a retry cannot fix: the answer will be the same next time.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp creates 0600 files; published files get the permissions open() would give them.
FILE_MODE = _file_mode()


class StorageError(OSError):
    """An I/O operation failed after its retries."""


def check_url(url: str) -> None:
    """Refuse URL forms that would run commands (WebDataset's ``pipe:``)."""
    if url.strip().startswith(_FORBIDDEN_PROTOCOLS):
        raise ValueError(f"refusing {url!r}: pipe: URLs run shell commands")


@dataclass
class Storage:
    """fsspec access with one set of storage options (credentials stay in the environment
    or the user's fsspec config, never in tagcap's files)."""

    options: dict[str, Any] = field(default_factory=dict)
    attempts: int = 4
    base_delay: float = 0.2

    def fs(self, url: str) -> tuple[fsspec.AbstractFileSystem, str]:
        check_url(url)
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        # options are keyed by protocol: {"s3": {"endpoint_url": ...}}
        return url_to_fs(url, **(self.options.get(protocol) or {}))

    @staticmethod
    def is_local(fs: fsspec.AbstractFileSystem) -> bool:
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        return "file" in protocols or "local" in protocols

    def retry(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn``, retrying transient failures with jittered exponential backoff."""
        for attempt in range(self.attempts):
            try:
                return fn()
            except _PERMANENT:
                raise
            except Exception as exc:  # transient: network, throttling, 5xx
                if attempt == self.attempts - 1:
                    raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from exc
                time.sleep(self.base_delay * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    # -- reading -----------------------------------------------------------------
    def read_bytes(self, url: str) -> bytes:
        fs, path = self.fs(url)
        return self.retry(lambda: fs.cat_file(path), f"read {url}")

    def open_read(self, url: str) -> IO[bytes]:
        fs, path = self.fs(url)
        return self.retry(lambda: fs.open(path, "rb"), f"open {url}")

    def open_stream(self, url: str, buffer_size: int = 1 << 20) -> IO[bytes]:
        """A buffered stream that survives transient errors mid-read: a failed read is
        retried on a reopened file at the same offset (a range request on object stores).
        Missing or forbidden files raise at once."""
        return io.BufferedReader(_ResumingReader(self, url), buffer_size=buffer_size)

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode("utf-8-sig")

    def exists(self, url: str) -> bool:
        fs, path = self.fs(url)
        return self.retry(lambda: fs.exists(path), f"stat {url}")

    def info(self, url: str) -> dict[str, Any]:
        fs, path = self.fs(url)
        return self.retry(lambda: fs.info(path), f"stat {url}")

    def list_dir(self, url: str) -> list[dict[str, Any]]:
        """Entries directly under ``url`` (files and folders), with fsspec's details."""
        fs, path = self.fs(url)
        if not self.retry(lambda: fs.exists(path), f"stat {url}"):
            return []
        entries = self.retry(lambda: fs.ls(path, detail=True), f"list {url}")
        return [dict(e, url=self.unstrip(url, path, e["name"])) for e in entries]

    def find(self, url: str) -> list[dict[str, Any]]:
        """All files below ``url`` (recursive), with details."""
        fs, path = self.fs(url)
        found = self.retry(lambda: fs.find(path, detail=True), f"list {url}")
        return [dict(e, url=self.unstrip(url, path, name)) for name, e in sorted(found.items())]

    def glob(self, url: str) -> list[dict[str, Any]]:
        fs, path = self.fs(url)
        found = self.retry(lambda: fs.glob(path, detail=True), f"glob {url}")
        return [dict(e, url=self.unstrip(url, path, name)) for name, e in sorted(found.items())]

    @staticmethod
    def unstrip(url: str, path: str, name: str) -> str:
        """Turn a path fsspec returned back into a URL of the same form as ``url``."""
        if "://" in url:
            protocol = url.split("://", 1)[0]
            return f"{protocol}://{name.split('://', 1)[-1]}"
        return name

    # -- writing -----------------------------------------------------------------
    def makedirs(self, url: str) -> None:
        fs, path = self.fs(url)
        if self.is_local(fs):
            os.makedirs(path, exist_ok=True)

    def publish_bytes(self, data: bytes, url: str) -> None:
        """Write ``data`` to ``url`` atomically."""
        fs, path = self.fs(url)
        if self.is_local(fs):
            directory = os.path.dirname(path) or "."
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".part", dir=directory)
            try:
                os.fchmod(fd, FILE_MODE)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                _unlink_quietly(tmp)
                raise
            return
        self.retry(lambda: fs.pipe_file(path, data), f"write {url}")

    def publish_file(self, local_path: str, url: str) -> None:
        """Move/upload a finished local file to ``url`` atomically. ``local_path`` is
        consumed (renamed or deleted)."""
        fs, path = self.fs(url)
        try:
            if self.is_local(fs):
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(local_path, "rb") as fh:
                    os.fsync(fh.fileno())
                os.chmod(local_path, FILE_MODE)
                os.replace(local_path, path)  # same filesystem: spool lives under OUT/.tmp
                return
            self.retry(lambda: fs.put_file(local_path, path), f"upload {url}")
        finally:
            _unlink_quietly(local_path)

    def remove(self, url: str) -> None:
        fs, path = self.fs(url)
        with contextlib.suppress(FileNotFoundError):
            self.retry(lambda: fs.rm_file(path), f"remove {url}")

    def spool_dir(self, spool_url: str) -> str:
        """A local folder for files being written before publish: ``spool_url`` itself when
        it is local (inside the output root, so publish is a rename), else the system temp
        folder."""
        fs, path = self.fs(spool_url)
        if self.is_local(fs):
            os.makedirs(path, exist_ok=True)
            return path
        return tempfile.gettempdir()


class _ResumingReader(io.RawIOBase):
    def __init__(self, storage: Storage, url: str):
        self.storage, self.url, self.pos = storage, url, 0
        self.fh = storage.open_read(url)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        for attempt in range(self.storage.attempts):
            try:
                data = self.fh.read(len(buffer))
                break
            except _PERMANENT:
                raise
            except Exception as exc:
                if attempt == self.storage.attempts - 1:
                    raise StorageError(f"read {self.url} at byte {self.pos}: {type(exc).__name__}: {exc}") from exc
                time.sleep(self.storage.base_delay * (2**attempt) * (0.5 + random.random()))
                with contextlib.suppress(Exception):
                    self.fh.close()
                self.fh = self.storage.open_read(self.url)
                self.fh.seek(self.pos)
        n = len(data)
        buffer[:n] = data
        self.pos += n
        return n

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.fh.close()
        super().close()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
