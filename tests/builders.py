"""Building input tars and audio bytes for tests, good and bad."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import soundfile as sf


def tone(seconds: float = 1.0, rate: int = 16000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def encode(samples: np.ndarray, rate: int, fmt: str = "FLAC", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def make_tar(members: list[tuple[str, bytes]], path: str | None = None) -> bytes:
    """A tar of (name, bytes) members in order; written to ``path`` too if given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if path:
        with open(path, "wb") as fh:
            fh.write(raw)
    return raw


def segments_csv(rows: list[tuple[str, float, float, list[str]]]) -> str:
    lines = ["YTID,start_seconds,end_seconds,positive_labels"]
    lines += [f'{y},{s:.3f},{e:.3f},"{",".join(m)}"' for y, s, e, m in rows]
    return "\n".join(lines) + "\n"
