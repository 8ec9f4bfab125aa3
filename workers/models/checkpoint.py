"""Captioner checkpoints: a folder of ``model.safetensors`` + ``config.json`` +
``vocab.json`` + ``tags.json``, at a local path or any fsspec URL (the folder's files and
what can be read from it without torch: ``checkpoint_files``).

Loading never unpickles: weights come from safetensors, everything else from JSON. The
captioner's id is ``blat-<sha256 of model.safetensors, first 16 hex>``; the full digest is
recorded as ``checkpoint_sha256``.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tagcap.schemas.layout import join_url
from tagcap.workers.models.captioner import TagGuidedCaptioner
from tagcap.workers.models.checkpoint_files import CheckpointWeights, captioner_id, read_config, read_weights
from tagcap.workers.models.vocab import TagVocabulary, Vocabulary
from tagcap.workers.storage import Storage


@dataclass
class CaptionerCheckpoint:
    model: TagGuidedCaptioner
    vocab: Vocabulary
    tags: TagVocabulary
    sha256: str

    @property
    def captioner_id(self) -> str:
        return captioner_id(self.sha256)


def state_bytes(model: torch.nn.Module) -> bytes:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(state, metadata={"format": "pt"})


def save_captioner(
    url: str, model: TagGuidedCaptioner, vocab: Vocabulary, tags: TagVocabulary, storage: Storage
) -> str:
    """Write the folder; returns the sha256 of its weights. The weights are published
    last so a reader never sees new weights with an old config."""
    storage.makedirs(url)
    weights = state_bytes(model)
    storage.publish_bytes(json.dumps({"model": model.cfg.to_dict()}, indent=1).encode(), join_url(url, "config.json"))
    storage.publish_bytes(vocab.to_json().encode(), join_url(url, "vocab.json"))
    storage.publish_bytes(tags.to_json().encode(), join_url(url, "tags.json"))
    storage.publish_bytes(weights, join_url(url, "model.safetensors"))
    return hashlib.sha256(weights).hexdigest()


def load_captioner(
    url: str,
    storage: Storage,
    device: str | torch.device = "cpu",
    weights: Future[CheckpointWeights] | None = None,
) -> CaptionerCheckpoint:
    """The checkpoint's model on ``device``, in eval mode. ``weights``: the weights already
    being read elsewhere (``BlatCaptioner`` reads and hashes them while torch imports); the
    model is built meanwhile, and waits for them only to load them."""
    cfg = read_config(url, storage)
    vocab = Vocabulary.from_json(storage.read_text(join_url(url, "vocab.json")))
    tags = TagVocabulary.from_json(storage.read_text(join_url(url, "tags.json")))
    if len(vocab) != cfg.vocab_size or len(tags) != cfg.n_tags:
        raise ValueError(f"{url}: vocabulary sizes do not match config.json")
    # Built on the device: its random initialisation, about to be overwritten, costs the
    # CPU 0.6 s for a BLAT-size model (2-core machine), and a GPU next to nothing.
    with torch.device(device):
        model = TagGuidedCaptioner(cfg)
    loaded = weights.result() if weights is not None else read_weights(url, storage)
    model.load_state_dict(load_safetensors(loaded.data))
    model.to(device).eval()  # anything made off the device by its own choice
    return CaptionerCheckpoint(model, vocab, tags, loaded.sha256)
