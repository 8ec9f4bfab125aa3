"""Records that cross a process boundary or land under OUT/.

* :class:`SampleRecord` - the ``<key>.json`` member of every output sample;
* :data:`INDEX_SCHEMA` / :data:`ERROR_SCHEMA` - ``OUT/index/*.parquet`` and
  ``OUT/errors/*.parquet``;
* :class:`ShardStats` - ``OUT/<shard>.stats.json``, also the shard's completion marker;
* :class:`ErrorReason` - the closed vocabulary of per-sample failure reasons.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa

from tagcap.schemas import SCHEMA_VERSION


class ErrorReason(StrEnum):
    """Why an input sample produced no output sample (one per error row)."""

    UNSAFE_MEMBER = "unsafe_member"  # tar member with an absolute or '..' path
    TRUNCATED_TAR = "truncated_tar"  # the input tar ends mid-member
    UNREADABLE = "unreadable"  # the input could not be opened or read
    NO_AUDIO = "no_audio"  # a sample without an audio member
    BAD_JSON = "bad_json"  # the sample's json member does not parse or is too large
    BAD_NAME = "bad_name"  # no YTID could be read from the json or the name
    DUPLICATE_KEY = "duplicate_key"  # a second sample mapping to a key already seen
    EMPTY_AUDIO = "empty_audio"  # zero bytes, or no frames
    DECODE_ERROR = "decode_error"  # the codec could not decode the bytes
    BAD_SAMPLE_RATE = "bad_sample_rate"  # outside the supported range
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    NON_FINITE = "non_finite"  # NaN or Inf samples
    NO_SEGMENT = "no_segment"  # the YTID/start has no row in the segment CSVs
    NO_TAGS = "no_tags"  # the segment has no labels
    UNKNOWN_TAGS = "unknown_tags"  # none of the segment's MIDs is in the label map
    CAPTION_ERROR = "caption_error"  # the captioner raised on this sample
    FILTERED = "filtered"  # the caption filter rejected every candidate
    REWRITE_ERROR = "rewrite_error"  # the rewrite stage failed on this sample
    EXCLUDED = "excluded"  # on an exclusion list (--exclude), named in the detail


INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("ytid", pa.string(), nullable=False),
        pa.field("start_seconds", pa.float64(), nullable=False),
        pa.field("end_seconds", pa.float64(), nullable=False),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("tags", pa.list_(pa.string()), nullable=False),
        pa.field("mids", pa.list_(pa.string()), nullable=False),
        pa.field("logprob", pa.float64()),
        pa.field("clap_score", pa.float64()),
        # xxh3-128 of the clip's decoded PCM: equal for clips that decode to the same samples.
        pa.field("pcm_digest", pa.string()),
    ],
    metadata={"tagcap_schema": str(SCHEMA_VERSION)},
)

ERROR_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ],
    metadata={"tagcap_schema": str(SCHEMA_VERSION)},
)


@dataclass(frozen=True)
class ErrorRecord:
    """One input sample that produced no output sample. ``key`` is the output key when one
    could be formed, else the input member or file name."""

    key: str
    source: str
    stage: str  # read | decode | join | exclude | caption | rewrite | filter
    reason: ErrorReason
    detail: str


@dataclass(frozen=True)
class CaptionMeta:
    captioner: str
    checkpoint_sha256: str | None
    params: dict[str, Any]
    logprob: float | None
    clap_score: float | None
    candidates: list[str]
    tagcap_version: str
    schema: int = SCHEMA_VERSION
    # An audio-language captioner's answer to each prompt of its chain; absent (not written)
    # for captioners that answer one caption.
    answers: list[str] | None = None
    # Each stage after the captioner (rewrite, filter): its model, sha256, settings and what
    # it made of this sample; absent (not written) for a run with none.
    stages: list[dict[str, Any]] | None = None


# CaptionMeta fields left out of a sample's JSON when they are None.
_OPTIONAL_META = frozenset({"answers", "stages"})


@dataclass(frozen=True)
class SampleRecord:
    """The ``<key>.json`` member: ``text`` and ``tag`` are what LAION-CLAP / open_clip read."""

    text: list[str]
    tag: list[str]
    original_data: dict[str, Any]
    caption_meta: CaptionMeta

    def to_json_bytes(self) -> bytes:
        # Sorted keys and fixed separators: the member's bytes are part of the
        # byte-identical-shards guarantee. The fields as they are, not ``asdict``'s deep
        # copy of them: the same JSON (that copy was a sixth of a write task in a profile).
        meta = {k: v for k, v in vars(self.caption_meta).items() if v is not None or k not in _OPTIONAL_META}
        fields = {**vars(self), "caption_meta": meta}
        return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class ShardStats:
    """``OUT/<shard>.stats.json``. Written last of a shard's files: its presence marks the
    shard committed.

    ``seconds`` runs from the unit's submission to its commit; ``stage_seconds`` splits it:
    ``pending`` (until its decode task started), ``read`` (the decode task reading the
    unit's input into samples), ``decode`` (joining tags, decoding, packing),
    ``to_captioner`` (decoded, until its caption call started: the captioner busy with
    other units), ``caption`` (the call), ``to_writer`` (until its write started) and
    ``write``; besides, ``prepare_cpu``: the CPU seconds of the decode task's process over
    read and decode (well below their sum: it waited on storage, or for a core). Where the
    caption call's times are not known, ``queued`` stands for the three between decode and
    write (so it does in stats written by tagcap 0.1.0 before the caption call's start and
    end were returned with its captions)."""

    shard: str
    source: str
    samples_in: int
    written: int
    failed: dict[str, int] = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0
    clips_per_second: float = 0.0
    tar_bytes: int = 0
    # The tar's digest and member count as written: what ``tagcap verify`` checks the tar
    # against. xxh3-128 (what ``xxh128sum`` prints) since 2026-12-04; stats written before
    # carry the sha256 instead, and stats written before tagcap recorded either, neither.
    tar_xxh3_128: str = ""
    tar_sha256: str = ""
    tar_members: int = 0
    finished_at: float = 0.0  # unix seconds when the shard was committed (throughput over time)
    # Empty in stats written before tagcap recorded them.
    stage_seconds: dict[str, float] = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def to_json_bytes(self) -> bytes:
        record = asdict(self)
        if not self.tar_sha256:
            del record["tar_sha256"]  # only stats written before 2026-12-04 carry one
        return json.dumps(record, sort_keys=True, indent=1).encode()

    @property
    def tar_digest(self) -> tuple[str, str] | None:
        """(algorithm, hex digest) of the tar as written, None where not recorded."""
        if self.tar_xxh3_128:
            return "xxh3-128", self.tar_xxh3_128
        if self.tar_sha256:
            return "sha256", self.tar_sha256
        return None

    @classmethod
    def from_json_bytes(cls, data: bytes) -> ShardStats:
        return cls.from_dict(json.loads(data))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ShardStats:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


# The stages of ShardStats.stage_seconds, in the order a unit goes through them.
STAGES = ("pending", "read", "decode", "prepare_cpu", "queued", "to_captioner", "caption", "to_writer", "write")


def median_stage_seconds(stats: Iterable[ShardStats]) -> dict[str, float]:
    """Per stage, the median over the shards that recorded it (in STAGES order)."""
    by_stage: dict[str, list[float]] = {}
    for s in stats:
        for stage, seconds in s.stage_seconds.items():
            by_stage.setdefault(stage, []).append(seconds)
    order = [stage for stage in STAGES if stage in by_stage] + sorted(set(by_stage) - set(STAGES))
    return {stage: statistics.median(by_stage[stage]) for stage in order}
