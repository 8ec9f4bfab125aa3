"""The caption filter keeps and rejects as its rule says, with reproducible scores."""

import json

import numpy as np
import pytest

from tagcap.pipeline.caption import ConfigError, run_caption
from tagcap.schemas.config import CaptionConfig
from tagcap.schemas.work import CaptionResult
from tagcap.workers.filters import ClapFilter, FilterRule
from tagcap.workers.storage import Storage
from tests.helpers import check_output


def test_rule_parsing():
    assert FilterRule.parse("best>=0.5") == FilterRule("best", 0.5)
    assert str(FilterRule.parse("best>=-0.25")) == "best>=-0.25"
    assert FilterRule.parse("beats-tags").kind == "beats-tags"
    with pytest.raises(ValueError):
        FilterRule.parse("best>0.5")


def test_rules_keep_and_reject_by_their_scores(clap_ckpt):
    rng = np.random.default_rng(0)
    waves = (rng.standard_normal((3, 16000)) * 0.2).astype(np.float32)
    candidates = [("a dog barks", "a cat meows"), ("rain falls on a roof", "an engine idles"), ("dog, bark",)]
    tags = [["Dog", "Bark"], ["Rain"], ["Dog", "Bark"]]
    results = [CaptionResult(text=c[0], candidates=c) for c in candidates]
    probe = ClapFilter(f"clap:{clap_ckpt}", "best>=-1", Storage())
    scores = probe.scores(waves, 16000, [list(c) for c in candidates])
    again = ClapFilter(f"clap:{clap_ckpt}", "best>=-1", Storage()).scores(waves, 16000, [list(c) for c in candidates])
    assert scores == again  # reproducible
    best = [max(s) for s in scores]

    # best>=T with T between the clips' best scores: the higher clip is kept, the lower rejected
    lo, hi = sorted(best[:2])
    rule = f"best>={(lo + hi) / 2:.6f}"
    out = ClapFilter(f"clap:{clap_ckpt}", rule, Storage()).apply(results[:2], waves[:2], 16000, tags[:2])
    for r, s, cands in zip(out, scores[:2], candidates[:2], strict=True):
        if max(s) >= (lo + hi) / 2:
            assert r.text == cands[int(np.argmax(s))] and r.score == max(s)
        else:
            assert r.text is None and r.error == "filtered" and r.score == max(s)
    assert sum(r.text is None for r in out) == 1

    # beats-tags: kept exactly when the best candidate scores at least the tag string
    tag_scores = probe.scores(waves, 16000, [[", ".join(t)] for t in tags])
    out = ClapFilter(f"clap:{clap_ckpt}", "beats-tags", Storage()).apply(results, waves, 16000, tags)
    for r, s, t in zip(out, scores, tag_scores, strict=True):
        assert (r.text is not None) == (max(s) >= t[0])
    assert out[2].text == "dog, bark"  # the tag string itself always ties with itself


def test_filter_in_the_caption_pipeline(ray_local, sample_input, clap_ckpt, tmp_path):
    def cfg(out, rule):
        return CaptionConfig(
            input=[sample_input.shards],
            segments=[sample_input.segments],
            labels=sample_input.labels,
            output=str(out),
            filter=f"clap:{clap_ckpt}",
            filter_rule=rule,
            progress=False,
        )

    assert run_caption(cfg(tmp_path / "keep", "best>=-1")) == 0
    kept = check_output(str(tmp_path / "keep"), expected_inputs=24)
    assert len(kept.samples) == 24
    meta = json.loads(kept.samples[0]["json"])["caption_meta"]
    assert -1 <= meta["clap_score"] <= 1 and meta["params"]["filter"]["rule"] == "best>=-1"
    assert all(r["clap_score"] is not None for r in kept.index_rows)
    assert kept.manifest["filter_params"]["checkpoint_sha256"]

    assert run_caption(cfg(tmp_path / "reject", "best>=1.01")) == 0
    rejected = check_output(str(tmp_path / "reject"), expected_inputs=24)
    assert not rejected.samples and {r["reason"] for r in rejected.error_rows} == {"filtered"}

    with pytest.raises(ConfigError, match="filter"):
        run_caption(cfg(tmp_path / "bad", "best>0.5"))
