"""Batched beam search over a fixed-shape key/value cache, replayable as a CUDA graph.

Every buffer has a fixed shape (the cache spans the longest caption, unused positions are
masked), every step updates them in place, and nothing in a step reads a value back to the
host. On a GPU the step is captured once per shape as a CUDA graph and replayed; elsewhere
it runs eagerly. Both run the very same code. Why: docs/design/gpu-captioner.md.

Ranking follows :meth:`TagGuidedCaptioner.generate`'s contract: summed log-probability,
at least ``min_words`` words, ``<eos>`` forced at ``max_words``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tagcap.workers import call_trace
from tagcap.workers.models.vocab import BOS, EOS, PAD

if TYPE_CHECKING:
    from tagcap.workers.models.captioner import KV, TagGuidedCaptioner

# How often (in steps) a replayed search asks the GPU whether every hypothesis has ended.
# Each ask is a host synchronisation; extra steps after the end change nothing.
_FINISHED_CHECK_EVERY = 4


@dataclass(frozen=True)
class SearchShape:
    clips: int
    beams: int
    max_words: int
    min_words: int

    @property
    def rows(self) -> int:
        return self.clips * self.beams


@dataclass
class BeamState:
    """Every tensor one search reads or writes; the step updates them in place."""

    tokens: torch.Tensor  # (rows, max_words + 2) long: <bos>, then the word of step i at i + 1
    scores: torch.Tensor  # (clips, beams) float32 summed log-probabilities
    finished: torch.Tensor  # (rows,) bool
    keys: list[torch.Tensor]  # per decoder layer (rows, heads, positions, head_dim)
    values: list[torch.Tensor]
    prefix_valid: torch.Tensor  # (rows, positions) bool: tag-prefix slots that hold a tag
    cross: list[KV]  # per layer, the audio frames' keys and values (rows, heads, frames, head_dim)
    tag_add: torch.Tensor | None  # (rows, d_model) for `add` fusion
    step: torch.Tensor  # () long

    def load(self, other: BeamState) -> None:
        """Copy ``other``'s contents into these (a captured graph's) buffers."""
        for mine, theirs in zip(self._tensors(), other._tensors(), strict=True):
            mine.copy_(theirs)

    def _tensors(self) -> list[torch.Tensor]:
        out = [self.tokens, self.scores, self.finished, *self.keys, *self.values, self.prefix_valid, self.step]
        out += [t for kv in self.cross for t in kv]
        return [*out, self.tag_add] if self.tag_add is not None else out


def initial_state(
    model: TagGuidedCaptioner,
    shape: SearchShape,
    cross: list[KV],
    tag_add: torch.Tensor | None,
    prefix: tuple[torch.Tensor, torch.Tensor] | None,
) -> BeamState:
    """The state before the first word. ``cross`` and ``tag_add`` are already repeated per
    beam; ``prefix`` is (prefix embeddings, their mask) for `prefix` fusion."""
    rows, device = shape.rows, cross[0][0].device
    p = model.cfg.prefix_len
    positions = p + shape.max_words + 1
    layers = model.decoder_layers
    heads = layers[0].self_attn.heads
    head_dim = model.cfg.d_model // heads
    dtype = cross[0][0].dtype  # what the decoder computes in (bf16 under autocast)
    keys = [torch.zeros(rows, heads, positions, head_dim, dtype=dtype, device=device) for _ in layers]
    values = [torch.zeros_like(k) for k in keys]
    prefix_valid = torch.zeros(rows, positions, dtype=torch.bool, device=device)
    if prefix is not None:
        px, pmask = prefix
        _, caches = model._run_layers(px, cross, pmask)
        for (k, v), key_cache, value_cache in zip(caches, keys, values, strict=True):
            key_cache[:, :, :p] = k
            value_cache[:, :, :p] = v
        prefix_valid[:, :p] = pmask
    tokens = torch.full((rows, shape.max_words + 2), PAD, dtype=torch.long, device=device)
    tokens[:, 0] = BOS
    scores = torch.zeros(shape.clips, shape.beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
    return BeamState(
        tokens=tokens,
        scores=scores,
        finished=torch.zeros(rows, dtype=torch.bool, device=device),
        keys=keys,
        values=values,
        prefix_valid=prefix_valid,
        cross=cross,
        tag_add=tag_add,
        step=torch.zeros((), dtype=torch.long, device=device),
    )


def beam_step(model: TagGuidedCaptioner, state: BeamState, shape: SearchShape) -> None:
    """One word for every hypothesis, in place, without a host synchronisation."""
    rows, beams, device = shape.rows, shape.beams, state.tokens.device
    p = model.cfg.prefix_len
    positions = state.keys[0].shape[2]
    step = state.step
    where = (step + p).reshape(1)
    current = state.tokens.gather(1, step.expand(rows, 1))
    x = model.embed(current) + model.positions(where)
    if state.tag_add is not None:
        x = x + state.tag_add[:, None, :]
    slot = torch.arange(positions, device=device)
    mask = (state.prefix_valid | ((slot >= p) & (slot <= step + p)))[:, None, None, :]
    for i, layer in enumerate(model.decoder_layers):
        x = layer.cached_step(x, state.cross[i], mask, state.keys[i], state.values[i], where)
    logp = F.log_softmax(model.out(model.norm(x)[:, -1]).float(), dim=-1)

    vocab = logp.shape[1]
    word_ids = torch.arange(vocab, device=device)
    eos = word_ids == EOS
    ninf = float("-inf")
    logp = logp.masked_fill((word_ids == PAD) | (word_ids == BOS), ninf)
    logp = torch.where(eos & (step < shape.min_words), ninf, logp)  # at least min_words words
    logp = torch.where(~eos & (step == shape.max_words), ninf, logp)  # out of words: end here
    ended = torch.where(eos, 0.0, ninf)  # a finished hypothesis stays as it is
    logp = torch.where(state.finished[:, None], ended, logp)

    candidates = (state.scores.reshape(-1, 1) + logp).reshape(shape.clips, beams * vocab)
    scores, flat = candidates.topk(beams, dim=1)
    word = (flat % vocab).reshape(-1)
    order = (torch.arange(shape.clips, device=device)[:, None] * beams + flat // vocab).reshape(-1)
    state.scores.copy_(scores)
    state.tokens.copy_(state.tokens[order])
    state.tokens.scatter_(1, (step + 1).expand(rows, 1), word[:, None])
    state.finished.copy_(state.finished[order] | (word == EOS))
    for cache in (*state.keys, *state.values):
        cache.copy_(cache[order])
    state.step.add_(1)


class _CapturedSearch:
    """One shape's beam step, captured as a CUDA graph over its own state buffers."""

    def __init__(self, model: TagGuidedCaptioner, shape: SearchShape, template: BeamState):
        self.shape = shape
        self.state = BeamState(
            tokens=template.tokens.clone(),
            scores=template.scores.clone(),
            finished=template.finished.clone(),
            keys=[t.clone() for t in template.keys],
            values=[t.clone() for t in template.values],
            prefix_valid=template.prefix_valid.clone(),
            cross=[(k.clone(), v.clone()) for k, v in template.cross],
            tag_add=template.tag_add.clone() if template.tag_add is not None else None,
            step=template.step.clone(),
        )
        device = template.tokens.device
        # The caller's autocast, without its weight-cast cache: a cast cached during the
        # capture would point into the graph's private memory.
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.autocast(device.type, dtype, enabled=autocast, cache_enabled=False):
            for _ in range(2):  # warm-up: cuBLAS handles and workspaces exist before capture
                beam_step(model, self.state, shape)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with (
            torch.cuda.graph(self.graph, capture_error_mode="thread_local"),
            torch.autocast(device.type, dtype, enabled=autocast, cache_enabled=False),
        ):
            beam_step(model, self.state, shape)

    def run(self, start: BeamState) -> BeamState:
        self.state.load(start)
        for step in range(self.shape.max_words + 1):
            self.graph.replay()
            if (step + 1) % _FINISHED_CHECK_EVERY == 0 and bool(self.state.finished.all()):
                break
        return self.state


