"""Training examples streamed from WebDataset shards of (audio, tags, caption).

Reads tagcap's own output shards and LAION-CLAP-style shards alike: the audio is the first
member with an audio extension, the captions are ``json["text"]`` (a string or a list),
the tags are ``json["original_data"]["mids"]`` (tagcap) or ``json["mids"]``. Composed of
small stages over iterators in webdataset's manner; samples that fail to decode are
skipped with a warning rather than stopping training.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import braceexpand
import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from tagcap.workers.audio import AUDIO_EXTENSIONS, read_mono, resample
from tagcap.workers.exclusion import Exclusions
from tagcap.workers.storage import Storage


@dataclass
class AudioTextExample:
    key: str
    waveform: np.ndarray  # float32 (clip_samples,)
    captions: list[str]
    mids: list[str]


def expand_urls(urls: list[str] | str) -> list[str]:
    """Brace patterns expanded, in order (webdataset expands only a lone string)."""
    items = [urls] if isinstance(urls, str) else list(urls)
    return [u for item in items for u in braceexpand.braceexpand(item)]


def sample_json(sample: dict[str, Any]) -> dict[str, Any]:
    raw = sample.get("json")
    if raw is None:
        return {}
    return json.loads(raw) if isinstance(raw, (bytes, str)) else raw


def sample_captions(meta: dict[str, Any]) -> list[str]:
    text = meta.get("text", [])
    return [text] if isinstance(text, str) else [t for t in text if isinstance(t, str)]


def sample_mids(meta: dict[str, Any]) -> list[str]:
    original = meta.get("original_data") or {}
    return list(original.get("mids") or meta.get("mids") or [])


def crop(wave: np.ndarray, length: int, rng: random.Random | None) -> np.ndarray:
    """Random crop (training, rng given) or first ``length`` samples, zero-padded."""
    if wave.shape[0] > length:
        start = rng.randrange(wave.shape[0] - length + 1) if rng is not None else 0
        return wave[start : start + length]
    out = np.zeros(length, wave.dtype)
    out[: wave.shape[0]] = wave
    return out


def decode_audio_member(sample: dict[str, Any], sample_rate: int | None) -> np.ndarray:
    """Mono float32 at ``sample_rate`` (``None``: at the file's own rate, see
    :func:`decode_native`)."""
    mono, rate = decode_native(sample)
    return mono if sample_rate is None else resample(mono, rate, sample_rate)


def decode_native(sample: dict[str, Any], pcm16: bool = False) -> tuple[np.ndarray, int]:
    """(mono, rate) of the sample's audio member, at the file's own rate: float32, or int16
    with ``pcm16`` where the encoding fits it exactly (the training loader's transport)."""
    for ext in AUDIO_EXTENSIONS:
        if ext in sample:
            mono, rate = read_mono(sample[ext], pcm16)
            if mono.dtype == np.float32 and not np.isfinite(mono).all():
                raise ValueError("non-finite audio")
            return mono, rate
    raise KeyError(f"no audio member among {sorted(k for k in sample if not k.startswith('__'))}")


def open_with_fsspec(storage: Storage):
    """A webdataset stage opening shard URLs through tagcap's storage module, so every
    fsspec URL works and no ``pipe:`` command is ever run (webdataset's own opener shells
    out for some schemes)."""

    def stage(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in src:
            yield {**item, "stream": storage.open_read(item["url"])}

    return stage


def tar_samples(storage: Storage, handler=wds.reraise_exception):
    """url dicts -> samples (dicts of members by extension), via fsspec."""

    def stage(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        files = tar_file_expander(open_with_fsspec(storage)(src), handler=handler)
        return group_by_keys(files, handler=handler)

    return stage


def drop_excluded(exclusions: Exclusions):
    """Samples whose key no exclusion list names (``tagcap pretrain --exclude-keys``)."""

    def stage(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in src:
            if not exclusions.excludes_key(sample["__key__"]):
                yield sample

    return stage


def to_examples(
    samples: Iterator[dict[str, Any]], sample_rate: int, clip_samples: int, train: bool, seed: int = 0
) -> Iterator[AudioTextExample]:
    rng = random.Random(seed) if train else None
    for sample in samples:
        meta = sample_json(sample)
        captions = sample_captions(meta)
        if not captions:
            continue
        wave = decode_audio_member(sample, sample_rate)
        yield AudioTextExample(sample["__key__"], crop(wave, clip_samples, rng), captions, sample_mids(meta))


def example_stream(
    urls: list[str] | str,
    sample_rate: int,
    clip_samples: int,
    train: bool,
    seed: int = 0,
    shuffle_buffer: int = 1000,
    storage: Storage | None = None,
) -> wds.DataPipeline:
    """Training: endless, resampled shards, shuffled, split by node and worker.
    Evaluation: one ordered pass."""
    storage = storage or Storage()
    urls = expand_urls(urls)
    stages: list[Any]
    if train:
        stages = [
            wds.ResampledShards(urls, seed=seed, deterministic=True),
            tar_samples(storage, wds.warn_and_continue),
            wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), rng=random.Random(seed)),
        ]
    else:
        stages = [
            wds.SimpleShardList(urls),
            wds.split_by_node,
            wds.split_by_worker,
            tar_samples(storage, wds.warn_and_continue),
        ]
    stages.append(lambda src: to_examples(src, sample_rate, clip_samples, train, seed))
    return wds.DataPipeline(*stages)


def read_captions(
    urls: list[str] | str, storage: Storage | None = None
) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(captions, mids, tag names) of every sample, in order (for building vocabularies)."""
    for sample in wds.DataPipeline(wds.SimpleShardList(expand_urls(urls)), tar_samples(storage or Storage())):
        meta = sample_json(sample)
        yield sample_captions(meta), sample_mids(meta), list(meta.get("tag") or [])
