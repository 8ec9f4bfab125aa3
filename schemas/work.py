"""Records that travel between the driver, decode tasks, captioner actors and writers.

One work unit becomes one output shard. A decode task turns it into a :class:`ModelBatch`
(what the captioner needs: one int16 PCM array for the whole unit, no per-sample objects)
and a :class:`UnitPayload` (what the writer needs: per-sample metadata, the audio bytes to
store, and the error records of samples that fell out along the way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tagcap.schemas.records import ErrorRecord


@dataclass(frozen=True)
class WorkUnit:
    """An input tar, or a group of input files, and the shard it becomes."""

    index: int
    shard: str
    kind: str  # "tar" | "files"
    urls: tuple[str, ...]

    @property
    def source(self) -> str:
        return self.urls[0] if len(self.urls) == 1 else f"{self.urls[0]} (+{len(self.urls) - 1} files)"


@dataclass(frozen=True)
class DecodeSpec:
    """How a decode task turns input bytes into model input and stored audio."""

    sample_rate: int  # the captioner's rate
    clip_samples: int  # crop/pad length at that rate
    audio_mode: str  # copy | none | flac:RATE
    min_clip_seconds: float
    max_clip_seconds: float
    min_sample_rate: int
    max_sample_rate: int
    max_json_bytes: int
    threads: int = 1  # clips decoded at once in one task (its CPUs)
    niceness: int = 0  # the decoding thread's nice value at least this (see ``prepare_unit``)
    retain_freed_memory: bool = True  # tuning.retain_freed_memory, applied by the decode task


@dataclass(frozen=True)
class SampleMeta:
    """A sample that decoded and joined its tags; it will be written unless captioning or
    filtering fails it."""

    key: str
    source: str  # input member or file name
    ytid: str
    start_ms: int
    end_ms: int
    mids: tuple[str, ...]
    tags: tuple[str, ...]
    audio_ext: str  # extension of the stored audio member, "" for --audio none
    pcm_digest: str | None = None  # xxh3-128 of the decoded PCM (workers.fingerprint.pcm_digest)


@dataclass
class ModelBatch:
    """Captioner input for one unit: rows of ``waveforms`` align with ``tags``/``mids``.

    The audio travels as 16-bit PCM at ``sample_rate``, the rate most of the unit's clips
    already have, cropped or padded to the captioner's clip length at that rate: half the
    bytes of float32 through the object store, and the resampling to the model's rate
    happens where the model is (on its GPU, see ``workers.model_input.model_waveforms``)
    instead of costing every decode core a few milliseconds per clip.
    """

    waveforms: np.ndarray  # (n, samples) int16 PCM, or float32 in [-1, 1]
    sample_rate: int
    tags: list[list[str]]
    mids: list[list[str]]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def slice(self, start: int, stop: int) -> ModelBatch:
        return ModelBatch(
            self.waveforms[start:stop],
            self.sample_rate,
            self.tags[start:stop],
            self.mids[start:stop],
            self.keys[start:stop],
        )


@dataclass
class PackedBytes:
    """Many byte strings as one array plus where each lies in it. A unit's audio crosses
    the object store this way: one buffer is written once and read back without a copy (Ray
    hands NumPy arrays over out of band); why: docs/design/decode-path.md.

    Where every item is a view of one buffer (a tar read whole, its members sliced from
    it) and they make up at least half of it, that buffer is the array as it is, with the
    tar's headers and other members between the items: the object store's copy is then
    the only one.
    (A unit that lost most of its clips to errors is joined: it would carry the whole tar
    for a few of them.)"""

    data: np.ndarray  # uint8
    starts: np.ndarray  # int64, one per item
    lengths: np.ndarray  # int64, one per item

    @classmethod
    def pack(cls, items: Sequence[bytes | memoryview]) -> PackedBytes:
        lengths = np.fromiter((len(b) for b in items), np.int64, len(items))
        shared = _views_of_one_buffer(items, lengths)
        if shared is not None:
            data, starts = shared
            return cls(data, starts, lengths)
        starts = np.zeros(len(items), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls(np.frombuffer(b"".join(items), np.uint8), starts, lengths)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> memoryview:
        start = int(self.starts[i])
        return memoryview(self.data[start : start + int(self.lengths[i])].data)


def _views_of_one_buffer(
    items: Sequence[bytes | memoryview], lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(the buffer, each item's start in it) where every item is a byte view of one buffer
    and they make up at least half of it."""
    views = [v for v in items if isinstance(v, memoryview)]
    if not views or len(views) != len(items):
        return None
    base = views[0].obj
    if any(v.obj is not base or not v.c_contiguous or v.itemsize != 1 for v in views):
        return None
    try:
        data = np.frombuffer(memoryview(base), np.uint8)
    except (TypeError, ValueError):  # an exporter NumPy cannot view as bytes
        return None
    origin = data.ctypes.data
    starts = np.fromiter(
        (np.frombuffer(v, np.uint8).ctypes.data - origin if len(v) else 0 for v in views), np.int64, len(views)
    )
    if (starts < 0).any() or (starts + lengths > len(data)).any() or 2 * int(lengths.sum()) < len(data):
        return None
    return data, starts


@dataclass
class UnitPayload:
    """Writer input for one unit, in input order."""

    unit: WorkUnit
    samples: list[SampleMeta]
    audio: PackedBytes  # aligned with samples; empty for --audio none
    errors: list[ErrorRecord]
    samples_in: int  # every input sample seen, good or bad
    # The decode task's part of ShardStats.stage_seconds, and when it finished (unix seconds).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    prepared_at: float = 0.0

    def __post_init__(self) -> None:
        if len(self.samples) != len(self.audio):
            raise ValueError("samples and audio must align")


@dataclass(frozen=True)
class StageOutput:
    """What one stage after the captioner (a rewrite, a filter) made of one clip, kept in the
    sample's ``caption_meta.stages`` beside that stage's model and settings."""

    stage: str
    output: dict[str, Any]


@dataclass(frozen=True)
class CaptionResult:
    """What a captioner returns for one clip, and what each later stage makes of it."""

    text: str | None  # None: this clip failed (see error)
    logprob: float | None = None
    candidates: tuple[str, ...] = ()
    score: float | None = None  # filter score (audio-text similarity), when a filter ran
    error: str | None = None
    answers: tuple[str, ...] = ()  # an audio-language model's answer to each of its prompts
    error_stage: str = "caption"  # which stage failed this clip (with ``error``)
    stages: tuple[StageOutput, ...] = ()  # the later stages' outputs, in chain order


@dataclass(frozen=True)
class StageInfo:
    """A stage after the captioner as the driver describes it, without loading its model:
    recorded in the manifest, in the run's identity and in every sample's provenance."""

    stage: str  # "rewrite" or "filter"
    model_id: str  # names the weights' sha256
    sha256: str | None
    params: dict[str, Any]


@dataclass
class CaptionedUnit:
    """A caption call's answer, passed along the chain: the results in the unit's order, the
    clips' tag names (what a text stage reads instead of the audio), and when the caption
    call ran (unix seconds, by the captioner's clock), which the writer records as the
    unit's stages; each later stage adds its own window to ``stage_windows``."""

    results: list[CaptionResult]
    started_at: float
    finished_at: float
    tags: list[list[str]] = field(default_factory=list)
    stage_windows: dict[str, tuple[float, float]] = field(default_factory=dict)
