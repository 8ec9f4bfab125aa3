"""``--filter recorded`` in ``tagcap regenerate``: a new filter rule applied to the scores the
source corpus recorded for each sample's candidates and its tag string, without the audio
and without a model. Where a sample has no recorded scores (its run had no filter), it is an
error row: nothing can be scored without the audio."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from tagcap.schemas.work import CaptionedUnit, ModelBatch, StageInfo, StageOutput
from tagcap.workers.filter_rules import FilterRule

RECORDED = "recorded"


class RecordedScoresFilter:
    name: ClassVar[str] = RECORDED
    needs_audio: ClassVar[bool] = False

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> StageInfo:
        rule = FilterRule.parse(str(config.get("rule", "best>=0.5")))
        return StageInfo("filter", "recorded-scores", None, {"rule": str(rule), "scores": "recorded"})

    def __init__(self, target: str, config: dict[str, Any]):
        self.info = self.describe(target, config)
        self.rule = FilterRule.parse(self.info.params["rule"])

    def __call__(self, unit: CaptionedUnit, batch: ModelBatch | None = None) -> CaptionedUnit:
        results = []
        for r in unit.results:
            recorded = next((s.output for s in r.stages if s.stage == "filter"), None)
            if r.text is None:
                results.append(r)
                continue
            if not recorded or not recorded.get("scores") or recorded.get("tag_score") is None:
                results.append(replace(r, text=None, error="no recorded filter scores", error_stage="filter"))
                continue
            scores, tag_score = [float(s) for s in recorded["scores"]], float(recorded["tag_score"])
            best, kept = self.rule.pick(scores, tag_score)
            output = StageOutput("filter", {"scores": scores, "tag_score": tag_score, "kept": kept})
            stages = (*(s for s in r.stages if s.stage != "filter"), output)
            if kept:
                results.append(replace(r, score=scores[best], stages=stages))
            else:
                results.append(
                    replace(r, text=None, score=scores[best], error="filtered", error_stage="filter", stages=stages)
                )
        return replace(unit, results=results)
