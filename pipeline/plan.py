"""Planning: input URLs -> sorted work units -> deterministic shard names.

Input forms (any fsspec URL, several may be given):

* a brace pattern ``shards/{000000..000099}.tar``;
* a glob ``shards/*.tar``;
* a list file: ``@list.txt`` or a URL ending ``.txt``/``.list``, one URL per line;
* a folder or bucket prefix, listed recursively;
* a single ``.tar`` or audio file.

Tars become one work unit each; audio files are grouped, after sorting, into units of
``files_per_shard``. Units are numbered tars first, then file groups, each in sorted URL
order, so a shard's content never depends on scheduling or on listing order.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

import braceexpand

from tagcap.schemas.layout import shard_name
from tagcap.schemas.manifest import InputFingerprint
from tagcap.schemas.work import WorkUnit
from tagcap.workers.audio import AUDIO_EXTENSIONS
from tagcap.workers.storage import Storage

_GLOB_CHARS = set("*?[")


class PlanError(ValueError):
    """The input cannot be planned (missing, empty, unsupported): fail before any work."""


@dataclass(frozen=True)
class InputFile:
    url: str
    size: int | None
    etag: str | None


@dataclass
class Plan:
    units: list[WorkUnit]
    fingerprint: InputFingerprint


def _kind(url: str) -> str | None:
    ext = url.rsplit(".", 1)[-1].lower() if "." in posixpath.basename(url) else ""
    if ext == "tar":
        return "tar"
    if ext in AUDIO_EXTENSIONS:
        return "audio"
    return None


def _entry(e: dict) -> InputFile:
    etag = e.get("ETag") or e.get("etag") or e.get("md5Hash")
    size = e.get("size")
    return InputFile(e["url"], int(size) if size is not None else None, str(etag).strip('"') if etag else None)


def _stat_many(urls: Iterable[str], storage: Storage) -> list[InputFile]:
    """Size/etag for explicit URLs, listing each parent folder once rather than one request
    per file (a 100k-shard brace pattern is 100k HEADs otherwise)."""
    by_parent: dict[str, list[str]] = {}
    for url in urls:
        by_parent.setdefault(url.rsplit("/", 1)[0] if "/" in url else ".", []).append(url)
    out: list[InputFile] = []
    for parent, members in by_parent.items():
        listing = {}
        if len(members) > 1:
            listing = {_norm(e["url"]): e for e in storage.list_dir(parent) if e.get("type") != "directory"}
        for url in members:
            entry = listing.get(_norm(url))
            if entry is None:
                try:
                    entry = dict(storage.info(url), url=url)
                except FileNotFoundError:
                    raise PlanError(f"input not found: {url}") from None
            out.append(_entry(dict(entry, url=url)))
    return out


def _norm(url: str) -> str:
    return url.split("://", 1)[-1].lstrip("/").removeprefix("./")


def expand_inputs(patterns: list[str], storage: Storage) -> list[InputFile]:
    files: list[InputFile] = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern:
            continue
        if pattern.startswith("@") or pattern.endswith((".txt", ".list")):
            list_url = pattern.removeprefix("@")
            try:
                lines = storage.read_text(list_url).splitlines()
            except FileNotFoundError:
                raise PlanError(f"input list not found: {list_url}") from None
            files.extend(expand_inputs([ln for ln in lines if ln.strip() and not ln.startswith("#")], storage))
        elif "{" in pattern and ".." in pattern:
            files.extend(_stat_many(braceexpand.braceexpand(pattern), storage))
        elif _GLOB_CHARS & set(pattern.split("://", 1)[-1]):
            found = [e for e in storage.glob(pattern) if e.get("type") != "directory"]
            if not found:
                raise PlanError(f"no input matches {pattern}")
            files.extend(_entry(e) for e in found)
        else:
            try:
                info = storage.info(pattern)
            except FileNotFoundError:
                raise PlanError(f"input not found: {pattern}") from None
            if info.get("type") == "directory":
                found = [e for e in storage.find(pattern) if _kind(e["url"])]
                if not found:
                    raise PlanError(f"no .tar or audio files under {pattern}")
                files.extend(_entry(e) for e in found)
            else:
                files.append(_entry(dict(info, url=pattern)))
    return files


def plan_units(patterns: list[str], storage: Storage, files_per_shard: int) -> Plan:
    files = expand_inputs(patterns, storage)
    if not files:
        raise PlanError("the input list is empty")
    unsupported = [f.url for f in files if _kind(f.url) is None]
    if unsupported:
        raise PlanError(f"unsupported input file type: {unsupported[0]} (expected .tar or audio)")
    dedup = {f.url: f for f in files}
    ordered = [dedup[u] for u in sorted(dedup)]
    tars = [f.url for f in ordered if _kind(f.url) == "tar"]
    audio = [f.url for f in ordered if _kind(f.url) == "audio"]
    units: list[WorkUnit] = []
    for url in tars:
        units.append(WorkUnit(len(units), shard_name(len(units)), "tar", (url,)))
    for start in range(0, len(audio), files_per_shard):
        group = tuple(audio[start : start + files_per_shard])
        units.append(WorkUnit(len(units), shard_name(len(units)), "files", group))
    fingerprint = InputFingerprint(
        urls=[f.url for f in ordered], sizes=[f.size for f in ordered], etags=[f.etag for f in ordered]
    )
    return Plan(units, fingerprint)
