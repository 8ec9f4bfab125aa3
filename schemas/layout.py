"""The output layout: the one place that names the files under an output root.

The shard writer and the resume scan both use it, so what one writes is what the other
looks for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SHARD_DIGITS = 6
_SHARD_RE = re.compile(rf"^(\d{{{SHARD_DIGITS}}})\.stats\.json$")


def shard_name(index: int) -> str:
    """``000123`` for work unit 123 in sorted input order."""
    if index < 0 or index >= 10**SHARD_DIGITS:
        raise ValueError(f"shard index out of range: {index}")
    return f"{index:0{SHARD_DIGITS}d}"


def join_url(root: str, *parts: str) -> str:
    """Join URL path parts with '/', whatever the protocol (local paths included)."""
    out = root.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


@dataclass(frozen=True)
class OutputLayout:
    """Where each output of a run lives, relative to its root URL.

    ::

        manifest.json  sizes.json  000000.tar  000000.stats.json
        index/000000.parquet  errors/000000.parquet  .tmp/  .lock
    """

    root: str

    @property
    def manifest(self) -> str:
        return join_url(self.root, "manifest.json")

    @property
    def sizes(self) -> str:
        return join_url(self.root, "sizes.json")

    @property
    def lock(self) -> str:
        return join_url(self.root, ".lock")

    @property
    def tmp_dir(self) -> str:
        return join_url(self.root, ".tmp")

    @property
    def dedupe_summary(self) -> str:
        """What ``tagcap dedupe`` found, seen from this corpus."""
        return join_url(self.root, "dedupe", "summary.json")

    @property
    def caption_eval(self) -> str:
        """``tagcap eval captions``' scores of this corpus against human references."""
        return join_url(self.root, "eval", "captions.json")

    def tar(self, shard: str) -> str:
        return join_url(self.root, f"{shard}.tar")

    def stats(self, shard: str) -> str:
        return join_url(self.root, f"{shard}.stats.json")

    def index(self, shard: str) -> str:
        return join_url(self.root, "index", f"{shard}.parquet")

    def errors(self, shard: str) -> str:
        return join_url(self.root, "errors", f"{shard}.parquet")

    @staticmethod
    def shard_from_stats_name(name: str) -> str | None:
        """The shard a ``*.stats.json`` file name belongs to, or None for other files."""
        match = _SHARD_RE.match(name.rsplit("/", 1)[-1])
        return match.group(1) if match else None
