"""Progress and the end-of-run summary (stderr, so stdout stays machine-readable)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from tagcap.schemas.records import ShardStats


class RunProgress:
    """Shards done / total with clips/s and ETA."""

    def __init__(self, total_shards: int, already_done: int, enabled: bool = True):
        self.started = time.time()
        self.clips = 0
        self.bar = tqdm(
            total=total_shards,
            initial=already_done,
            unit="shard",
            desc="caption",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def shard_done(self, stats: ShardStats) -> None:
        self.clips += stats.samples_in
        elapsed = max(time.time() - self.started, 1e-9)
        self.bar.set_postfix(clips=self.clips, clips_s=f"{self.clips / elapsed:.1f}", refresh=False)
        self.bar.update(1)

    def shard_failed(self, shard: str, reason: str) -> None:
        self.bar.write(f"shard {shard} failed: {reason}", file=sys.stderr)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
