"""The captioner learns on a synthetic compositional corpus, and the tags guide it;
training checkpoints and resumes."""

import json

import pytest
import torch

from tagcap.pipeline.cli import MODEL_PRESETS
from tagcap.pipeline.synthetic import EVENTS, split_pairs, write_compositional_corpus
from tagcap.workers.train_captioner import TrainConfig, lr_factor, train_captioner

MODEL = {**MODEL_PRESETS["tiny"], "max_words": 10, "max_prefix_tags": 2, "dropout": 0.1}
STEPS = 200


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_compositional_corpus(str(tmp_path_factory.mktemp("synthetic")))


@pytest.fixture(scope="module")
def fusion_results(corpus, tmp_path_factory):
    train, val = corpus
    results = {}
    for fusion in ("add", "prefix", "none"):
        out = tmp_path_factory.mktemp(f"cap-{fusion}")
        results[fusion] = train_captioner(
            TrainConfig(
                train=[train],
                val=[val],
                out=str(out),
                model={**MODEL, "tag_fusion": fusion},
                steps=STEPS,
                batch_size=32,
                lr=3e-3,
                warmup_steps=30,
                eval_every=STEPS,
                log_every=100,
                checkpoint_every=STEPS,
                progress=False,
                shuffle_buffer=300,
            )
        )
    print("fusion results:", json.dumps(results, sort_keys=True))
    return results


def test_corpus_holds_out_combinations():
    train_pairs, val_pairs = split_pairs()
    assert not set(train_pairs) & set(val_pairs) and len(val_pairs) == 8
    seen = {e for p in train_pairs for e in p}
    assert seen == set(range(len(EVENTS)))  # every event is seen, only some pairs are not


def test_it_learns_and_tags_guide_it(fusion_results):
    add, prefix, none = (fusion_results[k] for k in ("add", "prefix", "none"))
    for r in (add, prefix, none):
        assert r["step"] == STEPS and r["val_clips"] == 32
    # learns: held-out combinations are captioned well above chance
    assert add["bleu4"] >= 60 and prefix["bleu4"] >= 60
    # tags guide it: whistle and siren sound the same, only the tags tell them apart
    assert add["bleu4"] > none["bleu4"] + 5 and prefix["bleu4"] > none["bleu4"] + 5
    assert add["exact_match"] > none["exact_match"] and prefix["exact_match"] > none["exact_match"]


def test_training_checkpoints_and_resumes(corpus, tmp_path):
    train, _val = corpus
    common = dict(
        train=[train],
        out=str(tmp_path / "ckpt"),
        model=MODEL,
        batch_size=8,
        lr=1e-3,
        warmup_steps=4,
        log_every=5,
        checkpoint_every=10,
        progress=False,
        shuffle_buffer=20,
    )
    first = train_captioner(TrainConfig(**common, steps=10))
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert first["step"] == 10 and state["step"] == 10
    # a longer run over the same folder resumes at step 10 with the learning-rate schedule
    # of a 20-step run continuing from there
    second = train_captioner(TrainConfig(**common, steps=20))
    assert second["step"] == 20
    lines = [json.loads(x) for x in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m.get("event")) for m in lines] == [
        (5, None),
        (10, None),
        (10, "resume"),
        (15, None),
        (20, None),
    ]
    lines.pop(2)
    # the optimizer's moments carried over: Adam counted 20 updates, not 10
    opt = torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True)
    assert int(next(iter(opt["optimizer"]["state"].values()))["step"]) == 20
    # lr logged after the scheduler stepped past step s-1, i.e. the factor of step s
    assert lines[2]["lr"] == pytest.approx(1e-3 * lr_factor(15, 4, 20))
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == 20


def test_lr_schedule():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.0)


def test_checkpoints_to_object_storage(corpus, s3):
    fs, options = s3
    fs.mkdir("tagcap-ckpt")
    train, _ = corpus
    common = dict(
        train=[train],
        out="s3://tagcap-ckpt/run",
        model=MODEL,
        batch_size=4,
        warmup_steps=1,
        log_every=2,
        checkpoint_every=2,
        progress=False,
        shuffle_buffer=10,
        storage_options=options,
    )
    train_captioner(TrainConfig(**common, steps=2))
    assert {"config.json", "model.safetensors", "vocab.json", "tags.json", "optimizer.pt", "state.json"} <= {
        p.rsplit("/", 1)[-1] for p in fs.ls("tagcap-ckpt/run")
    }
    assert train_captioner(TrainConfig(**common, steps=4))["step"] == 4
    assert json.loads(fs.cat_file("tagcap-ckpt/run/state.json"))["step"] == 4
