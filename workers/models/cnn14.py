"""A CNN14-style audio encoder (Kong et al., PANNs) with configurable width and depth.

``channels=(64, 128, 256, 512, 1024, 2048)`` is CNN14 itself (about 80 M parameters
with its fully connected head); tests use e.g. ``(8, 16, 32)``. Each block is two 3x3
conv + batch norm + ReLU layers followed by 2x2 average pooling (the last block pools
1x1, as in CNN14). Frequency is averaged out at the end, leaving a frame sequence
for a decoder to attend to and a pooled clip embedding (mean + max over time).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from tagcap.workers.models.configs import EncoderConfig


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, pool) if pool != (1, 1) else x


class CNN14Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.bn0 = nn.BatchNorm2d(cfg.n_mels)
        chans = (1, *cfg.channels)
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in itertools.pairwise(chans))
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def out_dim(self) -> int:
        return self.cfg.channels[-1]

    def time_reduction(self) -> int:
        return 2 ** (len(self.blocks) - 1)

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, frames, mels) -> (frame features (B, T', C), clip embedding (B, C))."""
        x = logmel.unsqueeze(1)  # B 1 T M
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # normalise each mel bin
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, (1, 1) if last else (2, 2))
            x = self.dropout(x)
        frames = x.mean(dim=3).transpose(1, 2)  # B T' C
        clip = frames.mean(dim=1) + frames.max(dim=1).values
        return frames, clip
