"""What a captioner actor's process applies of the run's tuning and diagnostics when it
starts, before its captioner touches the GPU.

The values come from the driver with the run's settings (``ExecutionSettings``), never
from the worker's environment, so an actor on any node of a joined cluster obeys them.
"""

from __future__ import annotations

from typing import Any

from tagcap.schemas.tuning import Tuning
from tagcap.workers import call_trace


def apply_actor_tuning(tuning: Tuning, on_gpu: bool, call_trace_dir: str | None) -> dict[str, Any]:
    """Apply ``tuning`` in this process; returns what is in effect, by setting name.

    On a GPU: the threads' wait mode (before the CUDA context is made, so it starts that
    way) and how PCM is copied to the GPU. Everywhere: the call trace folder, if any."""
    applied: dict[str, Any] = {"call_trace": call_trace_dir or None}
    call_trace.enable(call_trace_dir)
    if on_gpu:
        from tagcap.workers import cuda_runtime, model_input

        taken = cuda_runtime.set_sync_mode(tuning.cuda_sync)
        applied["cuda_sync"] = tuning.cuda_sync if taken else f"{tuning.cuda_sync} (refused)"
        model_input.set_staging(tuning.h2d_staging)
        applied["h2d_staging"] = model_input.STAGING
    return applied
