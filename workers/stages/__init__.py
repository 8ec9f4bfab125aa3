"""The stages of a run after the captioner: a rewrite (``lm:FOLDER``) and a filter
(``clap:CKPT``), each run by its own pool of actors.

A stage is a class with a ``describe(target, config) -> StageInfo`` class method (on the
driver, without loading a model; a bad target raises ValueError with one line), a
constructor taking the same ``config`` (in an actor: loads the model once), a class attribute
``needs_audio`` (whether its call takes the unit's :class:`~tagcap.schemas.work.ModelBatch`)
and ``__call__(unit, batch) -> CaptionedUnit``: the unit with each clip's result replaced by
what the stage made of it, a :class:`~tagcap.schemas.work.StageOutput` appended to it, and a
clip that fails in the stage turned into an error (``error_stage`` the stage's name). Clips
that failed upstream pass through untouched.
"""

from __future__ import annotations

import importlib
from typing import Any

from tagcap.schemas.work import StageInfo

STAGE_ORDER = ("rewrite", "filter")


def stage_class(stage: str, spec: str) -> tuple[Any, str]:
    """(class, target) for a stage's SPEC: the built-in ``lm:`` (rewrite) and ``clap:``
    (filter), or ``package.module:ClassName`` (a plugin with the same protocol, target
    empty); ValueError with one line for anything else."""
    kind, sep, target = spec.strip().partition(":")
    if stage == "rewrite" and kind == "lm":
        from tagcap.workers.stages.lm import LMRewriter

        return LMRewriter, target
    if stage == "filter" and kind == "recorded" and not sep:
        from tagcap.workers.stages.recorded_filter import RecordedScoresFilter

        return RecordedScoresFilter, ""
    if stage == "filter" and kind == "clap":
        from tagcap.workers.stages.clap_filter import ClapFilterStage

        return ClapFilterStage, target
    if sep and "." in kind and target.isidentifier() and all(p.isidentifier() for p in kind.split(".")):
        try:
            cls = getattr(importlib.import_module(kind), target, None)
        except ImportError as exc:
            raise ValueError(f"{stage} plugin module {kind!r} cannot be imported: {exc}") from None
        if cls is None or not hasattr(cls, "describe"):
            raise ValueError(f"{stage} plugin {kind}:{target} not found or has no describe()")
        return cls, ""
    expected = {"rewrite": "lm:PATH_OR_URL", "filter": "clap:PATH_OR_URL or recorded"}[stage]
    raise ValueError(f"unknown {stage} {spec!r} (expected {expected} or package.module:ClassName)")


def describe_stage(stage: str, spec: str, config: dict[str, Any]) -> StageInfo:
    cls, target = stage_class(stage, spec)
    return cls.describe(target, dict(config))


def build_stage(stage: str, spec: str, config: dict[str, Any]) -> Any:
    """The stage with its model loaded (once per actor)."""
    cls, target = stage_class(stage, spec)
    return cls(target, dict(config))
