"""The ``hf:`` captioner's model in an actor: a transformers sequence-to-sequence speech
model loaded once, on the actor's GPU when it has one (bf16 there). Options, description
and the prompt's shape: ``hf``."""

from __future__ import annotations

from typing import Any

import torch

from tagcap.schemas.work import CaptionResult, ModelBatch
from tagcap.workers.model_folder import local_folder
from tagcap.workers.model_input import model_waveforms
from tagcap.workers.storage import Storage


class HFRuntime:
    def __init__(self, target: str, storage: Storage, params: dict[str, Any]):
        from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer

        self.params = params
        folder = local_folder(target, storage)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.features = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=dtype
        ).to(self.device)
        self.model.eval()
        self.start = self.model.config.decoder_start_token_id

    def prompt(self, tags: list[str]) -> list[int]:
        text = self.params["prompt_template"].format(tags=", ".join(tags))
        return [self.start, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    @torch.no_grad()
    def caption(self, batch: ModelBatch, model_rate: int, clip_samples: int) -> list[CaptionResult]:
        # The feature extractor works on NumPy: resample where the model is, then hand it over.
        waves = model_waveforms(batch.waveforms, batch.sample_rate, model_rate, clip_samples, self.device)
        feats = self.features(
            list(waves.cpu().numpy()), sampling_rate=model_rate, return_tensors="pt"
        ).input_features.to(self.device, self.model.dtype)
        prompts = [self.prompt(t) for t in batch.tags]
        results: list[CaptionResult | None] = [None] * len(prompts)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for length, rows in sorted(by_len.items()):
            out = self.model.generate(
                input_features=feats[rows],
                decoder_input_ids=torch.tensor([prompts[i] for i in rows], device=self.device),
                num_beams=self.params["beam_size"],
                max_new_tokens=self.params["max_new_tokens"],
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
            seqs = out.sequences[:, length:] if out.sequences.shape[1] > length else out.sequences[:, :0]
            texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
            scores = getattr(out, "sequences_scores", None)
            for j, i in enumerate(rows):
                text = texts[j].strip()
                logprob = round(float(scores[j]), 4) if scores is not None else None
                results[i] = (
                    CaptionResult(text=text, logprob=logprob, candidates=(text,))
                    if text
                    else CaptionResult(text=None, error="empty caption")
                )
        return [r for r in results if r is not None]
