"""A captioner checkpoint folder's files (``config.json``, ``model.safetensors``,
``vocab.json``, ``tags.json``), and what the driver reads from them without torch: the
model's configuration and the weights' digest, which names the captioner. Loading and
saving the model itself: ``checkpoint``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tagcap.schemas.layout import join_url
from tagcap.workers.models.configs import CaptionerConfig
from tagcap.workers.storage import Storage


def captioner_id(weights_sha256: str) -> str:
    return f"blat-{weights_sha256[:16]}"


def read_config(url: str, storage: Storage) -> CaptionerConfig:
    raw = json.loads(storage.read_bytes(join_url(url, "config.json")))
    return CaptionerConfig.from_dict(raw["model"])


@dataclass(frozen=True)
class CheckpointWeights:
    """``model.safetensors`` as read, and its sha256 (which names the captioner)."""

    data: bytes
    sha256: str


def read_weights(url: str, storage: Storage) -> CheckpointWeights:
    data = storage.read_bytes(join_url(url, "model.safetensors"))
    return CheckpointWeights(data, hashlib.sha256(data).hexdigest())


def weights_sha256(url: str, storage: Storage, chunk: int = 8 << 20) -> str:
    """The digest alone, read in chunks: the driver names the captioner without ever
    holding its weights (hundreds of MB) in memory."""
    digest = hashlib.sha256()
    with storage.open_stream(join_url(url, "model.safetensors"), buffer_size=chunk) as fh:
        while data := fh.read(chunk):
            digest.update(data)
    return digest.hexdigest()
