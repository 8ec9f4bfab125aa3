"""The ``template`` captioner: tags to a sentence, no model.

It is the reference for the pipeline (every run works without weights) and the weakest
baseline for captioning quality. AudioSet display names list synonyms after commas
("Vehicle horn, car horn, honking"); the first one is used.
"""

from __future__ import annotations

from typing import Any, ClassVar

from tagcap.schemas.work import CaptionResult, ModelBatch
from tagcap.workers.captioners.base import CaptionerInfo

TEMPLATE_VERSION = 1


def tag_phrase(tags: list[str]) -> str:
    names: list[str] = []
    for tag in tags:
        name = tag.split(",")[0].strip().lower()
        if name and name not in names:
            names.append(name)
    if not names:
        return ""
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


class TemplateCaptioner:
    name: ClassVar[str] = "template"

    def __init__(self, config: dict[str, Any] | None = None):
        config = dict(config or {})
        self.prefix = str(config.get("prefix", "The sound of"))
        self.info = self.describe("", config)

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> CaptionerInfo:
        if target:
            raise ValueError("the template captioner takes no argument (use plain 'template')")
        return CaptionerInfo(
            captioner_id=f"template-v{TEMPLATE_VERSION}",
            checkpoint_sha256=None,
            sample_rate=int(config.get("sample_rate", 16000)),
            clip_seconds=float(config.get("clip_seconds", 10.0)),
            params={"prefix": str(config.get("prefix", "The sound of"))},
        )

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        results = []
        for tags in batch.tags:
            phrase = tag_phrase(tags)
            if not phrase:
                results.append(CaptionResult(text=None, error="no tag names to caption"))
                continue
            text = f"{self.prefix} {phrase}."
            results.append(CaptionResult(text=text, candidates=(text,)))
        return results
