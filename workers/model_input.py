"""Model input on the model's device: a :class:`~tagcap.schemas.work.ModelBatch`'s 16-bit
PCM at the unit's rate becomes float32 at the model's rate, cropped or padded to its clip
length. Resampling runs on the GPU there (microseconds per clip; a CPU resampler costs
each decode core milliseconds per clip).

How the PCM reaches the GPU (``tuning.h2d_staging``, applied by the captioner actor with
:func:`set_staging`):

* ``register`` (default): the array's own pages (Ray's object store) pinned in place
  (``cudaHostRegister``) for the copy, so the GPU reads them directly with no CPU copy.
  Pages this process has not touched yet cost a page fault each to pin: the captioner's
  actor maps each unit's pages ahead of its call (``workers.store_pages``). Where CUDA does
  not pin them, the pageable copy below, and no more tries.
* ``pageable``: from pageable memory, which CUDA copies through its own small pinned
  buffers on the calling thread, while the other call's kernels wait.
* ``pinned``: through a pinned buffer per calling thread, filled by a few threads at once
  (faster alone, but those threads take cores from decoding in a run; not the default).

Why ``register`` is the default: docs/design/pinned-store-pages.md.
"""

from __future__ import annotations

import itertools
import mmap
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torchaudio.transforms as taf_module

from tagcap.schemas.tuning import H2D_STAGING_MODES
from tagcap.workers import cuda_runtime

# One of schemas.tuning.H2D_STAGING_MODES: see the module's docstring.
STAGING = "register"


def set_staging(mode: str) -> None:
    """How this process copies PCM to the GPU from now on (``tuning.h2d_staging``)."""
    global STAGING
    if mode not in H2D_STAGING_MODES:
        raise ValueError(f"h2d staging must be one of {list(H2D_STAGING_MODES)}, got {mode!r}")
    STAGING = mode


# Threads that fill a pinned buffer: one core's memcpy does not reach the bus's speed.
# NumPy releases the GIL while it copies, so they run in parallel.
COPY_THREADS = 4
_COPY_MIN_BYTES = 8 << 20  # below this, one thread: the hand-off costs more than it saves


@lru_cache(maxsize=16)
def _resampler(orig_rate: int, new_rate: int, device: str) -> taf_module.Resample:
    # The windowed-sinc kernel is built once per rate pair and device, not per batch.
    return taf_module.Resample(orig_rate, new_rate).to(device)


def model_waveforms(
    waveforms: np.ndarray | torch.Tensor,
    sample_rate: int,
    model_rate: int,
    length: int,
    device: torch.device | str,
) -> torch.Tensor:
    """A batch of model input on ``device``: (n, length) float32 at ``model_rate``.

    ``waveforms`` is what a :class:`~tagcap.schemas.work.ModelBatch` carries (int16 PCM
    or float32, at ``sample_rate``), or a tensor of it (a pinned one is copied as it is).
    Conversion and resampling run on ``device``: on a GPU that costs microseconds per
    clip, where a CPU resampler costs milliseconds.
    """
    device = torch.device(device)
    if isinstance(waveforms, torch.Tensor):
        x = waveforms
    else:
        with warnings.catch_warnings():
            # Zero-copy from Ray's object store, so read-only; nothing here writes to it.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(waveforms))
    if device.type != "cuda":
        return _to_model_input(x, sample_rate, model_rate, length, device)
    # On a side stream, so that a second thread's copy overlaps this thread's model work.
    thread = threading.get_ident()
    side = _copy_stream(device, thread)
    with torch.cuda.stream(side):
        # Only a tensor can have been pinned by PyTorch. An array from the store must not ask
        # (one driver query): while another call has its unit's pages registered, a page this
        # array shares with that unit makes it look pinned, and copying it as such fails.
        pinned = isinstance(waveforms, torch.Tensor) and x.is_pinned()
        how = "pinned" if pinned else STAGING
        if how == "register":
            on_device = _copy_registered(x, device, side)
        elif how == "pinned":
            on_device = _staging_buffer(device, thread).copy_to(x, device, side)
        else:
            on_device = x.to(device, non_blocking=False)
        out = _to_model_input(on_device, sample_rate, model_rate, length, device)
    torch.cuda.current_stream(device).wait_stream(side)
    out.record_stream(torch.cuda.current_stream(device))
    return out


