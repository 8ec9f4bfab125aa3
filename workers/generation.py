"""Batched text generation with transformers, shared by the ``alm:`` captioner and the
``lm:`` rewriter (both in actors; this imports torch).

Contracts:

* :func:`load_generator` loads a model folder's architecture once, bf16 on a GPU (float32 on
  a CPU), from safetensors only and local files only.
* :func:`generate` runs one ``generate`` over a batch of left-padded prompts and returns the
  new text of each row. Greedy and beam search depend on nothing but the rows; sampling is
  seeded from the stage's ``seed`` and a key of the batch, so a rerun samples the same.
* :func:`rows_or_alone` calls a batched function and, if the whole batch raises, calls it
  row by row, so that one bad row fails only itself (its error text is returned in its place).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def model_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def open_model_folder(target: str, storage: Any, architecture: str) -> tuple[str, torch.device, Any]:
    """(the folder as a local path, the device, the model loaded on it) for a stage's model."""
    from tagcap.workers.model_folder import local_folder

    folder = local_folder(target, storage)
    device = model_device()
    return folder, device, load_generator(folder, architecture, device)


def load_generator(folder: str, architecture: str, device: torch.device) -> Any:
    import transformers

    cls = getattr(transformers, architecture, None)
    if cls is None or not hasattr(cls, "generate"):
        raise ValueError(f"{folder}: {architecture} is not a transformers class that generates")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=dtype)
    return model.to(device).eval()


def left_padded(tokenizer: Any) -> Any:
    """The tokenizer padding on the left (a decoder-only model's new tokens then follow every
    prompt directly), with its end-of-sequence token as padding where it has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def generation_kwargs(params: dict[str, Any], pad_token_id: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": params["max_new_tokens"],
        "num_beams": params["num_beams"],
        "do_sample": params["do_sample"],
        "pad_token_id": pad_token_id,
    }
    if params["do_sample"]:
        kwargs.update(temperature=params["temperature"], top_p=params["top_p"])
    return kwargs


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    inputs: dict[str, torch.Tensor],
    params: dict[str, Any],
    seed_key: str,
    per_row: int = 1,
) -> list[str]:
    """The text each row generates after its (left-padded) prompt, special tokens dropped;
    ``per_row`` sequences for each row, one after the other."""
    if params["do_sample"]:
        torch.manual_seed((params["seed"] * 1_000_003 + zlib.crc32(seed_key.encode())) % (1 << 63))
    kwargs = generation_kwargs(params, tokenizer.pad_token_id)
    if per_row > 1:
        kwargs["num_return_sequences"] = per_row
    out = model.generate(**inputs, **kwargs)
    sequences = out.sequences if hasattr(out, "sequences") else out
    new = sequences[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


def rows_or_alone(fn: Callable[[Sequence[int]], list[R]], n: int) -> list[R | BaseException]:
    """``fn(rows)`` for all ``n`` rows at once; if that raises, ``fn([row])`` for each row,
    with the exception in the place of a row that raises alone."""
    try:
        return list(fn(range(n)))
    except Exception:
        if n == 1:
            raise
    results: list[R | BaseException] = []
    for row in range(n):
        try:
            results.extend(fn([row]))
        except Exception as exc:
            results.append(exc)
    return results


def in_chunks(n: int, size: int) -> list[range]:
    """Row ranges of at most ``size`` (0: one range of all ``n``)."""
    size = size or n or 1
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def describe_exception(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
