"""The ``alm:`` captioner's model in an actor: the processor and the model loaded once, the
clips resampled on the model's device, the prompts of the chain asked in turn over the whole
batch with left padding. Options and description: ``alm``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from tagcap.schemas.work import CaptionResult, ModelBatch
from tagcap.workers.captioners.base import CaptionerInfo
from tagcap.workers.generation import (
    describe_exception,
    generate,
    in_chunks,
    left_padded,
    open_model_folder,
    rows_or_alone,
)
from tagcap.workers.model_input import model_waveforms
from tagcap.workers.storage import Storage


class ALMRuntime:
    def __init__(self, target: str, storage: Storage, info: CaptionerInfo):
        from transformers import AutoProcessor

        self.info = info
        self.params = info.params
        folder, self.device, self.model = open_model_folder(target, storage, self.params["architecture"])
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.tokenizer = left_padded(self.processor.tokenizer)
        # Where the feature extractor can compute its log-mels on the model's device (Whisper's
        # can), it does: on a GPU host the CPU is the decode tasks'.
        extractor = getattr(self.processor, "feature_extractor", None)
        takes_device = extractor is not None and "device" in inspect.signature(extractor.__call__).parameters
        self.audio_kwargs = {"device": self.device.type} if takes_device else {}

    def _conversation(self, tags: list[str], answers: list[str], turn: int) -> list[dict[str, Any]]:
        """The chat up to question ``turn``: the audio in the first user turn, each earlier
        question followed by its answer."""
        messages: list[dict[str, Any]] = []
        if self.params["system"]:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.params["system"]}]})
        names = ", ".join(tags)
        for i, template in enumerate(self.params["prompts"][: turn + 1]):
            content: list[dict[str, Any]] = [{"type": "text", "text": template.format(tags=names)}]
            if i == 0:
                content.insert(0, {"type": "audio"})
            messages.append({"role": "user", "content": content})
            if i < turn:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[i]}]})
        return messages

    def _ask(self, waves: Any, tags: list[list[str]], answers: list[list[str]], turn: int, keys: list[str]):
        def batch(rows: Sequence[int]) -> list[str]:
            texts = [
                self.processor.apply_chat_template(
                    self._conversation(tags[r], answers[r], turn), add_generation_prompt=True, tokenize=False
                )
                for r in rows
            ]
            inputs = self.processor(
                text=texts,
                audio=[waves[r] for r in rows],
                sampling_rate=self.info.sample_rate,
                return_tensors="pt",
                text_kwargs={"padding": True},
                audio_kwargs=self.audio_kwargs,
            )
            inputs = {
                k: (v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()
            }
            return generate(self.model, self.tokenizer, inputs, self.params, f"{keys[rows[0]]}/{turn}")

        return rows_or_alone(batch, len(keys))

    def caption(self, batch: ModelBatch) -> list[CaptionResult]:
        clip_samples = self.info.clip_samples
        waves_t = model_waveforms(batch.waveforms, batch.sample_rate, self.info.sample_rate, clip_samples, self.device)
        waves = waves_t.float().cpu().numpy()  # the processor's feature extractor works on NumPy
        results: list[CaptionResult] = []
        for chunk in in_chunks(len(batch), self.params["batch_rows"]):
            results.extend(self._caption_rows(waves[chunk.start : chunk.stop], batch.slice(chunk.start, chunk.stop)))
        return results

    def _caption_rows(self, waves: Any, batch: ModelBatch) -> list[CaptionResult]:
        n = len(batch)
        answers: list[list[str]] = [[] for _ in range(n)]
        errors: list[str | None] = [None] * n
        for turn in range(len(self.params["prompts"])):
            live = [i for i in range(n) if errors[i] is None]
            if not live:
                break
            asked = self._ask(
                waves[live],
                [batch.tags[i] for i in live],
                [answers[i] for i in live],
                turn,
                [batch.keys[i] for i in live],
            )
            for i, answer in zip(live, asked, strict=True):
                if isinstance(answer, BaseException):
                    errors[i] = f"prompt {turn + 1}: {describe_exception(answer)}"
                elif not answer:
                    errors[i] = f"prompt {turn + 1}: empty answer"
                else:
                    answers[i].append(answer)
        return [
            CaptionResult(text=None, error=errors[i])
            if errors[i] is not None
            else CaptionResult(text=" ".join(answers[i]), candidates=(" ".join(answers[i]),), answers=tuple(answers[i]))
            for i in range(n)
        ]
