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

As with ``blat``, this module is what the driver needs and imports no torch; the model is
in ``hf_runtime``, imported by the actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from tagcap.schemas.work import CaptionResult, ModelBatch
from tagcap.workers.captioners.base import CaptionerInfo
from tagcap.workers.model_folder import check_model_folder
from tagcap.workers.storage import Storage

if TYPE_CHECKING:
    from tagcap.workers.captioners.hf_runtime import HFRuntime


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
        folder = check_model_folder(target, Storage(config.get("storage_options") or {}), "hf")
        sha = folder.sha256
        pre = folder.json_files.get("preprocessor_config.json", {})
        rate = int(pre.get("sampling_rate", 16000))
        seconds = float(pre.get("chunk_length", 30.0))
        return CaptionerInfo(f"hf-{sha[:16]}", sha, rate, seconds, _params(config))

    def __init__(self, config: dict[str, Any]):
        from tagcap.workers.captioners.hf_runtime import HFRuntime  # torch: the actor's only

        target = config["target"]
        self.info = self.describe(target, config)
        self.params = self.info.params
        self.runtime: HFRuntime = HFRuntime(target, Storage(config.get("storage_options") or {}), self.params)

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        return self.runtime.caption(batch, self.info.sample_rate, self.info.clip_samples)
