"""Duplicate groups among clips: exact (same PCM digest) and near (same recording, by
fingerprint).

Near duplicates are found in two steps, so that the work grows with the clips and not with
their pairs: clips that share a few exact 32-bit frame values (a re-encoded or shifted copy
shares dozens; unrelated audio almost none) are proposed by one sort of every clip's distinct
values, and each proposed pair is confirmed by the bit error rate of the two fingerprints at
their best alignment (:func:`tagcap.workers.fingerprint.bit_error_rate`). Groups are the
connected components of exact and confirmed pairs; each keeps its first clip in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tagcap.schemas.dedupe import ClipRef, DuplicateGroup
from tagcap.workers.fingerprint import FP_RATE, HOP, Fingerprint, bit_error_rate


@dataclass(frozen=True)
class NearDuplicateSettings:
    """Thresholds of the near-duplicate search (``docs/design/deduplication.md`` has the
    planted-set measurements they come from): clips are proposed as a pair when they share
    at least ``min_shared_frames`` exact 32-bit frame values, each held by at most
    ``max_clips_per_value`` clips (a value many clips hold proposes nothing), and confirmed
    when their bit error rate over ``min_overlap_s`` of audible frames is at most
    ``max_bit_error_rate``."""

    max_bit_error_rate: float = 0.25
    min_shared_frames: int = 3
    max_clips_per_value: int = 64
    min_overlap_s: float = 2.0

    def describe(self) -> dict[str, float | int]:
        return asdict(self)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the root is the group's first clip


def shared_frame_pairs(fingerprints: Sequence[Fingerprint | None], settings: NearDuplicateSettings) -> np.ndarray:
    """(pairs, 2) int64 ``i < j`` of clips sharing at least ``min_shared_frames`` distinct
    audible frame values, by one in-place sort of every (value, clip) packed in 8 bytes
    (a clip's distinct values are about 500 for 10 s: some 400 MB a 100k clips)."""
    packed = []
    for i, fp in enumerate(fingerprints):
        if fp is not None:
            packed.append((np.unique(fp.bits[fp.audible]).astype(np.uint64) << np.uint64(32)) | np.uint64(i))
    if not packed:
        return np.zeros((0, 2), np.int64)
    keys = np.concatenate(packed)
    del packed
    keys.sort()  # by value, then by clip
    value = keys >> np.uint64(32)
    owner = (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)
    del keys
    starts = np.flatnonzero(np.r_[True, value[1:] != value[:-1]])
    sizes = np.diff(np.r_[starts, len(value)])
    n = len(fingerprints)
    codes = []
    for size in range(2, settings.max_clips_per_value + 1):
        groups = starts[sizes == size]
        if len(groups) == 0:
            continue
        members = owner[groups[:, None] + np.arange(size)[None, :]]  # (groups, size), ascending
        a, b = np.triu_indices(size, 1)
        codes.append((members[:, a] * n + members[:, b]).ravel())
    if not codes:
        return np.zeros((0, 2), np.int64)
    pair, count = np.unique(np.concatenate(codes), return_counts=True)
    pair = pair[count >= settings.min_shared_frames]
    return np.stack([pair // n, pair % n], axis=1)


def confirmed_pairs(
    fingerprints: Sequence[Fingerprint | None], pairs: np.ndarray, settings: NearDuplicateSettings
) -> list[tuple[int, int, float]]:
    """The candidate pairs whose fingerprints match, with their bit error rate."""
    overlap = int(settings.min_overlap_s * FP_RATE / HOP)
    out = []
    for i, j in pairs.tolist():
        a, b = fingerprints[i], fingerprints[j]
        if a is None or b is None:
            continue
        need = min(overlap, a.audible_frames // 2, b.audible_frames // 2)
        if need < 1:
            continue
        ber = bit_error_rate(a, b, need)
        if ber <= settings.max_bit_error_rate:
            out.append((i, j, round(ber, 4)))
    return out


def duplicate_groups(
    refs: Sequence[ClipRef],
    digests: Sequence[str | None],
    fingerprints: Sequence[Fingerprint | None] | None,
    settings: NearDuplicateSettings | None = None,
    propose: Callable[[Sequence[Fingerprint | None], NearDuplicateSettings], np.ndarray] = shared_frame_pairs,
) -> list[DuplicateGroup]:
    """Groups of two or more of ``refs`` (distinct clips, in input order): same digest, or
    (where ``fingerprints`` are given) confirmed near duplicates among the pairs
    ``propose`` gives ((pairs, 2) indices ``i < j``; a benchmark swaps in other proposers)."""
    settings = settings or NearDuplicateSettings()
    n = len(refs)
    uf = _UnionFind(n)
    first_of: dict[str, int] = {}
    for i, digest in enumerate(digests):
        if digest is None:
            continue
        j = first_of.setdefault(digest, i)
        if j != i:
            uf.union(j, i)
    worst: dict[int, float] = {}
    near_links: list[tuple[int, int, float]] = []
    if fingerprints is not None:
        pairs = propose(fingerprints, settings)
        pairs = pairs[[uf.find(int(i)) != uf.find(int(j)) for i, j in pairs]] if len(pairs) else pairs
        near_links = confirmed_pairs(fingerprints, pairs, settings)
        for i, j, _ in near_links:
            uf.union(i, j)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(uf.find(i), []).append(i)
    for i, _, ber in near_links:
        root = uf.find(i)
        worst[root] = max(worst.get(root, 0.0), ber)
    groups = []
    for root, idx in sorted(members.items()):
        if len(idx) < 2:
            continue
        kind = "near" if root in worst else "exact"
        groups.append(DuplicateGroup(kind, refs[idx[0]], tuple(refs[k] for k in idx[1:]), worst.get(root)))
    return groups
