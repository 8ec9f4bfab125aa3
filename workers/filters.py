"""Caption filters: score candidate captions against their audio with a contrastive model
and keep or reject them.

``--filter clap:CKPT`` loads a checkpoint written by ``tagcap pretrain``. Rules
(``--filter-rule``):

* ``best>=T`` (BLAT, default T=0.5): keep the best-scoring candidate if its cosine
  similarity to the audio is at least T;
* ``beats-tags`` (AudioSetCaps): keep the best candidate only if it scores at least as
  well as the plain tag string ("Dog, Bark").

A rejected clip's result carries ``error="filtered"`` and its best score, so it becomes an
error row with reason ``filtered`` and the counts still reconcile.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from tagcap.schemas.work import CaptionResult, StageOutput
from tagcap.workers.filter_rules import FilterRule
from tagcap.workers.model_input import model_waveforms
from tagcap.workers.models.clap import load_clap, load_clap_sha
from tagcap.workers.storage import Storage


def parse_filter_spec(spec: str) -> str:
    """The checkpoint URL of ``clap:CKPT``."""
    kind, sep, target = spec.partition(":")
    if kind != "clap" or not sep or not target:
        raise ValueError(f"unknown filter {spec!r} (expected clap:CHECKPOINT)")
    return target


def describe_filter(spec: str, rule: str, storage: Storage) -> dict[str, Any]:
    """Validate on the driver (checkpoint present, rule known) without loading the model."""
    target = parse_filter_spec(spec)
    parsed = FilterRule.parse(rule)
    try:
        sha = load_clap_sha(target, storage)
    except FileNotFoundError as exc:
        raise ValueError(f"filter checkpoint incomplete or missing: {exc}") from None
    return {"filter": "clap", "checkpoint_sha256": sha, "rule": str(parsed)}


class ClapFilter:
    def __init__(self, spec: str, rule: str, storage: Storage):
        self.rule = FilterRule.parse(rule)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.sha256 = load_clap(parse_filter_spec(spec), storage, self.device)

    @torch.no_grad()
    def scores(self, waveforms: np.ndarray, sample_rate: int, texts: list[list[str]]) -> list[list[float]]:
        """Cosine similarity of each clip to each of its texts."""
        rate = self.model.cfg.frontend.sample_rate
        batch = model_waveforms(waveforms, sample_rate, rate, self.model.clip_samples, self.device)
        audio = self.model.embed_audio(batch).float()
        flat = [t for row in texts for t in row]
        text = self.model.embed_text(flat).float() if flat else torch.zeros(0, audio.shape[1])
        out, k = [], 0
        for i, row in enumerate(texts):
            sims = (text[k : k + len(row)] @ audio[i]).tolist()
            out.append([round(float(s), 6) for s in sims])
            k += len(row)
        return out

    def apply(
        self, results: list[CaptionResult], waveforms: np.ndarray, sample_rate: int, tags: list[list[str]]
    ) -> list[CaptionResult]:
        """Each clip's candidates scored against its audio, beside the plain tag string; the
        best kept or the clip rejected by the rule. The scores go into the clip's
        ``filter`` stage output either way."""
        texts = []
        for r, t in zip(results, tags, strict=True):
            cands = list(r.candidates) if r.candidates else ([r.text] if r.text else [])
            texts.append([*cands, ", ".join(t)])
        scores = self.scores(waveforms, sample_rate, texts)
        out = []
        for r, cands, s in zip(results, texts, scores, strict=True):
            if r.text is None:
                out.append(r)
                continue
            candidate_scores, tag_score = s[:-1], s[-1]
            best, kept = self.rule.pick(candidate_scores, tag_score)
            output = StageOutput("filter", {"scores": candidate_scores, "tag_score": tag_score, "kept": kept})
            stages = (*r.stages, output)
            if kept:
                out.append(replace(r, text=cands[best], score=candidate_scores[best], stages=stages))
            else:
                out.append(
                    replace(
                        r,
                        text=None,
                        score=candidate_scores[best],
                        error="filtered",
                        error_stage="filter",
                        stages=stages,
                    )
                )
        return out
