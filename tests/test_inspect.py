"""``tagcap inspect``: the summary reconciles with the run, and the report renders in a real
browser with its plots on the page."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tagcap.pipeline.corpus_summary import summarize
from tests.helpers import check_output, cli_env, tagcap_cmd

N_GOOD = 24  # sample_input: 4 shards x 6 clips
BAR_BLUE = (0x3B, 0x6E, 0xA5)  # report._COLOR
ERROR_RED = (0xB5, 0x47, 0x3A)


def test_summary_reconciles_with_the_output(blat_corpus):
    o = check_output(str(blat_corpus))
    s = summarize(str(blat_corpus))
    assert s.status == "complete" and s.shards_committed == s.shards_total == 5
    assert s.samples_written == len(o.samples) == N_GOOD
    assert s.samples_failed == len(o.error_rows) == 3
    assert s.samples_in == s.samples_written + s.samples_failed
    assert sum(s.errors_by_reason.values()) == 3 and len(s.errors_by_reason) >= 2
    assert s.errors_by_reason == {
        r: sum(1 for e in o.error_rows if e["reason"] == r) for r in {e["reason"] for e in o.error_rows}
    }
    texts = [json.loads(x["json"])["text"] for x in o.samples]
    assert s.captions_per_clip == {len(texts[0]): N_GOOD}
    assert s.captions_total == sum(len(t) for t in texts) == sum(s.caption_words.values())
    assert s.distinct_captions == len({c for t in texts for c in t})
    words = {w for t in texts for c in t for w in c.lower().replace(",", " ").split()}
    assert s.vocabulary_size == len(words)
    tags = [tag for x in o.samples for tag in json.loads(x["json"])["tag"]]
    assert dict(s.top_tags) == {t: tags.count(t) for t in set(tags)}
    assert s.label_classes == 6 and s.tag_coverage == pytest.approx(len(set(tags)) / 6, abs=1e-4)
    logprob = s.scores["logprob"]
    assert logprob.count == N_GOOD and sum(logprob.bin_counts) == N_GOOD
    assert logprob.min <= logprob.median <= logprob.max < 0
    assert s.scores["clap_score"].count == 0  # no filter in this run
    assert [p.clips_total for p in s.throughput][-1] == s.samples_in
    assert s.clips_per_second and s.clips_per_second > 0


def test_inspect_an_empty_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run(tagcap_cmd("inspect", str(tmp_path)), capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 2
    assert "no tagcap output here" in proc.stderr and "Traceback" not in proc.stderr


def _pixels_of(image: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> np.ndarray:
    return np.all(np.abs(image[..., :3].astype(int) - np.array(rgb)) <= tol, axis=-1)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_headless_chromium(blat_corpus, tmp_path):
    report = tmp_path / "report"
    proc = subprocess.run(
        tagcap_cmd("inspect", str(blat_corpus), "--report", str(report), "--no-progress"),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["samples_written"] == N_GOOD
    assert f"report: {report}/report.html" in proc.stderr
    page = (report / "report.html").read_text()
    for png in ("errors", "captions_per_clip", "caption_length", "top_tags", "scores", "throughput"):
        assert f'src="{png}.png"' in page and (report / f"{png}.png").stat().st_size > 1000

    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            *("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"),
            *("--window-size=1000,3000", f"--screenshot={shot}", (report / "report.html").as_uri()),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (3000, 1000)
    # What a person would see: the bars of the plots drawn (the PNGs loaded, not broken-image
    # icons), the red error bars among them, and the plots stacked down the page.
    blue = _pixels_of(image, BAR_BLUE)
    assert blue.sum() > 20_000
    assert _pixels_of(image, ERROR_RED).sum() > 500
    rows_with_bars = np.flatnonzero(blue.any(axis=1))
    assert rows_with_bars.max() - rows_with_bars.min() > 1500
    # The summary table's text is dark ink on the white page, above the first plot.
    top = image[: rows_with_bars.min()]
    assert (top.min(axis=-1) < 80).sum() > 2000
