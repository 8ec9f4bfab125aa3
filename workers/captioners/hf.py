"""``hf:PATH_OR_URL``: a transformers sequence-to-sequence speech model (Whisper-style)
with the clip's tags rendered into the decoder prompt.

The folder holds what ``save_pretrained`` writes for the model (safetensors weights,
required: nothing is unpickled), its tokenizer and its feature extractor. The prompt is
``prompt_template`` (default ``"{tags}:"``) with the tag names joined by ``", "``; the
decoder starts from ``decoder_start_token_id`` followed by the prompt tokens, and the
caption is what the model generates after them. Clips whose prompts tokenise to the same
length are generated together, so no decoder padding is needed.

Config (``captioner_options``): ``beam_size`` (3), ``max_new_tokens`` (20),
``prompt_template``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, ClassVar

import torch

from tagcap.schemas.layout import join_url
from tagcap.schemas.work import CaptionResult, ModelBatch
from tagcap.workers.captioners.base import CaptionerInfo
from tagcap.workers.model_input import model_waveforms
from tagcap.workers.storage import Storage


def _local_folder(target: str, storage: Storage) -> str:
    """The checkpoint as a local folder (remote URLs are copied once, per process)."""
    fs, path = storage.fs(target)
    if storage.is_local(fs):
        return path
    local = tempfile.mkdtemp(prefix="tagcap-hf-")
    for entry in storage.find(target):
        rel = entry["url"][len(target.rstrip("/")) + 1 :]
        dest = os.path.join(local, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as fh:
            fh.write(storage.read_bytes(entry["url"]))
    return local


def _params(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "beam_size": int(config.get("beam_size", 3)),
        "max_new_tokens": int(config.get("max_new_tokens", 20)),
        "prompt_template": str(config.get("prompt_template", "{tags}:")),
    }


class HFCaptioner:
    name: ClassVar[str] = "hf"

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> CaptionerInfo:
        if not target:
            raise ValueError("hf needs a model folder: hf:PATH_OR_URL")
        storage = Storage(config.get("storage_options") or {})
        names = sorted(e["url"].rsplit("/", 1)[-1] for e in storage.list_dir(target))
        weights = [n for n in names if n.endswith(".safetensors")]
        if "config.json" not in names:
            raise ValueError(f"{target}: no config.json (not a save_pretrained folder)")
        if not weights:
            raise ValueError(f"{target}: no .safetensors weights (pickled weights are not loaded)")
        digest = hashlib.sha256()
        for name in weights:
            digest.update(storage.read_bytes(join_url(target, name)))
        sha = digest.hexdigest()
        rate, seconds = 16000, 30.0
        if "preprocessor_config.json" in names:
            pre = json.loads(storage.read_bytes(join_url(target, "preprocessor_config.json")))
            rate = int(pre.get("sampling_rate", rate))
            seconds = float(pre.get("chunk_length", seconds))
        return CaptionerInfo(f"hf-{sha[:16]}", sha, rate, seconds, _params(config))

    def __init__(self, config: dict[str, Any]):
        from transformers import AutoFeatureExtractor, AutoModelForSpeechSeq2Seq, AutoTokenizer

        target = config["target"]
        storage = Storage(config.get("storage_options") or {})
        self.info = self.describe(target, config)
        self.params = self.info.params
        folder = _local_folder(target, storage)
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
    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        # The feature extractor works on NumPy: resample where the model is, then hand it over.
        waves = model_waveforms(
            batch.waveforms, batch.sample_rate, self.info.sample_rate, self.info.clip_samples, self.device
        )
        feats = self.features(
            list(waves.cpu().numpy()), sampling_rate=self.info.sample_rate, return_tensors="pt"
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
