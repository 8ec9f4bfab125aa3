"""The models' configurations, without torch: the driver reads a checkpoint's
``config.json`` into these to describe a run (sample rate, clip length, tag fusion) and
never imports the model code, which only the actors and training processes load."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class FrontendConfig:
    sample_rate: int = 32000
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14000.0


@dataclass(frozen=True)
class EncoderConfig:
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    n_mels: int = 64
    dropout: float = 0.2


TAG_FUSIONS = ("add", "prefix", "none")


@dataclass(frozen=True)
class CaptionerConfig:
    vocab_size: int
    n_tags: int
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    clip_seconds: float = 10.0
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    tag_fusion: str = "add"
    max_words: int = 20
    max_prefix_tags: int = 8

    def __post_init__(self) -> None:
        if self.tag_fusion not in TAG_FUSIONS:
            raise ValueError(f"tag_fusion must be one of {TAG_FUSIONS}, got {self.tag_fusion!r}")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")

    @property
    def prefix_len(self) -> int:
        return self.max_prefix_tags if self.tag_fusion == "prefix" else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CaptionerConfig:
        raw = dict(raw)
        frontend = FrontendConfig(**raw.pop("frontend", {}))
        enc = dict(raw.pop("encoder", {}))
        if "channels" in enc:
            enc["channels"] = tuple(enc["channels"])
        return cls(frontend=frontend, encoder=EncoderConfig(**enc), **raw)
