"""``tagcap sample OUTDIR``: a small AudioSet-shaped input made from nothing.

Synthesized clips whose tags are known by construction (a sine tone is tagged "Sine wave",
a mix of beeps and white noise both), written as WebDataset tars with a segment CSV in
Google's original shape and a ``class_labels_indices.csv``, so the README's main command
runs anywhere without data of its own. Deterministic for a given seed.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tagcap.schemas.keys import make_key
from tagcap.workers.audio import encode_flac

RATE = 16000

# AudioSet classes that can be synthesised faithfully: (mid, display name, generator)
Generator = Callable[[np.random.Generator, int], np.ndarray]


def _sine(rng: np.random.Generator, n: int) -> np.ndarray:
    f = rng.uniform(200, 2000)
    return 0.5 * np.sin(2 * np.pi * f * np.arange(n) / RATE)


def _beeps(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    gate = (np.floor(t * rng.uniform(1.5, 4)) % 2 == 0).astype(np.float64)
    return 0.5 * gate * np.sin(2 * np.pi * rng.uniform(800, 3000) * t)


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    return 0.2 * rng.standard_normal(n)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    spectrum[1:] /= np.sqrt(freqs[1:])
    x = np.fft.irfft(spectrum, n)
    return 0.2 * x / (np.abs(x).max() + 1e-9)


def _chirp(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    period = rng.uniform(0.5, 2.0)
    phase = (t % period) / period
    f0, f1 = 300.0, rng.uniform(2000, 6000)
    inst = f0 + (f1 - f0) * phase
    return 0.4 * np.sin(2 * np.pi * np.cumsum(inst) / RATE)


def _ticks(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.zeros(n)
    step = int(RATE * rng.uniform(0.4, 1.0))
    for start in range(0, n, step):
        burst = min(200, n - start)
        x[start : start + burst] = 0.8 * np.exp(-np.arange(burst) / 30.0) * rng.choice([-1, 1])
    return x


CLASSES: list[tuple[str, str, Generator]] = [
    ("/m/01v_m0", "Sine wave", _sine),
    ("/m/02fs_r", "Beep, bleep", _beeps),
    ("/m/0chx_", "White noise", _white),
    ("/m/0cj0r", "Pink noise", _pink),
    ("/m/0hdsk", "Chirp tone", _chirp),
    ("/m/07qjznt", "Tick", _ticks),
]

_YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class SamplePaths:
    shards: str  # brace pattern
    segments: str
    labels: str


def _ytid(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list(_YTID_ALPHABET), 11))


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    return info


def write_sample(
    outdir: str, shards: int = 4, clips_per_shard: int = 8, seconds: float = 10.0, seed: int = 0
) -> SamplePaths:
    """Write ``shards`` tars of ``clips_per_shard`` clips, a segment CSV and a label CSV."""
    os.makedirs(os.path.join(outdir, "shards"), exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(RATE * seconds)
    rows: list[str] = []
    n_labels = 0
    for shard in range(shards):
        path = os.path.join(outdir, "shards", f"{shard:06d}.tar")
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(clips_per_shard):
                ytid = _ytid(rng)
                start_ms = int(rng.integers(0, 30)) * 1000
                picks = rng.choice(len(CLASSES), size=int(rng.integers(1, 3)), replace=False)
                mix = sum(CLASSES[i][2](rng, n) for i in sorted(picks))
                audio = encode_flac(np.asarray(mix, dtype=np.float32) / len(picks), RATE)
                key = make_key(ytid, start_ms)
                meta = json.dumps({"ytid": ytid, "start_seconds": start_ms / 1000}).encode()
                tar.addfile(_tarinfo(f"{key}.flac", len(audio)), io.BytesIO(audio))
                tar.addfile(_tarinfo(f"{key}.json", len(meta)), io.BytesIO(meta))
                mids = ",".join(CLASSES[i][0] for i in sorted(picks))
                n_labels += len(picks)
                end = start_ms / 1000 + seconds
                rows.append(f'{ytid}, {start_ms / 1000:.3f}, {end:.3f}, "{mids}"')
    segments = os.path.join(outdir, "segments.csv")
    with open(segments, "w") as fh:
        # Google's original shape: comment header, ", " separators, quoted label lists.
        fh.write("# Segments csv created by tagcap sample\n")
        fh.write(
            f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels={len(CLASSES)}, "
            f"num_positive_labels={n_labels}\n"
        )
        fh.write("# YTID, start_seconds, end_seconds, positive_labels\n")
        fh.write("\n".join(rows) + "\n")
    labels = os.path.join(outdir, "class_labels_indices.csv")
    with open(labels, "w") as fh:
        fh.write("index,mid,display_name\n")
        for i, (mid, name, _) in enumerate(CLASSES):
            fh.write(f'{i},{mid},"{name}"\n')
    pattern = os.path.join(outdir, "shards", f"{{000000..{shards - 1:06d}}}.tar")
    return SamplePaths(pattern, segments, labels)