@lru_cache(maxsize=64)
def _copy_stream(device: torch.device, thread: int) -> torch.cuda.Stream:
    # One per device and calling thread, made once: a new stream per batch is a driver call.
    return torch.cuda.Stream(device)


class _PinnedStaging:
    """One thread's pinned host buffer: filled in parallel, copied to the GPU
    asynchronously, reused once that copy has finished."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None

    def copy_to(self, x: torch.Tensor, device: torch.device, stream: torch.cuda.Stream) -> torch.Tensor:
        nbytes = x.numel() * x.element_size()
        if self.copied is not None:
            self.copied.synchronize()  # the last copy out of the buffer is done
        if self.buffer is None or self.buffer.numel() < nbytes:
            self.buffer = None  # release the old buffer before pinning the larger one
            self.buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        host = self.buffer[:nbytes].view(x.dtype).view(x.shape)
        _parallel_copy(host.numpy().reshape(-1), x.contiguous().numpy().reshape(-1))
        on_device = host.to(device, non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record(stream)
        return on_device


_PAGE = mmap.PAGESIZE
# One registration at a time: two batches may share a page of the object store, and CUDA
# refuses to pin a page twice.
_REGISTER_LOCK = threading.Lock()


def _copy_registered(x: torch.Tensor, device: torch.device, stream: torch.cuda.Stream) -> torch.Tensor:
    """``x`` on ``device``, its pages pinned for the copy and unpinned once the GPU has read
    them; where CUDA does not pin them, the pageable copy (and from then on only that)."""
    global STAGING
    x = x.contiguous()
    start = x.data_ptr() // _PAGE * _PAGE
    end = -(-(x.data_ptr() + x.numel() * x.element_size()) // _PAGE) * _PAGE
    cudart = torch.cuda.cudart()
    with _REGISTER_LOCK:
        if int(cudart.cudaHostRegister(start, end - start, 0)) != 0:
            cuda_runtime.clear_last_error()
            STAGING = "pageable"
            return x.to(device, non_blocking=False)
        try:
            on_device = x.to(device, non_blocking=True)
            stream.synchronize()  # the copy reads these pages until it is done
        finally:
            cudart.cudaHostUnregister(start)
    return on_device


@lru_cache(maxsize=64)
def _staging_buffer(device: torch.device, thread: int) -> _PinnedStaging:
    return _PinnedStaging()


@lru_cache(maxsize=1)
def _copy_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="tagcap-h2d")


def _parallel_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[:] = src`` for flat arrays, in ``COPY_THREADS`` contiguous pieces at once."""
    if COPY_THREADS <= 1 or src.nbytes < _COPY_MIN_BYTES:
        np.copyto(dst, src)
        return
    bounds = np.linspace(0, src.size, COPY_THREADS + 1).astype(np.int64)
    pieces = [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]
    for done in [_copy_pool().submit(np.copyto, dst[a:b], src[a:b]) for a, b in pieces]:
        done.result()


def _to_model_input(
    x: torch.Tensor, sample_rate: int, model_rate: int, length: int, device: torch.device
) -> torch.Tensor:
    x = x.float() / 32768.0 if x.dtype == torch.int16 else x.float()
    if sample_rate != model_rate and x.shape[0]:
        x = _resampler(sample_rate, model_rate, str(device))(x)
    if x.shape[1] >= length:
        return x[:, :length].contiguous()
    return torch.nn.functional.pad(x, (0, length - x.shape[1]))
