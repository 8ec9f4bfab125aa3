"""``alm:PATH_OR_URL``: any transformers audio-language model whose processor takes audio
plus a chat template (Qwen2-Audio, Audio Flamingo 3, and others of that shape), prompted
with the clip's tags.

The folder is what ``save_pretrained`` writes for the model and its processor: safetensors
weights (required: nothing is unpickled), ``config.json`` naming the architecture, the
processor's config, a tokenizer and a chat template. It is checked on the driver before Ray
starts (``workers.model_folder``); nothing is fetched from a hub, ever.

Prompts: ``prompts`` is a list of templates, asked in turn in one conversation per clip
(the first turn holds the audio; each later question sees the earlier answers), or
``prompt_chain: audiosetcaps`` for three questions in the manner of AudioSetCaps (the sounds,
then speech, then music). A template names the clip's tags as ``{tags}`` (joined by ``", "``).
The caption is the answers joined by a space; every answer is kept in the sample's
``caption_meta.answers``, for a rewrite stage to use.

Config (``captioner_options``): ``prompts`` or ``prompt_chain``; ``system`` (a system
message, none by default); ``max_new_tokens`` (64); ``num_beams`` (1); ``do_sample``
(false: greedy or beam search); ``temperature`` (1.0) and ``top_p`` (1.0) when sampling;
``seed`` (0: each unit's sampling is seeded from it and the unit's first key, so a rerun
samples the same); ``clip_seconds`` (10, at most the model's window, 30 s for Qwen2-Audio);
``batch_rows`` (0: the actor's whole batch in one ``generate``).

This module is what the driver needs and imports no torch; the model is in
``alm_runtime``, imported by the actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from tagcap.schemas.work import CaptionResult, ModelBatch
from tagcap.workers.captioners.base import CaptionerInfo
from tagcap.workers.generation_params import generation_params
from tagcap.workers.model_folder import check_model_folder
from tagcap.workers.storage import Storage

if TYPE_CHECKING:
    from tagcap.workers.captioners.alm_runtime import ALMRuntime

# The three questions of an AudioSetCaps-style chain, in tagcap's own words: what is heard,
# then whether anyone speaks, then whether there is music; each names the clip's tags.
PROMPT_CHAINS: dict[str, tuple[str, ...]] = {
    "audiosetcaps": (
        "Listen to this clip, which is tagged {tags}. Describe the sounds you hear and how they unfold.",
        "Is anyone speaking in the clip? If so, describe the voice, the language and the mood; if not, say so.",
        "Is there music in the clip? If so, describe its genre, instruments and tempo; if not, say so.",
    ),
}
DEFAULT_PROMPT = "Describe this audio clip in one sentence. Its tags are: {tags}."


def _prompts(config: dict[str, Any]) -> list[str]:
    chain = config.get("prompt_chain")
    prompts = config.get("prompts")
    if chain is not None and prompts is not None:
        raise ValueError("alm takes prompts or prompt_chain, not both")
    if chain is not None:
        if chain not in PROMPT_CHAINS:
            raise ValueError(f"alm: unknown prompt_chain {chain!r} (known: {', '.join(sorted(PROMPT_CHAINS))})")
        return list(PROMPT_CHAINS[chain])
    if prompts is None:
        return [DEFAULT_PROMPT]
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("alm: prompts must be a non-empty list of non-empty strings")
    for p in prompts:
        try:
            p.format(tags="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"alm: prompt {p!r} may name only {{tags}} ({exc})") from None
    return list(prompts)


def _feature_config(folder_json: dict[str, dict[str, Any]]) -> dict[str, Any]:
    processor = folder_json.get("processor_config.json", {})
    return dict(processor.get("feature_extractor") or folder_json.get("preprocessor_config.json") or {})


class ALMCaptioner:
    name: ClassVar[str] = "alm"
    # One generate at a time: the model's forward is not made for concurrent calls.
    concurrent_calls: ClassVar[int] = 1

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> CaptionerInfo:
        storage = Storage(config.get("storage_options") or {})
        folder = check_model_folder(target, storage, "alm", needs_processor=True, needs_chat_template=True)
        features = _feature_config(folder.json_files)
        rate = int(features.get("sampling_rate", 16000))
        window = float(features.get("chunk_length", 30.0))
        seconds = float(config.get("clip_seconds", min(10.0, window)))
        if not 0 < seconds <= window:
            raise ValueError(f"alm: clip_seconds must be in (0, {window:g}] for this model, got {seconds:g}")
        system = config.get("system")
        params = {
            "architecture": folder.architecture,
            "prompts": _prompts(config),
            "system": str(system) if system else None,
            **generation_params(config),
        }
        return CaptionerInfo(f"alm-{folder.sha256[:16]}", folder.sha256, rate, seconds, params)

    def __init__(self, config: dict[str, Any]):
        from tagcap.workers.captioners.alm_runtime import ALMRuntime  # torch: the actor's only

        target = config["target"]
        self.info = self.describe(target, config)
        self.runtime: ALMRuntime = ALMRuntime(target, Storage(config.get("storage_options") or {}), self.info)

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        return self.runtime.caption(batch)
