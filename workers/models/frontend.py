"""Log-mel front end, computed on the model's device (PANNs/BLAT settings by default:
32 kHz, 1024/320 window/hop, 64 mels, 50-14000 Hz)."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from tagcap.workers.models.configs import FrontendConfig


class LogMel(nn.Module):
    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.n_fft,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            f_min=cfg.f_min,
            f_max=min(cfg.f_max, cfg.sample_rate / 2),
            power=2.0,
        )

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, samples) float -> (B, frames, n_mels) log power. Always in float32: the
        STFT and the log are where bf16 loses most."""
        with torch.autocast(device_type=waveforms.device.type, enabled=False):
            spec = self.mel(waveforms.float())
            return torch.log(spec + 1e-10).transpose(1, 2)
