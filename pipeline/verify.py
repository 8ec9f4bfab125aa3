"""``tagcap verify OUT``: every committed shard checked against its stats file, and the files
that describe the corpus checked against each other.

Per shard with a stats file (the completion marker): its tar is there; its size is the
``tar_bytes`` its stats recorded; its digest (xxh3-128, or sha256 in stats written before
2026-12-04) and its member count are those recorded at write time (stats written before
tagcap recorded them are checked by size alone); its index holds
``written`` rows; ``sizes.json`` gives it ``written`` samples. Listing sizes come free from
the store's listing (on S3 too), so :func:`damaged_by_size` is cheap enough for every resume.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field

import pyarrow.parquet as pq
import xxhash

from tagcap.pipeline.outputs import committed_shards, read_stats
from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.records import ShardStats
from tagcap.workers.storage import Storage

_CHUNK = 8 << 20


@dataclass
class VerifyReport:
    shards: int = 0
    damaged: dict[str, list[str]] = field(default_factory=dict)  # shard -> what is wrong
    problems: list[str] = field(default_factory=list)  # the corpus's own files

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


def _listing(layout: OutputLayout, storage: Storage) -> dict[str, int]:
    """Name -> size of every file directly under the root, from one fresh listing (not one
    an earlier call of this process cached)."""
    fs, path = storage.fs(layout.root)
    fs.invalidate_cache(path)
    return {e["url"].rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in storage.list_dir(layout.root)}


def damaged_by_size(layout: OutputLayout, storage: Storage, stats: dict[str, ShardStats]) -> dict[str, str]:
    """The committed shards whose tar is missing or not the size their stats recorded."""
    sizes = _listing(layout, storage)
    out = {}
    for shard, s in stats.items():
        size = sizes.get(f"{shard}.tar")
        if size is None:
            out[shard] = "its tar is missing"
        elif s.tar_bytes and size != s.tar_bytes:
            out[shard] = f"its tar is {size} bytes, its stats say {s.tar_bytes}"
    return out


class _Hashing:
    """A file read front to back, hashing what passes through."""

    def __init__(self, fh, algorithm: str):
        self.fh = fh
        self.digest = xxhash.xxh3_128() if algorithm == "xxh3-128" else hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        return data


def _tar_digest_and_members(storage: Storage, url: str, algorithm: str) -> tuple[str, int]:
    """The tar's digest by ``algorithm`` (``xxh3-128`` or ``sha256``) and its file member
    count, in one sequential read."""
    with storage.open_read(url) as fh:
        hashing = _Hashing(fh, algorithm)
        with tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
            members = sum(1 for m in tar if m.isfile())
        while hashing.read(_CHUNK):  # the end blocks tarfile stops short of
            pass
    return hashing.digest.hexdigest(), members


def verify_output(url: str, storage: Storage) -> VerifyReport:
    layout = OutputLayout(url)
    report = VerifyReport()
    names = _listing(layout, storage)
    stats_names = [n for n in names if OutputLayout.shard_from_stats_name(n)]
    shards = {str(OutputLayout.shard_from_stats_name(n)) for n in stats_names}
    stats = read_stats(layout, storage, shards)
    report.shards = len(stats)
    damage: dict[str, list[str]] = {}
    for shard, why in damaged_by_size(layout, storage, stats).items():
        damage.setdefault(shard, []).append(why)
    try:
        sizes = json.loads(storage.read_bytes(layout.sizes))
    except FileNotFoundError:
        sizes = None
        report.problems.append("sizes.json is missing")
    for shard, s in sorted(stats.items()):
        if shard in damage:
            continue
        tar = layout.tar(shard)
        algorithm, recorded = s.tar_digest or ("xxh3-128", "")
        try:
            digest, members = _tar_digest_and_members(storage, tar, algorithm)
        except (OSError, tarfile.TarError) as exc:
            damage.setdefault(shard, []).append(f"its tar cannot be read: {exc}")
            continue
        if recorded and digest != recorded:
            damage.setdefault(shard, []).append(
                f"its tar's {algorithm} is {digest[:12]}, its stats say {recorded[:12]}"
            )
        if s.tar_members and members != s.tar_members:
            damage.setdefault(shard, []).append(f"its tar has {members} members, its stats say {s.tar_members}")
        try:
            with storage.open_read(layout.index(shard)) as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
            if rows != s.written:
                damage.setdefault(shard, []).append(f"its index has {rows} rows, its stats say {s.written} written")
        except (OSError, ValueError) as exc:
            damage.setdefault(shard, []).append(f"its index cannot be read: {exc}")
        if sizes is not None and sizes.get(f"{shard}.tar") != s.written:
            damage.setdefault(shard, []).append(
                f"sizes.json gives it {sizes.get(f'{shard}.tar')}, its stats say {s.written} written"
            )
    if sizes is not None:
        extra = sorted(set(sizes) - {f"{shard}.tar" for shard in stats})
        if extra:
            report.problems.append(f"sizes.json names shards with no stats: {', '.join(extra[:5])}")
    report.damaged = dict(sorted(damage.items()))
    return report


def committed_and_whole(layout: OutputLayout, storage: Storage) -> tuple[set[str], dict[str, str]]:
    """For a resume: the committed shards whose tar is the size their stats recorded, and
    the others with why (each is redone)."""
    done = committed_shards(layout, storage)
    if not done:
        return done, {}
    damaged = damaged_by_size(layout, storage, read_stats(layout, storage, done))
    return done - set(damaged), damaged
