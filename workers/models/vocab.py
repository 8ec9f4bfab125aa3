"""Word vocabulary for the captioner, built from the training captions and saved with
the model (``vocab.json``), and the tag vocabulary (``tags.json``: MIDs and names)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words; punctuation dropped (captions are scored on words)."""
    return _WORD_RE.findall(text.lower())


@dataclass
class Vocabulary:
    words: list[str]  # index -> word, specials first

    def __post_init__(self) -> None:
        if tuple(self.words[:4]) != SPECIALS:
            raise ValueError("vocabulary must begin with <pad> <bos> <eos> <unk>")
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted(w for w, n in counts.items() if n >= min_count)  # sorted: reproducible ids
        return cls([*SPECIALS, *words])

    def encode(self, text: str, max_len: int) -> list[int]:
        """<bos> w1 .. wn <eos>, with at most ``max_len`` words."""
        ids = [self.index.get(w, UNK) for w in tokenize(text)][:max_len]
        return [BOS, *ids, EOS]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.words[i] if 0 <= i < len(self.words) else "<unk>")
        return " ".join(out)

    def to_json(self) -> str:
        return json.dumps({"words": self.words}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls(list(json.loads(text)["words"]))


@dataclass
class TagVocabulary:
    mids: list[str]
    names: list[str]

    def __post_init__(self) -> None:
        self.index = {m: i for i, m in enumerate(self.mids)}

    def __len__(self) -> int:
        return len(self.mids)

    def indices(self, mids: Iterable[str]) -> list[int]:
        """Known MIDs' indices, in input order, duplicates dropped; unknown MIDs ignored."""
        seen: list[int] = []
        for m in mids:
            i = self.index.get(m)
            if i is not None and i not in seen:
                seen.append(i)
        return seen

    def to_json(self) -> str:
        return json.dumps({"mids": self.mids, "names": self.names}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> TagVocabulary:
        raw = json.loads(text)
        return cls(list(raw["mids"]), list(raw["names"]))
