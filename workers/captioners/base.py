"""The captioner protocol.

A captioner is a plain class: ``__init__(config: dict)`` loads its model once (inside a
Ray actor, on that actor's GPU when it has one), and ``__call__(batch)`` captions a
:class:`~tagcap.schemas.work.ModelBatch` (16-bit PCM at the unit's own rate, covering
``clip_seconds``, plus each clip's tag names and MIDs; ``workers.model_input.model_waveforms``
turns it into float32 at the model's rate on the model's device) into one
:class:`~tagcap.schemas.work.CaptionResult` per row, in order.

Optionally, ``warm_up(batch_size)`` runs once in the actor before its first call (the
actor may run calls concurrently afterwards): the place to compile or capture whatever
depends on the batch size.

``describe(target, config)`` is a classmethod that runs on the driver without loading the
model: it validates the target (checkpoint present, config sane) and returns the
:class:`CaptionerInfo` recorded in the manifest and in every sample's ``caption_meta``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from tagcap.schemas.work import CaptionResult, ModelBatch


@dataclass(frozen=True)
class CaptionerInfo:
    captioner_id: str  # includes the checkpoint's sha256 where there is one
    checkpoint_sha256: str | None
    sample_rate: int
    clip_seconds: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def clip_samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)


@runtime_checkable
class Captioner(Protocol):
    info: CaptionerInfo

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]: ...


class CaptionerClass(Protocol):
    """What a captioner class (including a user plugin) provides."""

    name: ClassVar[str]

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> CaptionerInfo: ...

    def __call__(self, config: dict[str, Any]) -> Captioner: ...


def caption_in_batches(captioner: Captioner, batch: ModelBatch, batch_size: int) -> list[CaptionResult]:
    """Caption a unit's rows in model batches of at most ``batch_size``."""
    results: list[CaptionResult] = []
    for start in range(0, len(batch), batch_size):
        part = batch.slice(start, start + batch_size)
        out = captioner(part)
        if len(out) != len(part):
            raise RuntimeError(f"captioner returned {len(out)} results for {len(part)} clips")
        results.extend(out)
    return results
