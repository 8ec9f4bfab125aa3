"""The ``lm:`` rewriter's model in an actor: the tokenizer and the causal LM loaded once, every
clip's instruction rendered through the chat template and generated in one batch with left
padding. Options and description: ``lm``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tagcap.schemas.work import CaptionedUnit, CaptionResult, StageInfo, StageOutput
from tagcap.workers.generation import (
    describe_exception,
    generate,
    in_chunks,
    left_padded,
    open_model_folder,
    rows_or_alone,
)
from tagcap.workers.storage import Storage


def rewrite_input(result: CaptionResult) -> list[str]:
    """What the LM reads of a clip: the captioner's answers, else its candidates, else its caption."""
    if result.answers:
        return list(result.answers)
    if result.candidates:
        return list(result.candidates)
    return [result.text] if result.text else []


class LMRuntime:
    def __init__(self, target: str, storage: Storage, info: StageInfo):
        from transformers import AutoTokenizer

        self.info = info
        self.params = info.params
        folder, self.device, self.model = open_model_folder(target, storage, self.params["architecture"])
        self.tokenizer = left_padded(AutoTokenizer.from_pretrained(folder, local_files_only=True))

    def prompt(self, tags: list[str], said: list[str]) -> str:
        text = self.params["instruction"].format(
            tags=", ".join(tags), answers="\n".join(said), max_words=self.params["max_words"]
        )
        # Plain string content: what text-only chat templates (Mistral's, Llama's) expect.
        messages: list[dict[str, str]] = [{"role": "user", "content": text}]
        if self.params["system"]:
            messages.insert(0, {"role": "system", "content": self.params["system"]})
        return str(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def _generate(self, prompts: list[str], key: str) -> list[list[str] | BaseException]:
        variants = self.params["variants"]

        def batch(rows: Sequence[int]) -> list[list[str]]:
            inputs = self.tokenizer(
                [prompts[r] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False
            )
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            texts = generate(self.model, self.tokenizer, inputs, self.params, f"{key}/{rows[0]}", per_row=variants)
            return [texts[i * variants : (i + 1) * variants] for i in range(len(rows))]

        return rows_or_alone(batch, len(prompts))

    def rewrite(self, unit: CaptionedUnit) -> CaptionedUnit:
        live = [i for i, r in enumerate(unit.results) if r.text is not None]
        prompts = [self.prompt(unit.tags[i], rewrite_input(unit.results[i])) for i in live]
        made: list[list[str] | BaseException] = []
        for chunk in in_chunks(len(live), self.params["batch_rows"]):
            made.extend(self._generate(prompts[chunk.start : chunk.stop], f"{self.info.model_id}/{chunk.start}"))
        results = list(unit.results)
        for i, variants in zip(live, made, strict=True):
            source = rewrite_input(results[i])
            if isinstance(variants, BaseException):
                results[i] = replace(results[i], text=None, error=describe_exception(variants), error_stage="rewrite")
                continue
            kept = [v for v in variants if v]
            output = StageOutput("rewrite", {"input": source, "rewrites": list(variants)})
            if not kept:
                results[i] = replace(
                    results[i],
                    text=None,
                    error="empty rewrite",
                    error_stage="rewrite",
                    stages=(*results[i].stages, output),
                )
                continue
            results[i] = replace(results[i], text=kept[0], candidates=tuple(kept), stages=(*results[i].stages, output))
        return replace(unit, results=results)
