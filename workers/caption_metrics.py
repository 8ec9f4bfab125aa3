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
    return score_caption_sets({"": candidates}, references, use_java)[""]


def score_caption_sets(
    sets: dict[str, dict[str, str]], references: dict[str, list[str]], use_java: bool = True
) -> dict[str, CaptionScores]:
    """Score several sets of candidates (name -> clip id -> caption), each against the
    ``references`` of its clips, with one tokenizer run and one METEOR process for all."""
    for name, candidates in sets.items():
        if not candidates:
            raise ValueError(f"no clip to score in {name or 'the candidates'}")
        if not set(candidates) <= set(references):
            raise ValueError(f"{name or 'the candidates'}: clips without references")
    _package_dir()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ref_ids = sorted({i for c in sets.values() for i in c})
    names = sorted(sets)
    flat = [sets[n][i] for n in names for i in sorted(sets[n])] + [r for i in ref_ids for r in references[i]]
    java_path = java() if use_java else None
    tokens = iter(_ptb_tokenize(flat, java_path) if java_path else _regex_tokenize(flat))
    res_by_set = {n: {i: [next(tokens)] for i in sorted(sets[n])} for n in names}
    gts_all = {i: [next(tokens) for _ in references[i]] for i in ref_ids}
    meteor_scorer = None
    notes = dict(UNAVAILABLE)
    if java_path:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor_scorer = Meteor()
    else:
        notes["meteor"] = "needs Java (not found)"
    out = {}
    try:
        for n in names:
            res = res_by_set[n]
            gts = {i: gts_all[i] for i in res}
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            rouge, _ = Rouge().compute_score(gts, res)
            cider, _ = Cider().compute_score(gts, res)
            meteor = meteor_scorer.compute_score(gts, res)[0] if meteor_scorer else None
            tokenizer = "ptb" if java_path else "regex"
            out[n] = CaptionScores(len(res), float(bleu[3]), float(rouge), float(cider), meteor, tokenizer, notes)
    finally:
        del meteor_scorer
    return out
