"""The generation settings of a text-generating stage (the ``alm:`` captioner, the ``lm:``
rewriter), read from its options and checked on the driver, without torch."""

from __future__ import annotations

from typing import Any


def generation_params(config: dict[str, Any]) -> dict[str, Any]:
    """The generation settings every text-generating stage records (alm and lm)."""
    params = {
        "max_new_tokens": int(config.get("max_new_tokens", 64)),
        "num_beams": int(config.get("num_beams", 1)),
        "do_sample": bool(config.get("do_sample", False)),
        "temperature": float(config.get("temperature", 1.0)),
        "top_p": float(config.get("top_p", 1.0)),
        "seed": int(config.get("seed", 0)),
        "batch_rows": int(config.get("batch_rows", 0)),
    }
    if params["max_new_tokens"] < 1 or params["num_beams"] < 1 or params["batch_rows"] < 0:
        raise ValueError("max_new_tokens and num_beams must be at least 1, batch_rows at least 0")
    if params["do_sample"] and (params["temperature"] <= 0 or not 0 < params["top_p"] <= 1):
        raise ValueError("sampling needs temperature > 0 and 0 < top_p <= 1")
    return params
