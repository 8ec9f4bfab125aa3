"""What is already under an output root: committed shards, the manifest, sizes.json.

A shard is committed when its stats file exists (the writer publishes it last) and its
tar exists. Everything here derives from the files themselves, so a crash between two
writes can never leave the bookkeeping out of step with the shards.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.manifest import RunManifest
from tagcap.schemas.records import ShardStats
from tagcap.workers.storage import Storage


def committed_shards(layout: OutputLayout, storage: Storage) -> set[str]:
    """Shards with both a stats file and a tar: one listing of the root, no per-shard I/O."""
    names = {e["url"].rsplit("/", 1)[-1] for e in storage.list_dir(layout.root)}
    done = set()
    for name in names:
        shard = OutputLayout.shard_from_stats_name(name)
        if shard is not None and f"{shard}.tar" in names:
            done.add(shard)
    return done


def read_stats(layout: OutputLayout, storage: Storage, shards: set[str]) -> dict[str, ShardStats]:
    def one(shard: str) -> tuple[str, ShardStats]:
        return shard, ShardStats.from_json_bytes(storage.read_bytes(layout.stats(shard)))

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(pool.map(one, sorted(shards)))


def read_manifest(layout: OutputLayout, storage: Storage) -> RunManifest | None:
    try:
        return RunManifest.from_json_bytes(storage.read_bytes(layout.manifest))
    except FileNotFoundError:
        return None


def write_manifest(layout: OutputLayout, storage: Storage, manifest: RunManifest) -> None:
    storage.publish_bytes(manifest.to_json_bytes(), layout.manifest)


def write_sizes(layout: OutputLayout, storage: Storage, stats: dict[str, ShardStats]) -> None:
    """``sizes.json`` as LAION-CLAP and open_clip read it: tar name -> sample count."""
    sizes = {f"{shard}.tar": s.written for shard, s in sorted(stats.items())}
    storage.publish_bytes(json.dumps(sizes, indent=1).encode(), layout.sizes)
