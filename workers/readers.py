"""Readers: a work unit's URLs in, raw samples out, in input order.

Two input shapes: WebDataset tars (adjacent members sharing a name stem form one sample:
an audio member and optionally a ``json``) and groups of plain audio files. Readers never
extract to disk and never follow tar links; a member with an absolute or ``..`` path is
reported and skipped. Problems become :class:`RawSample` objects carrying an error, so
they travel on beside the good samples and end as error rows.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import IO

from tagcap.schemas.records import ErrorReason
from tagcap.schemas.work import WorkUnit
from tagcap.workers.audio import AUDIO_EXTENSIONS
from tagcap.workers.storage import Storage

# A member larger than this is not read into memory (10 min of 48 kHz stereo float WAV is
# ~230 MB); it becomes a too_long error row.
MAX_MEMBER_BYTES = 256 * 1024 * 1024

# A tar up to this size is read in one request and its members are sliced out of that
# buffer without a copy each; a larger one (or a compressed one) is streamed. A unit's
# samples are held in memory together anyway (they are joined and decoded as one batch),
# so reading it whole adds only its headers and non-audio members to a task's peak.
WHOLE_TAR_MAX_BYTES = 1 << 30

Blob = bytes | memoryview


@dataclass
class RawSample:
    source: str  # the member stem or file name, for error rows
    members: dict[str, Blob] = field(default_factory=dict)  # extension -> bytes (or a view of the tar's)
    error: tuple[ErrorReason, str] | None = None

    @property
    def audio(self) -> tuple[str, Blob] | None:
        """(extension, bytes) of the first audio member, in a fixed preference order."""
        for ext in AUDIO_EXTENSIONS:
            if ext in self.members:
                return ext, self.members[ext]
        return None


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/Y--PJHxphWEs_30.000_40.000.wav`` -> (``dir/Y--PJHxphWEs_30.000_40.000``, ``wav``).

    Split at the last dot, not the first: clip names in the wild carry dots
    (``<YTID>_30.000_40.000``).
    """
    stem, dot, ext = name.rpartition(".")
    if not dot or "/" in ext:
        return name, ""
    return stem, ext.lower()


def is_unsafe_member(name: str) -> bool:
    return name.startswith("/") or ".." in posixpath.normpath(name).split("/") or "\\" in name


def _tar_members(url: str, storage: Storage) -> Iterator[tuple[tarfile.TarInfo, Callable[[], Blob]]]:
    """Each member's header in archive order, with a function that reads its data (call it
    before asking for the next member: a streamed tar cannot go back).

    A tar that fits is read in one request and its members are views of that buffer; a
    larger one is streamed (why: docs/design/decode-path.md).
    Both raise the same errors for the same bytes: a truncated member's data comes back
    short, and the caller checks every member's length."""
    size = int(storage.info(url).get("size") or 0)
    if 0 < size <= WHOLE_TAR_MAX_BYTES:
        data = storage.read_bytes(url)
        plain = _plain_tar(data)
        if plain is not None:
            view = memoryview(data)
            with plain:
                for member in plain:
                    yield member, partial(_slice, view, member.offset_data, member.size)
            return
        source: IO[bytes] = io.BytesIO(data)
    else:
        source = storage.open_stream(url)
    with source, tarfile.open(fileobj=source, mode="r|*") as streamed:
        for member in streamed:
            yield member, partial(_read_streamed, streamed, member)


def _plain_tar(data: bytes) -> tarfile.TarFile | None:
    """``data`` opened for random access where it is an uncompressed tar: iterating it
    parses the headers and steps over the data. None for anything else (compressed, or no
    tar at all), which the streamed reader then takes: it detects compression and words
    the error for bytes that are no tar."""
    try:
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    except tarfile.ReadError:
        return None


def _slice(view: memoryview, start: int, size: int) -> memoryview:
    return view[start : start + size]  # short where the tar was cut inside this member


def _read_streamed(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fobj = tar.extractfile(member)
    return fobj.read() if fobj is not None else b""


def read_tar(url: str, storage: Storage) -> Iterator[RawSample]:
    """Samples of one WebDataset tar, in archive order."""
    current: RawSample | None = None
    seen_stems: set[str] = set()
    try:
        for member, read_data in _tar_members(url, storage):
            name = member.name
            if member.isdir():
                continue
            if is_unsafe_member(name) or not member.isfile():
                kind = "link" if (member.issym() or member.islnk()) else "path"
                if current is not None:
                    yield current
                    current = None
                yield RawSample(name, error=(ErrorReason.UNSAFE_MEMBER, f"unsafe tar member {kind}: {name!r}"))
                continue
            stem, ext = split_member_name(name)
            if current is not None and current.source != stem:
                yield current
                current = None
            if current is None:
                current = RawSample(stem)
                if stem in seen_stems:
                    current.error = (ErrorReason.DUPLICATE_KEY, f"members of {stem!r} are not adjacent or repeat")
                seen_stems.add(stem)
            if member.size > MAX_MEMBER_BYTES:
                current.error = (ErrorReason.TOO_LONG, f"member {name!r} is {member.size} bytes")
                continue
            data = read_data()
            if len(data) != member.size:
                raise tarfile.ReadError(f"member {name!r} ends after {len(data)} of {member.size} bytes")
            current.members[ext] = data
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        # The tar cannot be read at all: one error row. Transient I/O errors are retried by
        # the stream and, if they persist, fail the whole unit (it is retried, then reported)
        # rather than pass for a truncated tar.
        if current is not None:
            yield current
        yield RawSample(posixpath.basename(url), error=(ErrorReason.UNREADABLE, f"{type(exc).__name__}: {exc}"))
        return
    except (tarfile.TarError, EOFError) as exc:
        truncated = isinstance(exc, (tarfile.ReadError, EOFError)) or "unexpected end" in str(exc)
        if current is not None:
            # The sample being read when the tar broke is incomplete: it fails with the tar.
            current.members.clear()
            current.error = (ErrorReason.TRUNCATED_TAR if truncated else ErrorReason.UNREADABLE, str(exc))
            yield current
            current = None
        else:
            reason = ErrorReason.TRUNCATED_TAR if truncated else ErrorReason.UNREADABLE
            yield RawSample(f"{posixpath.basename(url)}#end", error=(reason, f"{type(exc).__name__}: {exc}"))
    if current is not None:
        yield current


def read_files(urls: tuple[str, ...], storage: Storage) -> Iterator[RawSample]:
    """One sample per audio file."""
    for url in urls:
        stem, ext = split_member_name(posixpath.basename(url))
        try:
            data = storage.read_bytes(url)  # retried; a persisting transient error fails the unit
        except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
            yield RawSample(stem, error=(ErrorReason.UNREADABLE, f"{type(exc).__name__}: {exc}"))
            continue
        yield RawSample(stem, members={ext: data})


def read_unit(unit: WorkUnit, storage: Storage) -> Iterator[RawSample]:
    if unit.kind == "tar":
        return read_tar(unit.urls[0], storage)
    if unit.kind == "files":
        return read_files(unit.urls, storage)
    raise ValueError(f"unknown work unit kind {unit.kind!r}")
