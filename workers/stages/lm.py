"""``--rewrite lm:PATH_OR_URL``: a transformers causal LM that turns a clip's tag names and
what the captioner said of it into the final caption (or ``variants`` of it) through its
chat template.

The folder is what ``save_pretrained`` writes for the model and its tokenizer (safetensors
weights, ``config.json`` naming the architecture, a tokenizer with a chat template); it is
checked on the driver before Ray starts.

What the LM reads per clip: the captioner's answers where it gave several (an ``alm:``
chain), else its candidates, else its caption; so it rewrites ``alm:``, ``blat:``, ``hf:``
and ``template`` output alike, without the audio. The instruction names them as
``{answers}`` (one per line), the tags as ``{tags}`` and the word limit as ``{max_words}``.
The default follows AudioSetCaps' rule: use the tags to correct the description, name no
label verbatim, stay within the word limit.

Config (``rewrite_options``): ``instruction``; ``system`` (none by default); ``max_words``
(25); ``variants`` (1: how many captions per clip; more need ``num_beams`` at least that or
``do_sample``); and the generation settings of ``alm`` (``max_new_tokens`` 64,
``num_beams``, ``do_sample``, ``temperature``, ``top_p``, ``seed``, ``batch_rows``).

Each clip's result: the first variant as its caption, every variant as its candidates (a
filter after the rewrite picks among them), and ``{"input": [...], "rewrites": [...]}`` as the
stage's output in the sample's provenance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from tagcap.schemas.work import CaptionedUnit, ModelBatch, StageInfo
from tagcap.workers.generation_params import generation_params
from tagcap.workers.model_folder import check_model_folder
from tagcap.workers.storage import Storage

if TYPE_CHECKING:
    from tagcap.workers.stages.lm_runtime import LMRuntime

DEFAULT_INSTRUCTION = (
    "An audio clip is labelled: {tags}.\n"
    "A listener described it as follows:\n{answers}\n"
    "Write one fluent caption of at most {max_words} words that says what can be heard. "
    "Use the labels to correct the description where they disagree, but do not repeat any "
    "label word for word. Answer with the caption only."
)


def _check_instruction(text: str) -> str:
    try:
        text.format(tags="x", answers="y", max_words=1)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"lm: the instruction may name only {{tags}}, {{answers}} and {{max_words}} ({exc})") from None
    return text


class LMRewriter:
    name: ClassVar[str] = "lm"
    needs_audio: ClassVar[bool] = False

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> StageInfo:
        storage = Storage(config.get("storage_options") or {})
        folder = check_model_folder(target, storage, "lm", needs_chat_template=True)
        params: dict[str, Any] = {
            "architecture": folder.architecture,
            "instruction": _check_instruction(str(config.get("instruction", DEFAULT_INSTRUCTION))),
            "system": str(config["system"]) if config.get("system") else None,
            "max_words": int(config.get("max_words", 25)),
            "variants": int(config.get("variants", 1)),
            **generation_params(config),
        }
        if params["max_words"] < 1 or params["variants"] < 1:
            raise ValueError("lm: max_words and variants must be at least 1")
        if params["variants"] > 1 and not params["do_sample"] and params["num_beams"] < params["variants"]:
            raise ValueError(f"lm: {params['variants']} variants need num_beams >= {params['variants']} or do_sample")
        return StageInfo("rewrite", f"lm-{folder.sha256[:16]}", folder.sha256, params)

    def __init__(self, target: str, config: dict[str, Any]):
        from tagcap.workers.stages.lm_runtime import LMRuntime  # torch: the actor's only

        self.info = self.describe(target, config)
        self.runtime: LMRuntime = LMRuntime(target, Storage(config.get("storage_options") or {}), self.info)

    def __call__(self, unit: CaptionedUnit, batch: ModelBatch | None = None) -> CaptionedUnit:
        return self.runtime.rewrite(unit)
