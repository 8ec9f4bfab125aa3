"""Configuration of a ``tagcap caption`` run, as one dataclass.

Flags and ``--config run.yaml`` keys are the field names (dashes or underscores). Fields
split into two groups: those that change the bytes of the output (they make up the run's
identity, recorded in the manifest; a rerun with a different identity on the same output
root is refused unless ``--overwrite``) and those that only change how fast it runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tagcap.schemas.stages import StageResources
from tagcap.schemas.tuning import Tuning

# Fields that do not change output bytes: resuming with other values is allowed.
EXECUTION_FIELDS = frozenset(
    {
        "batch_size",
        "gpus_per_actor",
        "cpus_per_actor",
        "actors",
        "ray_address",
        "max_inflight",
        "actor_threads",
        "max_attempts",
        "unit_timeout_s",
        "overwrite",
        "progress",
        "storage_options",
        "decode_cpus",
        "write_cpus",
        "decode_niceness",
        "object_store_memory",
        "num_cpus",
        "dashboard",
        "tuning",
        "ray_timeline",
        "call_trace",
        "stages",
    }
)


# Identity fields left out of the identity while they are unset (see identity_fields).
_UNSET_LEFT_OUT = frozenset({"rewrite", "rewrite_options", "from_corpus", "exclude"})


@dataclass(frozen=True)
class AudioMode:
    """``--audio``: ``copy`` (original bytes), ``flac:RATE`` (mono FLAC re-encode), ``none``."""

    kind: str
    rate: int | None = None

    @classmethod
    def parse(cls, text: str) -> AudioMode:
        if text in ("copy", "none"):
            return cls(text)
        kind, _, rate = text.partition(":")
        if kind == "flac" and rate.isdigit() and 8000 <= int(rate) <= 192000:
            return cls("flac", int(rate))
        raise ValueError(f"--audio must be copy, none or flac:RATE (8000..192000), got {text!r}")

    def __str__(self) -> str:
        return f"flac:{self.rate}" if self.kind == "flac" else self.kind


@dataclass
class CaptionConfig:
    input: list[str]
    segments: list[str]
    labels: str
    output: str
    captioner: str = "template"
    captioner_options: dict[str, Any] = field(default_factory=dict)
    filter: str | None = None  # clap:CHECKPOINT
    filter_rule: str = "best>=0.5"  # best>=T | beats-tags
    rewrite: str | None = None  # lm:FOLDER, or package.module:ClassName
    # A tagcap output root to regenerate from (``tagcap regenerate``): its sample JSON is the
    # input, its audio is never read; only text stages run.
    from_corpus: str | None = None
    # Exclusion lists (--exclude, repeatable): clips on them are error rows, not samples;
    # matched by YouTube video (default) or exact segment (--exclude-match segment).
    exclude: list[str] = field(default_factory=list)
    exclude_match: str = "video"
    rewrite_options: dict[str, Any] = field(default_factory=dict)
    # Resources of the stages after the captioner (the YAML's ``stages:`` mapping, by stage
    # name: actors, gpus_per_actor, cpus_per_actor, batch_size, threads; see schemas/stages.py).
    stages: dict[str, Any] = field(default_factory=dict)
    audio: str = "copy"
    batch_size: int = 64
    gpus_per_actor: float = 0.0
    # None: see ``actor_cpus``.
    cpus_per_actor: float | None = None
    actors: int = 1
    ray_address: str | None = None
    files_per_shard: int = 256
    max_inflight: int | None = None  # default: enough to keep every decode CPU busy
    actor_threads: int | None = None  # concurrent calls per captioner actor; default: the captioner's
    max_attempts: int = 3
    unit_timeout_s: float = 1800.0  # a unit in flight longer is cancelled and retried
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)
    decode_cpus: float = 1.0
    write_cpus: float | None = None  # None: see ``writer_cpus``
    # Decode tasks are throughput work: at a lower CPU priority they never delay the
    # captioner actor (its start, its GPU feeding), the writers or Ray's own processes.
    decode_niceness: int = 10
    num_cpus: int | None = None  # embedded Ray only
    object_store_memory: int | None = None  # embedded Ray only, bytes
    dashboard: bool = False  # embedded Ray only: start the Ray dashboard on 127.0.0.1
    # Limits on input audio: outside them a clip becomes an error row.
    min_clip_seconds: float = 0.1
    max_clip_seconds: float = 600.0
    min_sample_rate: int = 4000
    max_sample_rate: int = 384000
    max_json_bytes: int = 1 << 20
    # Advanced settings (the YAML's ``tuning:`` mapping; see schemas/tuning.py).
    tuning: Tuning = field(default_factory=Tuning)
    # Diagnostics: Ray's task timeline written here when the run ends (Chrome trace JSON).
    ray_timeline: str | None = None
    # Diagnostics: a folder where each captioner actor writes where its calls' time went.
    call_trace: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tuning, Tuning):
            self.tuning = Tuning.from_mapping(self.tuning)
        if self.exclude_match not in ("video", "segment"):
            raise ValueError(f"--exclude-match must be video or segment, got {self.exclude_match!r}")
        unknown = sorted(set(self.stages) - {"rewrite", "filter"})
        if unknown:
            raise ValueError(f"stages: unknown stage(s) {', '.join(unknown)} (known: rewrite, filter)")
        for name in list(self.stages):
            if not isinstance(self.stages[name], StageResources):
                self.stages[name] = StageResources.from_mapping(name, self.stages[name])
        AudioMode.parse(self.audio)
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if self.actors < 1:
            raise ValueError("--actors must be >= 1")
        if self.gpus_per_actor < 0:
            raise ValueError("--gpus-per-actor must be >= 0")
        if self.files_per_shard < 1:
            raise ValueError("--files-per-shard must be >= 1")
        if self.max_attempts < 1:
            raise ValueError("--max-attempts must be >= 1")
        for name in ("cpus_per_actor", "write_cpus"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0")

    @property
    def actor_cpus(self) -> float:
        """CPUs Ray reserves per captioner actor. A CPU actor runs its model on them: 1 by
        default. A GPU actor's own CPU work (copying batches, decoding captions) is light
        and, with decode tasks below its priority (``decode_niceness`` > 0), takes the CPU
        it needs from them whenever it needs it: reserving none leaves every core to a
        decode task (on 16 cores: 16 decode tasks instead of 14-15). Capped at 1 for a GPU
        actor."""
        if self.cpus_per_actor is not None:
            return self.cpus_per_actor if self.gpus_per_actor == 0 else min(self.cpus_per_actor, 1.0)
        return 0.0 if self.gpus_per_actor > 0 and self.decode_niceness > 0 else 1.0

    @property
    def writer_cpus(self) -> float:
        """CPUs Ray reserves per shard writer: none while decode tasks run below the
        writers' priority (a write waits on the disk more than it computes, and takes its
        CPU from a decode task when it does), else a quarter."""
        if self.write_cpus is not None:
            return self.write_cpus
        return 0.0 if self.decode_niceness > 0 else 0.25

    @property
    def audio_mode(self) -> AudioMode:
        return AudioMode.parse(self.audio)

    def stage_resources(self, stage: str) -> StageResources:
        found = self.stages.get(stage)
        return found if isinstance(found, StageResources) else StageResources()

    def identity_fields(self) -> dict[str, Any]:
        """The fields that make up the run's identity. Those added with the stage chain are
        left out while unset, so a plain run keeps the identity it had before them."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in EXECUTION_FIELDS
            and k != "output"
            and not (k in _UNSET_LEFT_OUT and not v)
            and not (k == "exclude_match" and not self.exclude)
        }
