"""Captioner SPECs and their classes.

``template``, ``blat:PATH_OR_URL``, ``hf:PATH_OR_URL``, ``alm:PATH_OR_URL`` and ``package.module:ClassName``
(a user plugin). :func:`resolve` turns a SPEC into (class, target) and fails with one
clear message for an unknown SPEC; it imports no model code.
"""

from __future__ import annotations

import importlib
from typing import Any

from tagcap.workers.captioners.base import Captioner, CaptionerInfo
from tagcap.workers.captioners.template import TemplateCaptioner


def _builtin(kind: str) -> Any:
    """Import model code only for the kind asked for (template needs no torch models)."""
    if kind == "template":
        return TemplateCaptioner
    if kind == "blat":
        from tagcap.workers.captioners.blat import BlatCaptioner

        return BlatCaptioner
    if kind == "hf":
        from tagcap.workers.captioners.hf import HFCaptioner

        return HFCaptioner
    if kind == "alm":
        from tagcap.workers.captioners.alm import ALMCaptioner

        return ALMCaptioner
    return None


BUILTIN_KINDS = ("template", "blat", "hf", "alm")


class CaptionerSpecError(ValueError):
    pass


def resolve(spec: str) -> tuple[Any, str]:
    """(captioner class, target) for a SPEC string."""
    spec = spec.strip()
    kind, sep, target = spec.partition(":")
    if kind in BUILTIN_KINDS:
        return _builtin(kind), target
    if sep and target.isidentifier() and all(part.isidentifier() for part in kind.split(".")):
        return _plugin(kind, target), ""
    known = "template, blat:PATH_OR_URL, hf:PATH_OR_URL, alm:PATH_OR_URL, package.module:ClassName"
    raise CaptionerSpecError(f"unknown captioner {spec!r} (expected one of: {known})")


def _plugin(module_name: str, class_name: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CaptionerSpecError(f"captioner plugin module {module_name!r} cannot be imported: {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None or not callable(cls):
        raise CaptionerSpecError(f"captioner plugin {module_name}:{class_name} not found")
    if not hasattr(cls, "describe"):
        raise CaptionerSpecError(f"captioner plugin {module_name}:{class_name} has no describe() classmethod")
    return cls


def describe(spec: str, config: dict[str, Any] | None = None) -> CaptionerInfo:
    cls, target = resolve(spec)
    try:
        return cls.describe(target, dict(config or {}))
    except (OSError, ValueError) as exc:
        raise CaptionerSpecError(f"captioner {spec!r}: {exc}") from None


def build(spec: str, config: dict[str, Any] | None = None) -> Captioner:
    """Instantiate (load the model). Runs once per actor."""
    cls, target = resolve(spec)
    cfg = dict(config or {})
    if target:
        cfg["target"] = target
    return cls(cfg)


__all__ = ["Captioner", "CaptionerInfo", "CaptionerSpecError", "build", "describe", "resolve"]
