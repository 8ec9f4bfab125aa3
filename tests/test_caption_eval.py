"""``tagcap eval captions``: a corpus's captions against the real AudioCaps, MusicCaps and
Clotho references, joined by YouTube id and start (by file name for Clotho), scored per
captioner and per stage with BLEU-4, ROUGE-L, CIDEr-D and METEOR, and reported by inspect."""

import csv
import json
import random
from collections import defaultdict

import numpy as np
import pytest

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.caption_eval import parse_references
from tagcap.pipeline.cli import main
from tagcap.pipeline.corpus_summary import summarize
from tagcap.schemas.config import CaptionConfig
from tagcap.workers.caption_metrics import java, score_captions
from tests.builders import encode, make_tar, segments_csv
from tests.conftest import shared_data

AUDIOCAPS = ("captions", "audiocaps", "test.csv")
MUSICCAPS = ("captions", "musiccaps", "musiccaps-public.csv")
CLOTHO = ("captions", "clotho", "clotho_captions_evaluation.csv")


def _first(parts: tuple[str, ...], n: int) -> list[tuple[str, int, str, str]]:
    """(ytid, start ms, first caption, file name) of the first ``n`` clips of a reference file."""
    refs = parse_references(shared_data(*parts).read_bytes(), "/".join(parts))
    if refs.by_segment:
        return [(y, ms, caps[0], "") for (y, ms), caps in list(refs.by_segment.items())[:n]]
    return [(f"clotho{i:05d}", 0, caps[0], name) for i, (name, caps) in enumerate(list(refs.by_file.items())[:n])]


def test_reference_files_are_recognised_and_bad_ones_refused():
    audiocaps = parse_references(shared_data(*AUDIOCAPS).read_bytes(), "test.csv")
    assert audiocaps.kind == "audiocaps" and audiocaps.clips == 975
    assert all(len(c) == 5 for c in audiocaps.by_segment.values())
    assert parse_references(shared_data(*MUSICCAPS).read_bytes(), "mc.csv").kind == "musiccaps"
    clotho = parse_references(shared_data(*CLOTHO).read_bytes(), "clotho.csv")
    assert clotho.kind == "clotho" and len(clotho.by_file["Santa Motor"]) == 5
    with pytest.raises(ValueError, match="none of AudioCaps"):
        parse_references(b"a,b\n1,2\n", "x.csv")


def test_human_captions_score_between_themselves_and_shuffled_ones():
    refs: dict[str, list[str]] = defaultdict(list)
    with open(shared_data(*AUDIOCAPS), newline="") as fh:
        for row in csv.DictReader(fh):
            refs[f"{row['youtube_id']}_{row['start_time']}"].append(row["caption"])
    ids = sorted(refs)[:400]
    held_out = {i: refs[i][0] for i in ids}
    rest = {i: refs[i][1:] for i in ids}
    perm = ids[:]
    random.Random(0).shuffle(perm)
    human = score_captions(held_out, rest, use_java=False)
    shuffled = score_captions({i: refs[p][0] for i, p in zip(ids, perm, strict=True)}, rest, use_java=False)
    assert human.tokenizer == "regex" and human.meteor is None
    # One annotator against the other four: far above chance, far below a perfect match.
    assert 0.3 < human.cider_d < 1.5 and shuffled.cider_d < 0.1
    assert human.bleu_4 > 3 * shuffled.bleu_4 and human.rouge_l > shuffled.rouge_l + 0.1


def test_own_captions_score_far_above_shuffled_per_stage_and_land_in_inspect(ray_local, tmp_path):
    clips = _first(AUDIOCAPS, 40) + _first(MUSICCAPS, 20) + _first(CLOTHO, 10)
    members, rows, captions = [], [], {}
    noise = np.random.default_rng(0)
    for ytid, ms, caption, name in clips:
        audio = encode((0.1 * noise.standard_normal(8000)).astype(np.float32), 16000)
        stem = name.rsplit(".", 1)[0] if name else f"Y{ytid}_{ms}"
        members.append((f"{stem}.flac", audio))
        if name:
            members.append((f"{stem}.json", json.dumps({"ytid": ytid, "start_seconds": 0}).encode()))
        rows.append((ytid, ms / 1000, ms / 1000 + 10, ["/m/09x0r"]))
        captions[f"Y{ytid}_{ms}"] = caption
    make_tar(members, str(tmp_path / "in.tar"))
    (tmp_path / "segments.csv").write_text(segments_csv(rows))
    texts = list(captions.values())
    shuffled = texts[1:] + texts[:1]  # every caption moved to another clip
    out = tmp_path / "out"
    cfg = CaptionConfig(
        input=[str(tmp_path / "in.tar")],
        segments=[str(tmp_path / "segments.csv")],
        labels=str(shared_data("audioset", "class_labels_indices.csv")),
        output=str(out),
        progress=False,
        captioner="tests.plugins:LookupCaptioner",
        captioner_options={"captions": captions},
        rewrite="tests.plugins:LookupRewriter",
        rewrite_options={"rewrites": dict(zip(texts, shuffled, strict=True))},
    )
    assert run_caption(cfg) == 0

    refs = [str(shared_data(*p)) for p in (AUDIOCAPS, MUSICCAPS, CLOTHO)]
    argv = ["eval", "captions", str(out)] + [a for r in refs for a in ("--references", r)]
    assert main(argv) == 0
    result = json.loads((out / "eval" / "captions.json").read_text())
    assert result["samples"] == 70 and result["matched"] == 70
    by_stage = {(r["captioner"], r["stage"]): r for r in result["results"]}
    own, moved = by_stage[("test-lookup", "caption")], by_stage[("test-lookup", "rewrite")]
    assert own["clips"] == moved["clips"] == 70
    assert own["cider_d"] > 10 * moved["cider_d"] and own["bleu_4"] > 5 * moved["bleu_4"]
    assert own["rouge_l"] > moved["rouge_l"] + 0.3
    if java():
        assert own["tokenizer"] == "ptb" and own["meteor"] > 2 * moved["meteor"]
    assert "spice" in result["not_computed"] and "spider" in result["not_computed"]
    quality = summarize(str(out)).to_dict()["caption_quality"]
    assert quality["matched"] == 70 and len(quality["results"]) == 2
    assert main(["eval", "captions", str(out)]) == 2  # no --references
