"""Records of ``tagcap dedupe``: the fingerprints of one shard (from a Ray task to the
driver), the duplicate groups found, and the summary each corpus keeps under
``OUT/dedupe/summary.json`` (which ``tagcap inspect`` reports)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ShardFingerprints:
    """Fingerprints of one shard's clips, concatenated: clip ``i`` has frames
    ``offsets[i]:offsets[i + 1]`` of ``bits`` and ``audible``."""

    corpus: int  # position of the corpus among the command's inputs
    shard: str
    keys: list[str]
    bits: np.ndarray  # (frames,) uint32
    audible: np.ndarray  # (frames,) bool
    offsets: np.ndarray  # (clips + 1,) int64
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (key, why) not fingerprinted


@dataclass(frozen=True)
class ClipRef:
    """A clip of one of the corpora: which corpus, which shard, which key."""

    corpus: int
    shard: str
    key: str


@dataclass(frozen=True)
class DuplicateGroup:
    """Clips found to be one recording: ``kept`` stays, ``dropped`` go on the key list.

    ``kind`` is ``exact`` when every member decodes to the same PCM, else ``near``;
    ``bit_error_rate`` is the worst fingerprint match that joined the group (None for exact)."""

    kind: str
    kept: ClipRef
    dropped: tuple[ClipRef, ...]
    bit_error_rate: float | None = None

    def to_json(self, corpora: list[str]) -> dict[str, Any]:
        def ref(c: ClipRef) -> dict[str, str]:
            return {"corpus": corpora[c.corpus], "shard": c.shard, "key": c.key}

        return {
            "kind": self.kind,
            "kept": ref(self.kept),
            "dropped": [ref(c) for c in self.dropped],
            "bit_error_rate": self.bit_error_rate,
        }


@dataclass
class DedupeSummary:
    """``OUT/dedupe/summary.json``: what one ``tagcap dedupe`` found, seen from one corpus."""

    corpora: list[str]  # every corpus the command compared, in order
    clips: int  # distinct keys over all corpora
    clips_here: int  # distinct keys of this corpus
    exact_groups: int
    exact_dropped: int
    near_groups: int
    near_dropped: int
    dropped_here: int  # keys of this corpus on the key list
    keys_url: str
    groups_url: str
    shared_keys: int  # keys present in more than one corpus (one clip, not a duplicate)
    without_digest: int  # clips whose index has no PCM digest (written before tagcap kept one)
    not_fingerprinted: int  # clips with no stored audio, or whose audio did not decode
    method: dict[str, Any]  # the fingerprint and thresholds used
    created: str
