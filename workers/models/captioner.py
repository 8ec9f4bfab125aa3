"""BLAT's tag-guided captioner: CNN14-style encoder, a small Transformer decoder, and the
clip's AudioSet tags fused into the decoder.

Tag fusion:

* ``add`` (BLAT): the tags as a multi-hot vector normalised to sum 1, times a learnable
  tag-embedding matrix, added to every decoder input embedding;
* ``prefix``: one learned token per tag placed before ``<bos>`` (padded slots masked);
* ``none``: the audio alone (ablation).

Generation is batched beam search over a key/value cache: the encoder's cross-attention
keys and values are computed once, each step feeds only the newest token. Greedy decoding
is beam search with one beam. Hypotheses are ranked by summed log-probability (no length
penalty); every hypothesis has at least ``min_words`` words (default 1, so a caption is
never empty) and ends at ``<eos>`` or at ``max_words`` words.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagcap.workers import call_trace
from tagcap.workers.models.beam_search import GraphCache, SearchShape, initial_state, run_search
from tagcap.workers.models.cnn14 import CNN14Encoder
from tagcap.workers.models.configs import CaptionerConfig
from tagcap.workers.models.frontend import LogMel
from tagcap.workers.models.vocab import EOS, PAD

# -- attention with a cache -------------------------------------------------------------
KV = tuple[torch.Tensor, torch.Tensor]


class Attention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.dropout = dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def kv(self, x: torch.Tensor) -> KV:
        return self.split(self.k(x)), self.split(self.v(x))

    def forward(self, x: torch.Tensor, kv: KV, mask: torch.Tensor | None) -> torch.Tensor:
        q = self.split(self.q(x))
        out = F.scaled_dot_product_attention(
            q, kv[0], kv[1], attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        b, h, n, dh = out.shape
        return self.o(out.transpose(1, 2).reshape(b, n, h * dh))


class DecoderLayer(nn.Module):
    """Pre-norm: self-attention, cross-attention to the audio frames, feed-forward."""

    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        d = cfg.d_model
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.n_heads, cfg.dropout)
        self.cross_attn = Attention(d, cfg.n_heads, cfg.dropout)
        self.ff = nn.Sequential(nn.Linear(d, cfg.d_ff), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.d_ff, d))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cross: KV, self_mask: torch.Tensor) -> tuple[torch.Tensor, KV]:
        """Every position of ``x`` at once (training, the tag prefix); returns the new
        positions' keys and values too."""
        h = self.norm1(x)
        kv = self.self_attn.kv(h)
        return self._attend(x, h, kv, self_mask, cross), kv

    def cached_step(
        self, x: torch.Tensor, cross: KV, mask: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, at: torch.Tensor
    ) -> torch.Tensor:
        """One new position ``x`` (B, 1, d) written into fixed-size caches at position
        ``at`` (a 1-element tensor, so the step never reads it on the host); ``mask``
        (B, 1, 1, positions) says which cached positions exist."""
        h = self.norm1(x)
        k, v = self.self_attn.kv(h)
        keys.index_copy_(2, at, k.to(keys.dtype))
        values.index_copy_(2, at, v.to(values.dtype))
        return self._attend(x, h, (keys, values), mask, cross)

    def _attend(self, x: torch.Tensor, h: torch.Tensor, kv: KV, self_mask: torch.Tensor, cross: KV) -> torch.Tensor:
        x = x + self.drop(self.self_attn(h, kv, self_mask))
        x = x + self.drop(self.cross_attn(self.norm2(x), cross, None))
        return x + self.drop(self.ff(self.norm3(x)))


@dataclass
class Generated:
    """Per clip: hypotheses best first, their token ids and summed log-probabilities."""

    tokens: list[list[list[int]]]
    scores: list[list[float]]


