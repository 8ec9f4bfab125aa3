"""What a finished (or partly finished) output root holds: the numbers behind ``tagcap inspect``.

Everything is read from the run's own files, never from the tars: the manifest, the per-shard
stats files (counts and the commit time of each shard), ``index/*.parquet`` (captions, tags,
scores of every written sample) and ``errors/*.parquet`` (one row per failed sample). Index
and error files are read one shard at a time and only the columns needed, so the driver holds
counters, the vocabulary and one float per score, not the corpus. Only committed shards count:
a shard still in flight has no stats file yet, and its parquet files (if any) are ignored.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tagcap.pipeline.outputs import committed_shards, read_manifest, read_stats
from tagcap.schemas.audioset import LabelMap
from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.records import ShardStats
from tagcap.workers.storage import Storage

_WORD = re.compile(r"[\w']+")
TOP_TAGS = 25


@dataclass
class ScoreSummary:
    """One score column (``logprob`` or ``clap_score``): quantiles and a fixed-bin histogram."""

    count: int
    min: float | None = None
    p10: float | None = None
    median: float | None = None
    p90: float | None = None
    max: float | None = None
    bin_edges: list[float] = field(default_factory=list)
    bin_counts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, values: np.ndarray, bins: int = 30) -> ScoreSummary:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return cls(count=0)
        counts, edges = np.histogram(values, bins=bins)
        q = np.quantile(values, [0.1, 0.5, 0.9])
        return cls(
            count=int(values.size),
            min=float(values.min()),
            p10=float(q[0]),
            median=float(q[1]),
            p90=float(q[2]),
            max=float(values.max()),
            bin_edges=[float(e) for e in edges],
            bin_counts=[int(c) for c in counts],
        )


@dataclass
class ThroughputPoint:
    """One committed shard, in commit order: seconds since the first commit and clips so far."""

    seconds: float
    clips_total: int


@dataclass
class CorpusSummary:
    output: str
    captioner: str | None
    status: str | None
    shards_total: int | None  # from the manifest: None where there is none
    shards_committed: int
    samples_in: int
    samples_written: int
    samples_failed: int
    errors_by_reason: dict[str, int]
    errors_by_stage: dict[str, int]
    captions_per_clip: dict[int, int]  # number of captions -> clips
    caption_words: dict[int, int]  # words in a caption -> captions
    captions_total: int
    distinct_captions: int
    vocabulary_size: int
    top_tags: list[tuple[str, int]]
    tags_seen: int
    label_classes: int | None  # classes in the run's label map, where it can still be read
    tag_coverage: float | None  # tags_seen / label_classes
    scores: dict[str, ScoreSummary]  # "logprob", "clap_score"
    throughput: list[ThroughputPoint]
    clips_per_second: float | None  # overall, from the first to the last commit
    dedupe: dict[str, Any] | None = None  # OUT/dedupe/summary.json, where tagcap dedupe ran
    caption_quality: dict[str, Any] | None = None  # OUT/eval/captions.json, where tagcap eval captions ran

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["top_tags"] = [[tag, n] for tag, n in self.top_tags]
        return out


class _Accumulator:
    """Running counters over index files; one instance per summary."""

    def __init__(self) -> None:
        self.captions_per_clip: Counter[int] = Counter()
        self.caption_words: Counter[int] = Counter()
        self.caption_hashes: set[int] = set()
        self.vocabulary: set[str] = set()
        self.tags: Counter[str] = Counter()
        self.scores: dict[str, list[np.ndarray]] = {"logprob": [], "clap_score": []}
        self.captions_total = 0

    def add_index(self, table: Any) -> None:
        for captions in table.column("captions").to_pylist():
            self.captions_per_clip[len(captions)] += 1
            for caption in captions:
                words = _WORD.findall(caption.lower())
                self.caption_words[len(words)] += 1
                self.vocabulary.update(words)
                # A hash, not the string: distinctness without holding every caption.
                self.caption_hashes.add(hash(caption))
                self.captions_total += 1
        for tags in table.column("tags").to_pylist():
            self.tags.update(tags)
        for name, chunks in self.scores.items():
            column = table.column(name).to_numpy(zero_copy_only=False)
            chunks.append(np.asarray(column, dtype=np.float64))


def _read_parquet(storage: Storage, url: str, columns: list[str]) -> Any:
    return pq.read_table(io.BytesIO(storage.read_bytes(url)), columns=columns)


def _label_classes(storage: Storage, labels_url: Any) -> int | None:
    if not isinstance(labels_url, str) or not labels_url:
        return None
    try:
        return len(LabelMap.parse(storage.read_text(labels_url), labels_url))
    except (OSError, ValueError):
        return None  # moved or deleted since the run: coverage is then reported as unknown


def _throughput(stats: Iterable[ShardStats]) -> tuple[list[ThroughputPoint], float | None]:
    timed = sorted((s for s in stats if s.finished_at > 0), key=lambda s: s.finished_at)
    if not timed:
        return [], None
    t0 = timed[0].finished_at - timed[0].seconds  # the first shard's own work counts too
    points, total = [], 0
    for s in timed:
        total += s.samples_in
        points.append(ThroughputPoint(seconds=round(s.finished_at - t0, 3), clips_total=total))
    span = points[-1].seconds
    return points, (round(total / span, 2) if span > 0 else None)


def summarize(
    output: str,
    storage: Storage | None = None,
    on_shard: Callable[[str], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> CorpusSummary:
    """Read ``output``'s manifest, stats, index and error files into one summary.

    ``on_start`` is called with the number of committed shards, ``on_shard`` after each
    shard is read (progress for a large corpus).
    Raises FileNotFoundError where ``output`` holds neither a manifest nor a committed shard.
    """
    storage = storage or Storage()
    layout = OutputLayout(output)
    manifest = read_manifest(layout, storage)
    shards = committed_shards(layout, storage) if storage.exists(output) else set()
    if manifest is None and not shards:
        raise FileNotFoundError(f"{output}: no tagcap output here (no manifest.json, no committed shard)")
    if on_start:
        on_start(len(shards))
    stats = read_stats(layout, storage, shards)

    acc = _Accumulator()
    errors_by_reason: Counter[str] = Counter()
    errors_by_stage: Counter[str] = Counter()
    for shard in sorted(shards):
        if stats[shard].written:
            acc.add_index(_read_parquet(storage, layout.index(shard), ["captions", "tags", "logprob", "clap_score"]))
        if stats[shard].failed_total:
            errors = _read_parquet(storage, layout.errors(shard), ["stage", "reason"])
            errors_by_reason.update(errors.column("reason").to_pylist())
            errors_by_stage.update(errors.column("stage").to_pylist())
        if on_shard:
            on_shard(shard)

    label_classes = _label_classes(storage, manifest.config.get("labels") if manifest else None)
    throughput, rate = _throughput(stats.values())
    return CorpusSummary(
        output=output,
        captioner=manifest.captioner if manifest else None,
        status=manifest.status if manifest else None,
        shards_total=manifest.shards_total if manifest else None,
        shards_committed=len(shards),
        samples_in=sum(s.samples_in for s in stats.values()),
        samples_written=sum(s.written for s in stats.values()),
        samples_failed=sum(s.failed_total for s in stats.values()),
        errors_by_reason=dict(errors_by_reason.most_common()),
        errors_by_stage=dict(errors_by_stage.most_common()),
        captions_per_clip=dict(sorted(acc.captions_per_clip.items())),
        caption_words=dict(sorted(acc.caption_words.items())),
        captions_total=acc.captions_total,
        distinct_captions=len(acc.caption_hashes),
        vocabulary_size=len(acc.vocabulary),
        top_tags=acc.tags.most_common(TOP_TAGS),
        tags_seen=len(acc.tags),
        label_classes=label_classes,
        tag_coverage=round(len(acc.tags) / label_classes, 4) if label_classes else None,
        scores={
            name: ScoreSummary.of(np.concatenate(chunks) if chunks else np.empty(0))
            for name, chunks in acc.scores.items()
        },
        throughput=throughput,
        clips_per_second=rate,
        dedupe=_optional_json(storage, layout.dedupe_summary),
        caption_quality=_optional_json(storage, layout.caption_eval),
    )


def _optional_json(storage: Storage, url: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(url))
    except FileNotFoundError:
        return None
