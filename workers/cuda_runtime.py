"""The few CUDA runtime calls that PyTorch does not expose, through the ``libcudart`` that
PyTorch itself has loaded (found by its soname, so it is the same copy and the same
state): how a thread waits for the GPU, and resetting the runtime's last error.

How a thread waits (``tuning.cuda_sync``, set when a GPU actor starts):

* ``block`` (default): a thread that waits for the GPU sleeps until the GPU wakes it.
* ``auto``: CUDA's own default, which on a machine with more cores than CUDA contexts
  *spins*: every wait holds a core busy for as long as the GPU works.
* ``spin`` and ``yield``: CUDA's other two modes, for measurement.

Why ``block`` is the default: docs/design/gpu-captioner.md.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

# cudaDeviceSchedule* flags, from CUDA's driver_types.h.
SYNC_FLAGS = {"auto": 0x00, "spin": 0x01, "yield": 0x02, "block": 0x04}
DEFAULT_SYNC = "block"


@lru_cache(maxsize=1)
def cudart() -> ctypes.CDLL | None:
    """The CUDA runtime library this process has loaded (importing torch loads it), or
    None where there is none."""
    import torch  # noqa: F401  (loads libcudart; a fresh dlopen by path could load a second copy)

    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def clear_last_error() -> None:
    """Reset the CUDA runtime's last error, which a refused call (a registration CUDA
    would not make) leaves behind and which torch would otherwise report at its next
    kernel launch as that kernel's error."""
    lib = cudart()
    if lib is not None:
        lib.cudaGetLastError()


def set_sync_mode(mode: str) -> bool:
    """How this process's threads wait for its current GPU (``SYNC_FLAGS``). Made before
    the process first uses the GPU, it is the flag its context starts with; recent CUDA
    also changes it on a context already made. Returns whether CUDA took it."""
    lib = cudart()
    return lib is not None and _succeeded(lib, lib.cudaSetDeviceFlags(ctypes.c_uint(SYNC_FLAGS[mode])))


def current_sync_mode() -> str | None:
    """The current GPU's wait mode as CUDA reports it, or None where it cannot say."""
    lib = cudart()
    if lib is None:
        return None
    flags = ctypes.c_uint(0)
    if not _succeeded(lib, lib.cudaGetDeviceFlags(ctypes.byref(flags))):
        return None
    schedule = flags.value & 0x07
    return next((name for name, value in SYNC_FLAGS.items() if value == schedule), None)


def _succeeded(lib: ctypes.CDLL, status: int) -> bool:
    """Whether a runtime call returned cudaSuccess; if not, its error is read back so that
    torch does not report it at its next launch."""
    if int(status) == 0:
        return True
    lib.cudaGetLastError()
    return False
