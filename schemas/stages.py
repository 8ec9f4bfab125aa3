"""The stages of a run after the captioner, as the driver hands them to their actors.

A run is a chain of model stages: ``caption``, then optionally ``rewrite`` (``lm:FOLDER``),
then optionally ``filter`` (``clap:CKPT``). Each has its own pool of Ray actors and its own
resources; the captioner's are the run's top-level settings (``--actors``,
``--gpus-per-actor``...), the later stages' come from the YAML's ``stages:`` mapping (and
the ``--rewrite-*`` / ``--filter-*`` flags). What each stage does to the output is its SPEC
and options (part of the run's identity); its resources only change how fast it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

STAGE_NAMES = ("caption", "rewrite", "filter")


@dataclass(frozen=True)
class StageResources:
    """How one stage after the captioner runs: its actors and what each holds.

    ``batch_size``: rows per model call of the filter (the rewriter's ``batch_rows`` option
    splits its calls); ``threads``: calls an actor runs at once."""

    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float | None = None  # None: 1 on a CPU, none beside a GPU
    batch_size: int = 64
    threads: int = 1

    def __post_init__(self) -> None:
        if self.actors < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("a stage's actors, batch_size and threads must be at least 1")
        if self.gpus_per_actor < 0 or (self.cpus_per_actor is not None and self.cpus_per_actor < 0):
            raise ValueError("a stage's gpus_per_actor and cpus_per_actor must be >= 0")

    @property
    def cpus(self) -> float:
        if self.cpus_per_actor is not None:
            return self.cpus_per_actor
        return 0.0 if self.gpus_per_actor > 0 else 1.0

    @classmethod
    def from_mapping(cls, stage: str, raw: dict[str, Any] | None) -> StageResources:
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"stages.{stage}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**raw)


@dataclass(frozen=True)
class StageSettings:
    """A stage after the captioner, as its actors are built from it."""

    stage: str  # "rewrite" or "filter"
    spec: str  # lm:FOLDER, clap:CKPT
    options: dict[str, Any] = field(default_factory=dict)  # the stage's options, with storage_options
    resources: StageResources = field(default_factory=StageResources)
    model_id: str | None = None  # what the driver recorded; an actor that loads another refuses
    needs_audio: bool = False  # its call takes the unit's PCM (a filter)
