"""A run as a chain of model stages: caption, then rewrite (``lm:`` or a plugin), then
filter, each in its own pool of actors; provenance of every stage, error rows by stage,
retries when a stage's actor dies, resume and byte-identical reruns."""

import json
import os

import pytest

from tagcap.pipeline.caption import ConfigError, run_caption
from tagcap.schemas.work import CaptionedUnit, CaptionResult
from tagcap.workers.stages import build_stage, describe_stage
from tagcap.workers.stages.lm import DEFAULT_INSTRUCTION
from tests import tiny_models
from tests.helpers import check_output, sample_config, tar_digests

TAG_REWRITER = "tests.plugins:TagRewriter"


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    return tiny_models.causal_lm(str(tmp_path_factory.mktemp("lm") / "causal-lm"))


def _unit() -> CaptionedUnit:
    results = [
        CaptionResult(text="a beep", candidates=("a beep",)),
        CaptionResult(text=None, error="empty caption"),
        CaptionResult(text="x", answers=("first answer", "second answer")),
    ]
    return CaptionedUnit(results, 0.0, 1.0, tags=[["Beep, bleep"], ["Tick"], ["Sine wave", "Tick"]])


def test_the_lm_rewriter_reads_answers_or_candidates_and_keeps_every_variant(lm_folder):
    rewriter = build_stage("rewrite", f"lm:{lm_folder}", {"variants": 2, "num_beams": 2, "max_new_tokens": 6})
    assert rewriter.info.stage == "rewrite" and rewriter.info.model_id == f"lm-{rewriter.info.sha256[:16]}"
    assert rewriter.info.params["instruction"] == DEFAULT_INSTRUCTION
    prompt = rewriter.runtime.prompt(["Sine wave", "Tick"], ["first answer", "second answer"])
    assert "Sine wave, Tick" in prompt and "first answer\nsecond answer" in prompt and "25 words" in prompt
    out = rewriter(_unit())
    assert out.results[1] == _unit().results[1]  # failed upstream: untouched
    for i, source in ((0, ["a beep"]), (2, ["first answer", "second answer"])):
        result = out.results[i]
        (stage,) = result.stages
        assert stage.stage == "rewrite" and stage.output["input"] == source and len(stage.output["rewrites"]) == 2
        if result.text is not None:
            assert result.text == result.candidates[0] and set(result.candidates) <= set(stage.output["rewrites"])
        else:
            assert result.error_stage == "rewrite" and result.error == "empty rewrite"
    # Greedy batched equals one clip at a time.
    greedy = build_stage("rewrite", f"lm:{lm_folder}", {"max_new_tokens": 6})
    together = greedy(_unit()).results
    unit = _unit()
    alone = [
        greedy(CaptionedUnit([r], 0.0, 1.0, tags=[t])).results[0] for r, t in zip(unit.results, unit.tags, strict=True)
    ]
    assert together == alone


def test_a_row_that_fails_alone_fails_only_itself(lm_folder, monkeypatch):
    rewriter = build_stage("rewrite", f"lm:{lm_folder}", {"max_new_tokens": 4})
    model = rewriter.runtime.model
    real = model.generate
    bad = rewriter.runtime.tokenizer(rewriter.runtime.prompt(["Sine wave", "Tick"], ["first answer", "second answer"]))

    def generate(**inputs):
        # Any batch holding the third clip's prompt fails, as one poisonous row would.
        rows = inputs["input_ids"].tolist()
        if any(row[-len(bad["input_ids"]) :] == bad["input_ids"] for row in rows):
            raise RuntimeError("CUDA out of memory on this row")
        return real(**inputs)

    monkeypatch.setattr(model, "generate", generate)
    out = rewriter(_unit()).results
    assert out[0].text is not None and out[0].stages
    assert out[2].text is None and out[2].error_stage == "rewrite" and "out of memory" in out[2].error