class GraphCache:
    """Captured searches by shape. Batch sizes are rounded up to a multiple of ``bucket``
    clips, so that units that lost a few clips to errors share a graph instead of each
    capturing (and holding GPU memory for) their own.

    A capture must not overlap any other GPU work of the process (PyTorch's default stream
    synchronises with the capturing one, and a replay during a capture is refused): the
    captioner actor runs two calls at once, so it captures every shape it will need before
    its first call (:meth:`freeze`), and a frozen cache runs shapes it lacks eagerly. Replays
    take turns (a lock): a search's state buffers belong to its graph."""

    def __init__(self, bucket: int = 32) -> None:
        self.bucket = bucket
        self.frozen = False
        self._lock = threading.Lock()
        self._graphs: dict[SearchShape, _CapturedSearch] = {}

    def padded_clips(self, clips: int) -> int:
        return -(-clips // self.bucket) * self.bucket

    def freeze(self) -> None:
        self.frozen = True

    def run(
        self, model: TagGuidedCaptioner, shape: SearchShape, start: BeamState
    ) -> tuple[list[list[int]], list[list[float]]] | None:
        """Token rows and scores of the replayed search; None where a frozen cache lacks
        the shape."""
        with self._lock:
            call_trace.mark("search_turn")
            captured = self._graphs.get(shape)
            if captured is None:
                if self.frozen:
                    return None
                captured = self._graphs[shape] = _CapturedSearch(model, shape, start)
            state = captured.run(start)
            return state.tokens[:, 1:].tolist(), state.scores.tolist()


def run_search(
    model: TagGuidedCaptioner, shape: SearchShape, start: BeamState, graphs: GraphCache | None
) -> tuple[list[list[int]], list[list[float]]]:
    """Token rows (without ``<bos>``) and per-clip scores of a finished search. CUDA graphs
    exist on GPUs only: elsewhere, and for shapes a frozen cache lacks, the step runs
    eagerly."""
    if graphs is not None and start.tokens.device.type == "cuda":
        replayed = graphs.run(model, shape, start)
        if replayed is not None:
            return replayed
    state = start
    for _ in range(shape.max_words + 1):
        beam_step(model, state, shape)
        if bool(state.finished.all()):
            break
    return state.tokens[:, 1:].tolist(), state.scores.tolist()
