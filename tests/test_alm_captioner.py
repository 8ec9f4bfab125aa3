"""``--captioner alm:FOLDER`` on tiny random audio-language models of two families
(Qwen2-Audio, Audio Flamingo 3) saved to temporary folders, with tokenizers trained here."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from tagcap.pipeline.caption import ConfigError, run_caption
from tagcap.schemas.work import ModelBatch
from tagcap.workers.captioners import CaptionerSpecError, build, describe
from tagcap.workers.captioners.alm import PROMPT_CHAINS
from tests import tiny_models
from tests.helpers import caption_args, check_output, cli_env, sample_config, tagcap_cmd, tar_digests

FAMILIES = ("qwen2_audio", "audio_flamingo3")


@pytest.fixture(scope="module")
def alm_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("alm")
    return {
        "qwen2_audio": tiny_models.qwen2_audio(str(root / "qwen2-audio")),
        "audio_flamingo3": tiny_models.audio_flamingo3(str(root / "audio-flamingo3")),
    }


def _batch(n: int = 4, seconds: float = 2.0, rate: int = 48000) -> ModelBatch:
    rng = np.random.default_rng(1)
    # Each clip its own loudness, so the model's input differs from row to row.
    waves = np.stack([rng.standard_normal(int(seconds * rate)) * (500 + 3000 * i) for i in range(n)])
    tags = [["Sine wave"], ["White noise", "Tick"], ["Chirp tone"], ["Pink noise", "Beep, bleep", "Tick"]][:n]
    return ModelBatch(waves.astype(np.int16), rate, tags, [[] for _ in range(n)], [f"k{i}" for i in range(n)])


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_batched_equals_one_clip_at_a_time_over_a_chain_of_prompts(alm_folders, family):
    options = {"prompt_chain": "audiosetcaps", "max_new_tokens": 6, "clip_seconds": 2.0}
    cap = build(f"alm:{alm_folders[family]}", options)
    assert cap.info.sample_rate == 16000 and cap.info.clip_seconds == 2.0
    assert cap.info.params["prompts"] == list(PROMPT_CHAINS["audiosetcaps"])
    batch = _batch()
    together = cap(batch)
    alone = [cap(batch.slice(i, i + 1))[0] for i in range(len(batch))]
    assert together == alone
    for result in together:
        assert result.error is None and len(result.answers) == 3
        assert result.text == " ".join(result.answers)
    # The prompts name the tags: the same audio under other tags is asked another question.
    retagged = ModelBatch(batch.waveforms, batch.sample_rate, [["Tick"]] * 4, batch.mids, batch.keys)
    prompts = [cap.runtime._conversation(t, [], 0) for t in (batch.tags[0], retagged.tags[0])]
    assert "Sine wave" in json.dumps(prompts[0]) and "Sine wave" not in json.dumps(prompts[1])


def test_batches_split_by_batch_rows_and_beam_search_give_the_same_as_one_call(alm_folders):
    folder = alm_folders["qwen2_audio"]
    base = {"prompts": ["What do you hear? Tags: {tags}."], "max_new_tokens": 5, "clip_seconds": 2.0, "num_beams": 2}
    whole = build(f"alm:{folder}", base)(_batch())
    split = build(f"alm:{folder}", {**base, "batch_rows": 3})(_batch())
    assert whole == split and all(r.text for r in whole)


def test_seeded_sampling_repeats_and_the_seed_changes_it(alm_folders):
    folder = alm_folders["audio_flamingo3"]
    opts = {"do_sample": True, "temperature": 1.5, "max_new_tokens": 8, "clip_seconds": 2.0}
    first = build(f"alm:{folder}", {**opts, "seed": 1})(_batch())
    again = build(f"alm:{folder}", {**opts, "seed": 1})(_batch())
    other = build(f"alm:{folder}", {**opts, "seed": 2})(_batch())
    assert first == again
    assert [r.text for r in first] != [r.text for r in other]


def test_the_description_records_the_model_prompts_and_generation(alm_folders):
    info = describe(f"alm:{alm_folders['qwen2_audio']}", {"prompts": ["Tags {tags}: describe."], "num_beams": 3})
    assert info.captioner_id.startswith("alm-") and info.captioner_id[4:] == info.checkpoint_sha256[:16]
    assert info.params["architecture"] == "Qwen2AudioForConditionalGeneration"
    assert info.params["prompts"] == ["Tags {tags}: describe."] and info.params["num_beams"] == 3
    assert info.clip_seconds == 10.0  # AudioSet's clip length, within Qwen2-Audio's 30 s


def test_bad_model_folders_fail_fast_with_one_line(alm_folders, tmp_path):
    good = alm_folders["qwen2_audio"]

    def broken(name, change):
        folder = tmp_path / name
        shutil.copytree(good, folder)
        change(folder)
        return f"alm:{folder}"

    cases = {
        f"alm:{tmp_path / 'missing'}": "no such model folder",
        broken("pickled", lambda f: os.rename(f / "model.safetensors", f / "pytorch_model.bin")): "no .safetensors",
        broken("no-template", lambda f: os.remove(f / "chat_template.jinja")): "no chat template",
        broken("no-processor", lambda f: os.remove(f / "processor_config.json")): "no processor_config.json",
        broken("no-config", lambda f: os.remove(f / "config.json")): "no config.json",
        broken(
            "unknown-arch",
            lambda f: (f / "config.json").write_text(
                json.dumps({**json.loads((f / "config.json").read_text()), "architectures": ["NoSuchModel"]})
            ),
        ): "has no NoSuchModel",
    }
    for spec, message in cases.items():
        with pytest.raises(CaptionerSpecError, match=message):
            describe(spec)
    for options, message in [
        ({"prompts": ["a {tags}"], "prompt_chain": "audiosetcaps"}, "not both"),
        ({"prompt_chain": "nope"}, "unknown prompt_chain"),
        ({"prompts": ["{labels}"]}, "may name only"),
        ({"clip_seconds": 31}, "clip_seconds"),
    ]:
        with pytest.raises(CaptionerSpecError, match=message):
            describe(f"alm:{good}", options)


def test_a_missing_folder_fails_before_ray_starts_in_one_line(sample_input, tmp_path):
    args = caption_args(sample_input, str(tmp_path / "out"), "--captioner", f"alm:{tmp_path / 'nope'}")
    proc = subprocess.run(tagcap_cmd(*args), env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such model folder" in lines[0], proc.stderr
    assert "Ray" not in proc.stderr and not (tmp_path / "out").exists()


def test_alm_end_to_end_records_every_answer_and_reruns_byte_identical(ray_local, sample_input, alm_folders, tmp_path):
    options = {"prompt_chain": "audiosetcaps", "max_new_tokens": 5, "clip_seconds": 2.0}
    runs = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        cfg = sample_config(
            sample_input, out, captioner=f"alm:{alm_folders['qwen2_audio']}", batch_size=4, captioner_options=options
        )
        assert run_caption(cfg) == 0
        runs.append(out)
    o = check_output(runs[0], expected_inputs=24)
    assert len(o.samples) == 24
    for sample in o.samples:
        meta = json.loads(sample["json"])["caption_meta"]
        assert meta["captioner"].startswith("alm-") and len(meta["answers"]) == 3
        assert meta["params"]["prompts"] == list(PROMPT_CHAINS["audiosetcaps"])
    assert o.manifest["generation_params"]["architecture"] == "Qwen2AudioForConditionalGeneration"
    assert tar_digests(runs[0]) == tar_digests(runs[1])


def test_an_unknown_option_value_is_a_config_error(sample_input, alm_folders, tmp_path):
    folder = alm_folders["qwen2_audio"]
    cfg = sample_config(
        sample_input, str(tmp_path / "out"), captioner=f"alm:{folder}", captioner_options={"num_beams": 0}
    )
    with pytest.raises(ConfigError, match="num_beams"):
        run_caption(cfg)


def test_an_alm_folder_on_s3_captions_as_the_local_one_does(alm_folders, s3):
    """Any fsspec URL: the driver checks and hashes the folder on S3 (moto on 127.0.0.1), the
    actor copies it local once, and the captions are the local folder's."""
    fs, options = s3
    fs.mkdir("tagcap-models")
    local = alm_folders["qwen2_audio"]
    for name in os.listdir(local):
        fs.put_file(os.path.join(local, name), f"tagcap-models/qwen2-audio/{name}")
    opts = {"max_new_tokens": 4, "clip_seconds": 2.0}
    remote = build("alm:s3://tagcap-models/qwen2-audio", {**opts, "storage_options": options})
    here = build(f"alm:{local}", opts)
    assert remote.info.checkpoint_sha256 == here.info.checkpoint_sha256
    assert remote(_batch(2)) == here(_batch(2))
    with pytest.raises(CaptionerSpecError, match="no such model folder"):
        describe("alm:s3://tagcap-models/nothing", {"storage_options": options})
