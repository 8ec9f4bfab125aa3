"""Caption filter rules, without torch: which candidate a filter keeps, from its scores.

* ``best>=T`` (BLAT, default T=0.5): keep the best-scoring candidate if its cosine
  similarity to the audio is at least T;
* ``beats-tags`` (AudioSetCaps): keep the best candidate only if it scores at least as
  well as the plain tag string ("Dog, Bark").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_BEST_RE = re.compile(r"^best>=(?P<t>-?\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class FilterRule:
    kind: str  # "best" | "beats-tags"
    threshold: float | None = None

    @classmethod
    def parse(cls, text: str) -> FilterRule:
        text = text.strip()
        if text == "beats-tags":
            return cls("beats-tags")
        match = _BEST_RE.match(text)
        if match:
            return cls("best", float(match["t"]))
        raise ValueError(f"unknown filter rule {text!r} (expected best>=T or beats-tags)")

    def __str__(self) -> str:
        return "beats-tags" if self.kind == "beats-tags" else f"best>={self.threshold:g}"

    def pick(self, candidate_scores: Sequence[float], tag_score: float) -> tuple[int, bool]:
        """(the best candidate's index, whether the rule keeps it)."""
        best = max(range(len(candidate_scores)), key=candidate_scores.__getitem__)
        bar = tag_score if self.kind == "beats-tags" else float(self.threshold or 0.0)
        return best, candidate_scores[best] >= bar
