"""Model input on the model's device: a :class:`~tagcap.schemas.work.ModelBatch`'s 16-bit
PCM at the unit's rate becomes float32 at the model's rate, cropped or padded to its clip
length. Resampling runs on the GPU there (microseconds per clip; a CPU resampler costs
each decode core milliseconds per clip)."""

from __future__ import annotations

import threading
import warnings
from functools import lru_cache

import numpy as np
import torch
import torchaudio.transforms as taf_module


@lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int, device: str) -> taf_module.Resample:
    # The windowed-sinc kernel is built once per rate pair and device, not per batch.
    return taf_module.Resample(orig_rate, new_rate).to(device)


def model_waveforms(
    waveforms: np.ndarray, sample_rate: int, model_rate: int, length: int, device: torch.device | str
) -> torch.Tensor:
    """A batch of model input on ``device``: (n, length) float32 at ``model_rate``.

    ``waveforms`` is what a :class:`~tagcap.schemas.work.ModelBatch` carries (int16 PCM
    or float32, at ``sample_rate``). Conversion and resampling run on ``device``: on a
    GPU that costs microseconds per clip, where a CPU resampler costs milliseconds.
    """
    device = torch.device(device)
    with warnings.catch_warnings():
        # Zero-copy from Ray's object store, so read-only; nothing here writes to it.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(np.ascontiguousarray(waveforms))
    if device.type != "cuda":
        return _to_model_input(x, sample_rate, model_rate, length, device)
    # On a side stream, so that a second thread's copy overlaps this thread's model work.
    side = _copy_stream(device, threading.get_ident())
    with torch.cuda.stream(side):
        out = _to_model_input(x.to(device, non_blocking=False), sample_rate, model_rate, length, device)
    torch.cuda.current_stream(device).wait_stream(side)
    out.record_stream(torch.cuda.current_stream(device))
    return out


@lru_cache(maxsize=64)
def _copy_stream(device: torch.device, thread: int) -> torch.cuda.Stream:
    # One per device and calling thread, made once: a new stream per batch is a driver call.
    return torch.cuda.Stream(device)


def _to_model_input(
    x: torch.Tensor, sample_rate: int, model_rate: int, length: int, device: torch.device
) -> torch.Tensor:
    x = x.float() / 32768.0 if x.dtype == torch.int16 else x.float()
    if sample_rate != model_rate and x.shape[0]:
        x = _resampler(sample_rate, model_rate, str(device))(x)
    if x.shape[1] >= length:
        return x[:, :length].contiguous()
    return torch.nn.functional.pad(x, (0, length - x.shape[1]))
