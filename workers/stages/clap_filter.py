"""``--filter clap:CKPT`` as a stage of the chain: the unit's audio and its (rewritten)
captions in, each clip's best candidate kept or the clip rejected by the rule (see
``workers.filters``), in model batches of ``batch_size`` rows."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from tagcap.schemas.work import CaptionedUnit, ModelBatch, StageInfo
from tagcap.workers.storage import Storage


class ClapFilterStage:
    name: ClassVar[str] = "clap"
    needs_audio: ClassVar[bool] = True

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> StageInfo:
        from tagcap.workers.filters import describe_filter

        params = describe_filter(f"clap:{target}", str(config.get("rule", "best>=0.5")), _storage(config))
        sha = params["checkpoint_sha256"]
        return StageInfo("filter", f"clap-{sha[:16]}", sha, {"rule": params["rule"]})

    def __init__(self, target: str, config: dict[str, Any]):
        from tagcap.workers.filters import ClapFilter

        self.info = self.describe(target, config)
        self.batch_size = int(config.get("batch_size", 64))
        self.filter = ClapFilter(f"clap:{target}", self.info.params["rule"], _storage(config))

    def __call__(self, unit: CaptionedUnit, batch: ModelBatch | None = None) -> CaptionedUnit:
        if batch is None:
            raise ValueError("the filter stage needs the unit's audio")
        results = []
        for start in range(0, len(batch), self.batch_size):
            part = batch.slice(start, start + self.batch_size)
            results.extend(
                self.filter.apply(unit.results[start : start + len(part)], part.waveforms, part.sample_rate, part.tags)
            )
        return replace(unit, results=results)


def _storage(config: dict[str, Any]) -> Storage:
    return Storage(config.get("storage_options") or {})