class TagGuidedCaptioner(nn.Module):
    def __init__(self, cfg: CaptionerConfig):
        super().__init__()
        self.cfg = cfg
        self.frontend = LogMel(cfg.frontend)
        self.encoder = CNN14Encoder(cfg.encoder)
        self.memory_proj = nn.Linear(self.encoder.out_dim, cfg.d_model)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD)
        self.positions = nn.Embedding(cfg.prefix_len + cfg.max_words + 2, cfg.d_model)
        if cfg.tag_fusion == "add":
            # Unit scale, like the word embeddings: the normalised multi-hot then adds a
            # vector of the same magnitude as a word's, which the decoder can use at once.
            self.tag_embed = nn.Parameter(torch.randn(cfg.n_tags, cfg.d_model))
        elif cfg.tag_fusion == "prefix":
            self.tag_tokens = nn.Embedding(cfg.n_tags + 1, cfg.d_model, padding_idx=cfg.n_tags)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.vocab_size)

    # -- pieces ---------------------------------------------------------------------
    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]

    @property
    def clip_samples(self) -> int:
        return round(self.cfg.frontend.sample_rate * self.cfg.clip_seconds)

    def tag_inputs(self, tag_indices: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised multi-hot (B, n_tags), prefix ids (B, P) padded with n_tags).

        Built on the CPU with NumPy, one scatter each, and moved in one copy each
        (docs/design/gpu-captioner.md)."""
        b, n_tags, width = len(tag_indices), self.cfg.n_tags, self.cfg.prefix_len
        lengths = np.fromiter((len(idx) for idx in tag_indices), dtype=np.int64, count=b)
        tags = np.fromiter(itertools.chain.from_iterable(tag_indices), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(b), lengths)
        multi_hot = np.zeros((b, n_tags), dtype=np.float32)
        multi_hot[rows, tags] = 1.0
        multi_hot /= np.maximum(multi_hot.sum(axis=1, keepdims=True), np.float32(1.0))
        prefix = np.full((b, width), n_tags, dtype=np.int64)
        if width:
            position = np.arange(tags.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            first = position < width  # a row's first ``width`` tags, in its order
            prefix[rows[first], position[first]] = tags[first]
        return (
            torch.from_numpy(multi_hot).to(device, non_blocking=True),
            torch.from_numpy(prefix).to(device, non_blocking=True),
        )

    def encode(self, waveforms: torch.Tensor) -> torch.Tensor:
        frames, _ = self.encoder(self.frontend(waveforms))
        return self.memory_proj(frames)

    def _cross_kv(self, memory: torch.Tensor) -> list[KV]:
        return [layer.cross_attn.kv(memory) for layer in self.decoder_layers]

    def _embed_tokens(self, tokens: torch.Tensor, start: int, tag_add: torch.Tensor | None) -> torch.Tensor:
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.positions(pos)
        return x + tag_add[:, None, :] if tag_add is not None else x

    def _prefix(self, prefix_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings and their key mask (True = attend)."""
        pos = torch.arange(prefix_ids.shape[1], device=prefix_ids.device)
        x = self.tag_tokens(prefix_ids) + self.positions(pos)
        return x, prefix_ids != self.cfg.n_tags

    def _tag_add(self, multi_hot: torch.Tensor) -> torch.Tensor | None:
        if self.cfg.tag_fusion != "add":
            return None
        return multi_hot.to(self.tag_embed.dtype) @ self.tag_embed

    def _run_layers(self, x: torch.Tensor, cross: list[KV], key_mask: torch.Tensor) -> tuple[torch.Tensor, list[KV]]:
        """x: (B, n, d) every position; key_mask: (B, n) which may be attended to; causal.
        Returns the normed output and each layer's keys and values (the prefix pass of
        generation seeds its cache with them)."""
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        # Every position may attend to itself: a padded prefix slot would otherwise see no
        # key at all, and its NaN would leak through the cache into real positions.
        own = torch.eye(n, dtype=torch.bool, device=x.device)
        mask = ((causal[None, :, :] & key_mask[:, None, :]) | own[None])[:, None]  # B 1 n n
        new: list[KV] = []
        for i, layer in enumerate(self.decoder_layers):
            x, kv = layer(x, cross[i], mask)
            new.append(kv)
        return self.norm(x), new

    # -- training -------------------------------------------------------------------
    def forward(self, waveforms: torch.Tensor, tag_indices: list[list[int]], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing. tokens: (B, L) <bos> w.. <eos> <pad>..; returns logits for
        positions 0..L-2 predicting tokens[:, 1:]."""
        memory = self.encode(waveforms)
        cross = self._cross_kv(memory)
        multi_hot, prefix_ids = self.tag_inputs(tag_indices, waveforms.device)
        inp = tokens[:, :-1]
        x = self._embed_tokens(inp, self.cfg.prefix_len, self._tag_add(multi_hot))
        key_mask = inp != PAD
        key_mask[:, 0] = True
        if self.cfg.prefix_len:
            px, pmask = self._prefix(prefix_ids)
            x = torch.cat([px, x], dim=1)
            key_mask = torch.cat([pmask, key_mask], dim=1)
        h, _ = self._run_layers(x, cross, key_mask)
        return self.out(h[:, self.cfg.prefix_len :])

    def loss(self, waveforms: torch.Tensor, tag_indices: list[list[int]], tokens: torch.Tensor) -> torch.Tensor:
        logits = self(waveforms, tag_indices, tokens)
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=PAD
        )

    # -- generation -----------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        waveforms: torch.Tensor,
        tag_indices: list[list[int]],
        beam_size: int = 3,
        max_words: int | None = None,
        min_words: int = 1,
        graphs: GraphCache | None = None,
    ) -> Generated:
        """Batched beam search (see ``beam_search``). ``graphs``: replay each step as a
        CUDA graph captured once per batch size rounded up to the cache's bucket (the
        extra rows empty and dropped); on a CPU the padded search runs eagerly. The same
        results either way."""
        max_words = min(max_words or self.cfg.max_words, self.cfg.max_words)
        b, k, device = waveforms.shape[0], beam_size, waveforms.device
        memory = self.encode(waveforms)
        call_trace.mark("encode")
        multi_hot, prefix_ids = self.tag_inputs(tag_indices, device)
        call_trace.mark("tag_inputs")
        clips = graphs.padded_clips(b) if graphs is not None else b
        if clips > b:  # rows that only keep the graph's shape: no audio, no tags, ignored
            memory = F.pad(memory, (0, 0, 0, 0, 0, clips - b))
            multi_hot = F.pad(multi_hot, (0, 0, 0, clips - b))
            prefix_ids = F.pad(prefix_ids, (0, 0, 0, clips - b), value=self.cfg.n_tags)
        cross = self._cross_kv(memory.repeat_interleave(k, dim=0))
        tag_add = self._tag_add(multi_hot.repeat_interleave(k, dim=0))
        prefix = self._prefix(prefix_ids.repeat_interleave(k, dim=0)) if self.cfg.prefix_len else None
        shape = SearchShape(clips=clips, beams=k, max_words=max_words, min_words=min_words)
        start = initial_state(self, shape, cross, tag_add, prefix)
        call_trace.mark("search_inputs")
        rows, scores = run_search(self, shape, start, graphs)
        out_tokens: list[list[list[int]]] = []
        for i in range(b):
            hyps = []
            for j in range(k):
                seq = rows[i * k + j]
                hyps.append(seq[: seq.index(EOS)] if EOS in seq else seq)
            out_tokens.append(hyps)
        return Generated(out_tokens, scores[:b])
