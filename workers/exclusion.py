"""Exclusion lists (``tagcap caption --exclude FILE``): clips a corpus must not contain, such
as the evaluation sets of the benchmarks its users report on.

A list is recognised by its header:

* the AudioCaps CSVs (``audiocap_id,youtube_id,start_time,caption``);
* the MusicCaps CSV (``ytid,start_s,end_s,...``);
* the VGGSound CSV (no header: ``ytid,start_seconds,label,split`` rows);
* an AudioSet segment CSV, in either shape (Google's ``# YTID, start_seconds, ...`` or a
  plain ``YTID,start_seconds,...`` header);
* ESC-50's metadata (``filename,fold,target,category,esc10,src_file,take``: ``src_file`` is
  the Freesound id) and Clotho's (``sound_id``: Freesound ids; or its captions files,
  ``file_name,caption_1,...``: file names);
* otherwise a plain list, one YouTube id or sample key (``Y<ytid>_<ms>``) per line.

Matching (:class:`Exclusions`): by default a clip is excluded when its YouTube *video* is on
a list, since other segments of one video are near copies of the scene; ``segment`` narrows it
to the exact (video, start). Sample keys on a plain list always match their own segment.
Freesound ids match an input whose sample JSON carries ``freesound_id`` or whose file is
named as ESC-50's are (``<fold>-<freesound id>-<take>-<target>``); Clotho file names match
the input file's name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from tagcap.schemas.keys import parse_key
from tagcap.workers.storage import Storage, check_url

MATCH_MODES = ("video", "segment")
_YTID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_GOOGLE_HEADER = re.compile(r"^#\s*YTID\s*,", re.IGNORECASE)
_ESC50_NAME = re.compile(r"^\d+-(?P<fs>\d+)-[A-Z]-\d+$")


@dataclass(frozen=True)
class ExclusionList:
    """One list, parsed: what it names, by kind of id."""

    name: str  # the file's name, given in each excluded clip's error detail
    url: str
    sha256: str
    kind: str  # audiocaps | musiccaps | vggsound | audioset | esc50 | clotho | ids
    segments: frozenset[tuple[str, int]] = frozenset()  # (YouTube id, start ms)
    freesound: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()  # file names without their extension

    @property
    def videos(self) -> frozenset[str]:
        return frozenset(ytid for ytid, _ in self.segments)

    def describe(self) -> dict[str, Any]:
        """What the manifest records of the list."""
        return {"name": self.name, "url": self.url, "sha256": self.sha256, "kind": self.kind,
                "entries": len(self.segments) + len(self.freesound) + len(self.files)}  # fmt: skip


def _ms(seconds: str) -> int:
    return round(float(seconds) * 1000)


def _rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text)) if row]


def parse_exclusion(data: bytes, url: str) -> ExclusionList:
    """The list in ``data`` (the bytes of the file at ``url``); ValueError naming the file
    where it holds nothing a list can name."""
    name = posixpath.basename(url.rstrip("/")) or url
    sha = hashlib.sha256(data).hexdigest()
    text = data.decode("utf-8-sig", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    # Google's segment CSVs open with comment lines before their "# YTID, ..." header.
    while lines and lines[0].startswith("#") and not _GOOGLE_HEADER.match(lines[0]):
        lines.pop(0)
    if not lines:
        raise ValueError(f"exclusion list {url} is empty")
    header = [h.strip().lstrip("#").strip().lower() for h in next(csv.reader([lines[0]]))]
    body = "\n".join(lines[1:])
    kind, segments, freesound, files = "ids", set(), set(), set()
    if "youtube_id" in header and "start_time" in header:
        kind = "audiocaps"
        y, s = header.index("youtube_id"), header.index("start_time")
        segments = {(r[y], _ms(r[s])) for r in _rows(body) if len(r) > max(y, s)}
    elif header[:2] == ["ytid", "start_s"]:
        kind = "musiccaps"
        segments = {(r[0], _ms(r[1])) for r in _rows(body) if len(r) > 1}
    elif "src_file" in header and "filename" in header:
        kind = "esc50"
        f = header.index("src_file")
        freesound = {r[f] for r in _rows(body) if len(r) > f}
    elif "sound_id" in header:
        kind = "clotho"
        f = header.index("sound_id")
        freesound = {r[f] for r in _rows(body) if len(r) > f}
    elif header and header[0] == "file_name":
        kind = "clotho"
        files = {posixpath.splitext(r[0])[0] for r in _rows(body) if r}
    elif header[:2] == ["ytid", "start_seconds"]:
        kind = "audioset"
        segments = {(r[0], _ms(r[1])) for r in _rows(body) if len(r) > 1 and not r[0].startswith("#")}
    else:
        segments, kind = _plain_or_vggsound(lines, url)
    if not (segments or freesound or files):
        raise ValueError(f"exclusion list {url} ({kind}) names no clip")
    return ExclusionList(name, url, sha, kind, frozenset(segments), frozenset(freesound), frozenset(files))


def _plain_or_vggsound(lines: list[str], url: str) -> tuple[set[tuple[str, int]], str]:
    """VGGSound's headerless ``ytid,start,label,split`` rows, or one id or key per line. An id
    alone names the whole video: it is kept with start -1 (which no segment has)."""
    rows = _rows("\n".join(lines))
    if rows and all(len(r) >= 4 and _YTID.match(r[0]) and r[1].lstrip("-").isdigit() for r in rows[:20]):
        return {(r[0], int(r[1]) * 1000) for r in rows}, "vggsound"
    segments = set()
    for number, row in enumerate(rows, 1):
        entry = row[0]
        if entry.startswith("#"):
            continue
        try:
            key = parse_key(entry)
            segments.add((key.ytid, key.start_ms if key.start_ms is not None else -1))
            continue
        except ValueError:
            pass
        if not _YTID.match(entry):
            raise ValueError(f"exclusion list {url} line {number}: {entry!r} is neither a YouTube id nor a sample key")
        segments.add((entry, -1))
    return segments, "ids"


@dataclass
class Exclusions:
    """Every list of a run, and how they match (``video`` or ``segment``)."""

    lists: list[ExclusionList] = field(default_factory=list)
    match: str = "video"

    def __post_init__(self) -> None:
        if self.match not in MATCH_MODES:
            raise ValueError(f"--exclude-match must be one of {', '.join(MATCH_MODES)}, got {self.match!r}")
        self._videos = [(lst.name, lst.videos) for lst in self.lists]
        self._segments = [(lst.name, lst.segments) for lst in self.lists]
        self._freesound = [(lst.name, lst.freesound, lst.files) for lst in self.lists]

    def __bool__(self) -> bool:
        return bool(self.lists)

    @property
    def by_file(self) -> bool:
        """Whether a list names Freesound ids or file names (a clip's JSON is then read)."""
        return any(lst.freesound or lst.files for lst in self.lists)

    def why(self, ytid: str, start_ms: int, source: str = "", meta: dict[str, Any] | None = None) -> str | None:
        """The name of the first list that excludes this clip, or None."""
        for name, segments in self._segments:
            if (ytid, start_ms) in segments or (ytid, -1) in segments:
                return name
        if self.match == "video":
            for name, videos in self._videos:
                if ytid in videos:
                    return name
        stem = posixpath.splitext(posixpath.basename(source))[0]
        found = _ESC50_NAME.match(stem)
        freesound_id = str((meta or {}).get("freesound_id") or (found["fs"] if found else ""))
        for name, freesound, files in self._freesound:
            if (freesound_id and freesound_id in freesound) or (stem and stem in files):
                return name
        return None

    def excludes_key(self, key: str) -> bool:
        """Whether a sample key (``Y<ytid>_<ms>``) is excluded; a key of another shape is
        excluded only where a list names it as it is."""
        try:
            clip = parse_key(key)
        except ValueError:
            return False
        return self.why(clip.ytid, clip.start_ms or 0) is not None


def load_exclusions(urls: list[str], storage: Storage, match: str = "video") -> Exclusions:
    """Read and parse every list; a ValueError naming a list that is missing or names no
    clip (the file is read whole: lists are small)."""
    lists = []
    for url in urls:
        check_url(url)
        try:
            data = storage.read_bytes(url)
        except FileNotFoundError:
            raise ValueError(f"exclusion list not found: {url}") from None
        except OSError as exc:
            raise ValueError(f"exclusion list cannot be read: {url}: {exc}") from None
        lists.append(parse_exclusion(data, url))
    return Exclusions(lists, match)
