"""Caption metrics against human references: BLEU-4, ROUGE-L, CIDEr-D and, where Java runs,
METEOR, computed by ``pycocoevalcap`` (the COCO caption evaluation code, which the audio
captioning benchmarks' tools are built on), installed with ``pip install 'tagcap[eval]'``.

Tokenization is the benchmarks' own where Java runs: Stanford's PTBTokenizer from the jar that
``pycocoevalcap`` ships, lower-cased, with its punctuation tokens dropped. Without Java the
captions are lower-cased and split into words and apostrophe forms by a regular expression,
and METEOR is left out; the result says which tokenizer ran.

SPICE, and so SPIDEr (the mean of CIDEr-D and SPICE), need the Stanford CoreNLP models that
``pycocoevalcap`` downloads at first use: they are not computed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

UNAVAILABLE = {
    "spice": "needs the Stanford CoreNLP 3.6.0 models, which pycocoevalcap downloads at first use (not offline)",
    "spider": "the mean of CIDEr-D and SPICE: needs SPICE",
}
_PTB_PUNCTUATION = {
    "''",
    "'",
    "``",
    "`",
    "-lrb-",
    "-rrb-",
    "-lcb-",
    "-rcb-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class CaptionScores:
    """Corpus-level scores of one set of candidate captions (one per clip)."""

    clips: int
    bleu_4: float
    rouge_l: float
    cider_d: float
    meteor: float | None  # None without Java
    tokenizer: str  # "ptb" or "regex"
    notes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "clips": self.clips,
            "bleu_4": round(self.bleu_4, 4),
            "rouge_l": round(self.rouge_l, 4),
            "cider_d": round(self.cider_d, 4),
            "meteor": round(self.meteor, 4) if self.meteor is not None else None,
            "tokenizer": self.tokenizer,
        }


def _package_dir() -> str:
    try:
        import pycocoevalcap
    except ImportError:
        raise ValueError("caption metrics need pycocoevalcap: pip install 'tagcap[eval]'") from None
    return str(next(iter(pycocoevalcap.__path__)))  # a namespace package: no __file__


def java() -> str | None:
    """The Java runtime on PATH, if it starts."""
    path = shutil.which("java")
    if path is None:
        return None
    try:
        subprocess.run([path, "-version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return path


def _ptb_tokenize(sentences: list[str], java_path: str) -> list[str]:
    """PTBTokenizer over every sentence at once (one JVM), one line in, one line out."""
    jar = os.path.join(_package_dir(), "tokenizer", "stanford-corenlp-3.4.1.jar")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as fh:
        fh.write("\n".join(s.replace("\n", " ") for s in sentences))
        path = fh.name
    try:
        argv = [java_path, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        out = subprocess.run(argv, capture_output=True, check=True, timeout=1800).stdout.decode("utf-8")
    finally:
        os.unlink(path)
    lines = out.split("\n")[: len(sentences)]
    if len(lines) != len(sentences):
        raise RuntimeError(f"PTBTokenizer gave {len(lines)} lines for {len(sentences)} sentences")
    return [" ".join(w for w in line.split() if w not in _PTB_PUNCTUATION) for line in lines]


def _regex_tokenize(sentences: list[str]) -> list[str]:
    return [" ".join(_WORD.findall(s.lower())) for s in sentences]


def score_captions(
    candidates: dict[str, str], references: dict[str, list[str]], use_java: bool = True
) -> CaptionScores:
    """Score ``candidates`` (clip id -> caption) against ``references`` (clip id -> human
    captions); both over the same ids."""
    if set(candidates) != set(references):
        raise ValueError("candidates and references must cover the same clips")
    if not candidates:
        raise ValueError("no clip to score")
    _package_dir()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids = sorted(candidates)
    flat = [candidates[i] for i in ids] + [r for i in ids for r in references[i]]
    java_path = java() if use_java else None
    tokens = _ptb_tokenize(flat, java_path) if java_path else _regex_tokenize(flat)
    res = {i: [tokens[n]] for n, i in enumerate(ids)}
    gts: dict[str, list[str]] = {}
    at = len(ids)
    for i in ids:
        gts[i] = tokens[at : at + len(references[i])]
        at += len(references[i])
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    meteor = None
    notes = dict(UNAVAILABLE)
    if java_path:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            meteor, _ = scorer.compute_score(gts, res)
        finally:
            del scorer
    else:
        notes["meteor"] = "needs Java (not found)"
    return CaptionScores(
        len(ids), float(bleu[3]), float(rouge), float(cider), meteor, "ptb" if java_path else "regex", notes
    )