def test_bad_stage_specs_and_options_fail_before_ray(lm_folder, sample_input, tmp_path):
    with pytest.raises(ValueError, match="unknown rewrite"):
        describe_stage("rewrite", "gpt:thing", {})
    with pytest.raises(ValueError, match="no such model folder"):
        describe_stage("rewrite", f"lm:{tmp_path / 'nope'}", {})
    with pytest.raises(ValueError, match="3 variants need num_beams >= 3 or do_sample"):
        describe_stage("rewrite", f"lm:{lm_folder}", {"variants": 3})
    with pytest.raises(ValueError, match="may name only"):
        describe_stage("rewrite", f"lm:{lm_folder}", {"instruction": "{caption}"})
    cfg = sample_config(sample_input, tmp_path / "out", rewrite=f"lm:{tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match=r"--rewrite lm:.*no such model folder"):
        run_caption(cfg)
    with pytest.raises(ValueError, match=r"stages.rewrite: unknown key\(s\) gpus"):
        sample_config(sample_input, tmp_path / "out", rewrite=f"lm:{lm_folder}", stages={"rewrite": {"gpus": 1}})
    assert not (tmp_path / "out").exists()


def test_caption_rewrite_filter_chain_records_every_stage_and_reruns_byte_identical(
    ray_local, sample_input, lm_folder, clap_ckpt, tmp_path
):
    def run(name):
        out = tmp_path / name
        cfg = sample_config(
            sample_input,
            out,
            rewrite=f"lm:{lm_folder}",
            rewrite_options={"variants": 2, "num_beams": 2, "max_new_tokens": 6},
            filter=f"clap:{clap_ckpt}",
            filter_rule="best>=-1",
            stages={"rewrite": {"actors": 1, "batch_size": 8}, "filter": {"batch_size": 5}},
        )
        assert run_caption(cfg) == 0
        return str(out)

    first, second = run("a"), run("b")
    assert tar_digests(first) == tar_digests(second)
    o = check_output(first, expected_inputs=24)
    assert len(o.samples) == 24  # best>=-1 keeps every clip: each one's provenance is checked
    stages = [s["stage"] for s in o.manifest["stages"]]
    assert stages == ["rewrite", "filter"]
    for sample in o.samples:
        meta = json.loads(sample["json"])["caption_meta"]
        rewrite, flt = meta["stages"]
        assert rewrite["stage"] == "rewrite" and rewrite["model"].startswith("lm-") and len(rewrite["sha256"]) == 64
        assert rewrite["params"]["variants"] == 2 and rewrite["params"]["instruction"] == DEFAULT_INSTRUCTION
        assert rewrite["output"]["input"] and len(rewrite["output"]["rewrites"]) == 2
        assert flt["stage"] == "filter" and flt["params"]["rule"] == "best>=-1"
        assert flt["output"]["kept"] and len(flt["output"]["scores"]) <= len(rewrite["output"]["rewrites"])
        assert -1 <= flt["output"]["tag_score"] <= 1 and meta["clap_score"] == max(flt["output"]["scores"])
        text = json.loads(sample["json"])["text"][0]
        assert text in rewrite["output"]["rewrites"]


def test_a_rewrite_plugin_errors_by_stage_retries_a_dead_actor_and_resumes(ray_local, sample_input, tmp_path):
    counter = tmp_path / "calls"
    out = tmp_path / "out"

    def cfg(**options):
        return sample_config(
            sample_input,
            out,
            rewrite=TAG_REWRITER,
            rewrite_options={"counter": str(counter), "die_at": 2, "fail_tick": True},
            **options,
        )

    assert run_caption(cfg()) == 0
    assert int(counter.read_text()) >= 5  # 4 units, one call lost with the actor and retried
    o = check_output(str(out), expected_inputs=24)
    ticks = [r for r in o.error_rows if r["stage"] == "rewrite"]
    assert ticks and all(r["reason"] == "rewrite_error" and r["detail"] == "no ticks" for r in ticks)
    for sample in o.samples:
        record = json.loads(sample["json"])
        assert record["text"][0].endswith(f"({', '.join(record['tag'])})")
        assert record["caption_meta"]["stages"][0]["model"] == "test-tag-rewriter"
    before = tar_digests(str(out))
    # Resume: one shard lost, the rerun redoes it alone, to the same bytes.
    shard = sorted(before)[1]
    os.remove(out / shard)
    os.remove(out / shard.replace(".tar", ".stats.json"))
    assert run_caption(cfg()) == 0
    assert tar_digests(str(out)) == before


def test_a_plain_run_keeps_the_identity_it_had_before_the_stage_chain(sample_input, tmp_path):
    """The chain's fields are left out of a run's identity while unset, so outputs of
    earlier tagcap versions still resume; set, they are in it."""
    plain = sample_config(sample_input, tmp_path / "out").identity_fields()
    assert not {"rewrite", "rewrite_options", "from_corpus", "stages"} & set(plain)
    chained = sample_config(sample_input, tmp_path / "out", rewrite=TAG_REWRITER).identity_fields()
    assert chained["rewrite"] == TAG_REWRITER


def test_stage_flags_go_over_the_yaml_stages_mapping_key_by_key(tmp_path):
    from tagcap.pipeline.cli import build_parser, caption_config

    config_file = tmp_path / "run.yaml"
    config_file.write_text("stages: {rewrite: {actors: 3, threads: 2}, filter: {batch_size: 16}}\n")
    args = build_parser().parse_args(
        ["caption", "--config", str(config_file), "--input", "x.tar", "--segments", "s.csv", "--labels", "l.csv",
         "--output", str(tmp_path / "out"), "--rewrite", TAG_REWRITER, "--rewrite-gpus-per-actor", "0.5",
         "--filter-actors", "2"]
    )  # fmt: skip
    config = caption_config(args)
    rewrite, flt = config.stage_resources("rewrite"), config.stage_resources("filter")
    assert (rewrite.actors, rewrite.threads, rewrite.gpus_per_actor, rewrite.cpus) == (3, 2, 0.5, 0.0)
    assert (flt.actors, flt.batch_size, flt.gpus_per_actor, flt.cpus) == (2, 16, 0.0, 1.0)
