"""The CUDA runtime settings of a GPU actor's process: how its threads wait for the GPU."""

import pytest
import torch

from tagcap.workers import cuda_runtime


def test_every_tuning_wait_mode_is_a_cuda_flag():
    from tagcap.schemas.tuning import CUDA_SYNC_MODES, Tuning

    assert set(CUDA_SYNC_MODES) == set(cuda_runtime.SYNC_FLAGS)
    assert Tuning().cuda_sync == cuda_runtime.DEFAULT_SYNC


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without a GPU")
def test_without_a_gpu_the_mode_is_refused_not_raised():
    # A CPU actor never asks (gpus_per_actor 0); a caller that does gets False, not a crash.
    assert cuda_runtime.set_sync_mode("block") is False
    assert cuda_runtime.current_sync_mode() is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_mode_holds_and_the_gpu_still_runs():
    for mode in ("block", "spin", "block"):
        assert cuda_runtime.set_sync_mode(mode) is True
        assert cuda_runtime.current_sync_mode() == mode
    x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
    assert float(x.sum()) == float((1 << 20) * ((1 << 20) - 1) / 2)
