"""A synthetic compositional captioning corpus whose captions are known.

Each 1 s clip holds two sound events, one per half ("beeps then noise"). Training sees
most ordered pairs; validation holds out the rest, so a captioner must compose. Two
events, ``whistle`` and ``siren``, are rendered as the *same* steady tone: only the tags
tell them apart, so tag-guided variants can get them right where audio alone cannot.
Shards carry ``<key>.flac`` + ``<key>.json`` with ``text``, ``tag`` and
``original_data.mids``, as tagcap's own output does.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import tarfile
from collections.abc import Callable

import numpy as np

from tagcap.schemas.keys import make_key
from tagcap.workers.audio import encode_flac

RATE = 16000
HALF = RATE // 2


def _tone(freq: float) -> Callable[[np.random.Generator], np.ndarray]:
    def gen(rng: np.random.Generator) -> np.ndarray:
        t = np.arange(HALF) / RATE
        return 0.4 * np.sin(2 * np.pi * (freq * rng.uniform(0.98, 1.02)) * t)

    return gen


def _beeps(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(HALF) / RATE
    return 0.4 * (np.floor(t * 8) % 2 == 0) * np.sin(2 * np.pi * 2500 * t)


def _noise(rng: np.random.Generator) -> np.ndarray:
    return 0.2 * rng.standard_normal(HALF)


def _clicks(rng: np.random.Generator) -> np.ndarray:
    x = np.zeros(HALF)
    for start in range(int(rng.integers(0, 400)), HALF, 1600):
        n = min(120, HALF - start)
        x[start : start + n] = 0.8 * np.exp(-np.arange(n) / 20.0)
    return x


def _chirp(rng: np.random.Generator) -> np.ndarray:
    t = np.arange(HALF) / RATE
    inst = 300 + 5000 * (t % 0.25) / 0.25
    return 0.4 * np.sin(2 * np.pi * np.cumsum(inst) / RATE)


# word in the caption, MID (synthetic), tag name, generator
EVENTS: list[tuple[str, str, str, Callable[[np.random.Generator], np.ndarray]]] = [
    ("beeps", "/t/syn_beeps", "Beeps", _beeps),
    ("noise", "/t/syn_noise", "Noise", _noise),
    ("clicks", "/t/syn_clicks", "Clicks", _clicks),
    ("chirps", "/t/syn_chirps", "Chirps", _chirp),
    ("hum", "/t/syn_hum", "Hum", _tone(150.0)),
    ("whistle", "/t/syn_whistle", "Whistle", _tone(1200.0)),  # same sound as siren
    ("siren", "/t/syn_siren", "Siren", _tone(1200.0)),
]


def caption_for(first: int, second: int) -> str:
    # Long enough for BLEU-4 to have 4-grams to count.
    return f"the clip starts with {EVENTS[first][0]} and ends with {EVENTS[second][0]}"


def split_pairs(seed: int = 0, held_out: int = 8) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    pairs = list(itertools.permutations(range(len(EVENTS)), 2))
    random.Random(seed).shuffle(pairs)
    return sorted(pairs[held_out:]), sorted(pairs[:held_out])


def _write(path: str, items: list[tuple[int, int]], rng: np.random.Generator, id_base: int) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for n, (a, b) in enumerate(items):
            audio = np.concatenate([EVENTS[a][3](rng), EVENTS[b][3](rng)]).astype(np.float32)
            data = encode_flac(audio, RATE)
            ytid = f"syn{id_base + n:08d}"
            key = make_key(ytid, 0)
            meta = {
                "text": [caption_for(a, b)],
                "tag": [EVENTS[a][2], EVENTS[b][2]],
                "original_data": {
                    "ytid": ytid,
                    "start_seconds": 0.0,
                    "end_seconds": 1.0,
                    "mids": [EVENTS[a][1], EVENTS[b][1]],
                },
            }
            blob = json.dumps(meta).encode()
            for name, payload in ((f"{key}.flac", data), (f"{key}.json", blob)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def write_compositional_corpus(
    outdir: str, per_pair_train: int = 12, per_pair_val: int = 4, seed: int = 0, shards: int = 2
) -> tuple[str, str]:
    """Write train and held-out validation shards; returns their brace patterns."""
    rng = np.random.default_rng(seed)
    train_pairs, val_pairs = split_pairs(seed)
    train = [p for p in train_pairs for _ in range(per_pair_train)]
    random.Random(seed).shuffle(train)
    os.makedirs(os.path.join(outdir, "train"), exist_ok=True)
    os.makedirs(os.path.join(outdir, "val"), exist_ok=True)
    per_shard = -(-len(train) // shards)
    for s in range(shards):
        _write(
            os.path.join(outdir, "train", f"{s:06d}.tar"), train[s * per_shard : (s + 1) * per_shard], rng, s * 100000
        )
    val = [p for p in val_pairs for _ in range(per_pair_val)]
    _write(os.path.join(outdir, "val", "000000.tar"), val, rng, 9_000_000)
    return (
        os.path.join(outdir, "train", f"{{000000..{shards - 1:06d}}}.tar"),
        os.path.join(outdir, "val", "000000.tar"),
    )
