"""The BLAT captioner's model in an actor: loaded once, on the actor's GPU when it has
one, bf16 autocast there, the beam search replayed as a CUDA graph captured at warm-up.
Options and description: ``blat``."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import torch

from tagcap.schemas.work import CaptionResult, ModelBatch
from tagcap.workers import call_trace
from tagcap.workers.model_input import model_waveforms
from tagcap.workers.models.beam_search import GraphCache
from tagcap.workers.models.captioner import Generated
from tagcap.workers.models.checkpoint import load_captioner
from tagcap.workers.models.checkpoint_files import CheckpointWeights
from tagcap.workers.storage import Storage


class BlatRuntime:
    def __init__(
        self,
        target: str,
        storage: Storage,
        params: dict[str, Any],
        cuda_graphs: bool,
        weights: Future[CheckpointWeights] | None = None,
    ):
        self.params = params
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.ckpt = load_captioner(target, storage, self.device, weights)
        self._cuda_graphs = self.device.type == "cuda" and cuda_graphs
        # Made by warm_up, which captures before any concurrent call; until then (or with
        # cuda_graphs off, or on a CPU) the search runs eagerly.
        self.graphs: GraphCache | None = None

    def warm_up(self, batch_size: int, clip_samples: int) -> None:
        """Capture the beam search's CUDA graph before calls run concurrently, then freeze
        the cache (a capture must not overlap other GPU work, see ``GraphCache``). One
        graph, for ``batch_size`` clips: smaller batches (a unit that lost clips to errors)
        are padded to it after the encoder, which costs a little decoder work and saves a
        capture (and its GPU memory) per batch size."""
        if not self._cuda_graphs:
            return
        self.graphs = GraphCache(bucket=batch_size)
        silence = torch.zeros(batch_size, clip_samples, device=self.device)
        self._generate(silence, [[] for _ in range(batch_size)])
        self.graphs.freeze()

    def _generate(self, wave: torch.Tensor, tag_idx: list[list[int]]) -> Generated:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.ckpt.model.generate(
                wave,
                tag_idx,
                beam_size=self.params["beam_size"],
                max_words=self.params["max_words"],
                min_words=self.params["min_words"],
                graphs=self.graphs,
            )

    def caption(self, batch: ModelBatch, model_rate: int, clip_samples: int) -> list[CaptionResult]:
        vocab = self.ckpt.vocab
        call_trace.begin(len(batch))
        wave = model_waveforms(batch.waveforms, batch.sample_rate, model_rate, clip_samples, self.device)
        call_trace.mark("to_gpu")
        out = self._generate(wave, [self.ckpt.tags.indices(m) for m in batch.mids])
        call_trace.mark("search")
        results = []
        for hyps, scores in zip(out.tokens, out.scores, strict=True):
            texts = [vocab.decode(h) for h in hyps]
            if not texts[0]:
                results.append(CaptionResult(text=None, error="empty caption"))
                continue
            results.append(
                CaptionResult(
                    text=texts[0],
                    logprob=round(float(scores[0]), 4),
                    candidates=tuple(texts[: self.params["candidates"]]),
                )
            )
        call_trace.mark("results")
        call_trace.end()
        return results
