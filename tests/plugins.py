"""Captioner plugins for tests, loaded through the ``package.module:ClassName`` SPEC."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tagcap.schemas.work import CaptionedUnit, CaptionResult, ModelBatch, StageInfo, StageOutput
from tagcap.workers.captioners.base import CaptionerInfo
from tagcap.workers.captioners.template import TemplateCaptioner


class _Plugin(TemplateCaptioner):
    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> CaptionerInfo:
        base = TemplateCaptioner.describe("", {})
        # One id for all: their output is the template's, so runs compare byte for byte.
        return CaptionerInfo("test-template", None, base.sample_rate, base.clip_seconds, base.params)

    def __init__(self, config: dict[str, Any]):
        super().__init__({})
        self.info = self.describe("", config)
        self.config = config


class SlowTemplate(_Plugin):
    """The template captioner, slowed down so a driver can be killed mid-run."""

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        # The environment can slow it further without changing the run's identity.
        time.sleep(float(os.environ.get("SLOW_TEMPLATE_SLEEP", self.config.get("sleep", 0.4))))
        return super().__call__(batch)


class PoisonTemplate(_Plugin):
    """Raises on any batch that holds a clip whose key contains ``poison``."""

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        poison = self.config["poison"]
        if any(poison in key for key in batch.keys):
            raise RuntimeError(f"poisoned batch ({poison})")
        return super().__call__(batch)


class DieOnceTemplate(_Plugin):
    """Kills its own process (the Ray actor) with ``os._exit`` at its ``die_at``-th batch
    (counted across restarts in a file), once; every other call captions normally."""

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        counter = self.config["counter"]
        calls = int(Path(counter).read_text()) + 1 if os.path.exists(counter) else 1
        with open(counter, "w") as fh:
            fh.write(str(calls))
        if calls == int(self.config.get("die_at", 1)):
            os._exit(1)
        return super().__call__(batch)


class HangTemplate(_Plugin):
    """Never returns on a batch that holds a clip whose key contains ``hang``."""

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        if any(self.config["hang"] in key for key in batch.keys):
            time.sleep(3600)
        return super().__call__(batch)


class WarmUpTemplate(_Plugin):
    """Captions only after the actor has called ``warm_up`` and only batches no larger than
    it was warmed up for, as a captioner with captured CUDA graphs needs."""

    warmed: int | None = None

    def warm_up(self, batch_size: int) -> None:
        self.warmed = batch_size

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        if self.warmed is None or len(batch) > self.warmed:
            raise RuntimeError(f"batch of {len(batch)} after a warm-up for {self.warmed}")
        return super().__call__(batch)


class SlowStartTemplate(_Plugin):
    """Takes ``start_s`` seconds to start, as a GPU model does (imports, weights, capture)."""

    def __init__(self, config: dict[str, Any]):
        time.sleep(float(config.get("start_s", 2.0)))
        super().__init__(config)


class TagRewriter:
    """A rewrite stage plugin: "<caption> (<tags>)", with the option to kill its own actor at
    its ``die_at``-th call (counted in the file ``counter``, across restarts), once."""

    needs_audio = False

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> StageInfo:
        return StageInfo("rewrite", "test-tag-rewriter", None, {"form": "caption (tags)"})

    def __init__(self, target: str, config: dict[str, Any]):
        self.info = self.describe(target, config)
        self.config = config

    def __call__(self, unit: CaptionedUnit, batch: ModelBatch | None = None) -> CaptionedUnit:
        counter = self.config.get("counter")
        if counter:
            calls = int(Path(counter).read_text()) + 1 if os.path.exists(counter) else 1
            Path(counter).write_text(str(calls))
            if calls == int(self.config.get("die_at", 1)):
                os._exit(1)
        results = []
        for result, tags in zip(unit.results, unit.tags, strict=True):
            if result.text is None:
                results.append(result)
            elif "Tick" in tags and self.config.get("fail_tick"):
                results.append(replace(result, text=None, error="no ticks", error_stage="rewrite"))
            else:
                text = f"{result.text} ({', '.join(tags)})"
                output = StageOutput("rewrite", {"input": [result.text], "rewrites": [text]})
                results.append(replace(result, text=text, candidates=(text,), stages=(*result.stages, output)))
        return replace(unit, results=results)


class LookupCaptioner(_Plugin):
    """Captions each clip with ``captions[key]`` from its options (``"unknown"`` where the
    key has none): a corpus whose captions a test chooses."""

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> CaptionerInfo:
        base = TemplateCaptioner.describe("", {})
        return CaptionerInfo("test-lookup", None, base.sample_rate, base.clip_seconds, {})

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        texts = [self.config["captions"].get(key, "unknown") for key in batch.keys]
        return [CaptionResult(text=t, candidates=(t,)) for t in texts]


class LookupRewriter:
    """A rewrite stage plugin that replaces each caption by ``rewrites[caption]``."""

    needs_audio = False

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> StageInfo:
        return StageInfo("rewrite", "test-lookup-rewriter", None, {})

    def __init__(self, target: str, config: dict[str, Any]):
        self.info = self.describe(target, config)
        self.rewrites = config["rewrites"]

    def __call__(self, unit: CaptionedUnit, batch: ModelBatch | None = None) -> CaptionedUnit:
        results = []
        for result in unit.results:
            if result.text is None:
                results.append(result)
                continue
            text = self.rewrites.get(result.text, result.text)
            output = StageOutput("rewrite", {"input": [result.text], "rewrites": [text]})
            results.append(replace(result, text=text, candidates=(text,), stages=(*result.stages, output)))
        return replace(unit, results=results)
