"""``--captioner hf:...`` on a tiny randomly initialised Whisper saved to a temporary folder,
with the tags rendered into the decoder prompt."""

import json

import numpy as np
import pytest
import torch

from tagcap.pipeline.caption import ConfigError, run_caption
from tagcap.schemas.config import CaptionConfig
from tagcap.schemas.work import ModelBatch
from tagcap.workers.captioners import CaptionerSpecError, build, describe
from tests.helpers import check_output

WORDS = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    ":",
    ",",
    "sine",
    "wave",
    "beep",
    "bleep",
    "white",
    "noise",
    "pink",
    "chirp",
    "tone",
    "tick",
    "a",
    "the",
    "sound",
    "of",
]


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    folder = tmp_path_factory.mktemp("tiny-whisper")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(folder)
    cfg = WhisperConfig(
        vocab_size=len(WORDS),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=200,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    with torch.no_grad():  # make </s> unlikely so that random weights still say something
        model.proj_out.weight[2].zero_()
    model.generation_config.forced_decoder_ids = None
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80, chunk_length=4).save_pretrained(folder)
    return folder


def test_describe_and_prompt(tiny_whisper):
    info = describe(f"hf:{tiny_whisper}")
    assert info.captioner_id.startswith("hf-") and info.sample_rate == 16000 and info.clip_seconds == 4.0
    cap = build(f"hf:{tiny_whisper}", {"max_new_tokens": 5, "beam_size": 2})
    prompt = cap.runtime.prompt(["Sine wave", "Beep, bleep"])
    assert prompt[0] == 1 and cap.runtime.tokenizer.decode(prompt[1:]) == "sine wave , beep , bleep :"
    batch = ModelBatch(
        (np.random.default_rng(0).standard_normal((3, 4 * 48000)) * 3000).astype(np.int16),
        48000,
        [["Sine wave"], ["White noise", "Tick"], ["Chirp tone"]],
        [[], [], []],
        ["a", "b", "c"],
    )
    out = cap(batch)
    assert len(out) == 3 and all(r.text for r in out)
    assert out == cap(batch)  # deterministic


def test_hf_refuses_pickled_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CaptionerSpecError, match="safetensors"):
        describe(f"hf:{tmp_path}")


def test_hf_end_to_end(ray_local, sample_input, tiny_whisper, tmp_path):
    cfg = CaptionConfig(
        input=[sample_input.shards],
        segments=[sample_input.segments],
        labels=sample_input.labels,
        output=str(tmp_path / "out"),
        captioner=f"hf:{tiny_whisper}",
        captioner_options={"max_new_tokens": 6},
        progress=False,
        batch_size=4,
    )
    assert run_caption(cfg) == 0
    o = check_output(str(tmp_path / "out"), expected_inputs=24)
    assert len(o.samples) == 24
    meta = json.loads(o.samples[0]["json"])
    assert meta["caption_meta"]["captioner"].startswith("hf-") and meta["caption_meta"]["params"]["beam_size"] == 3


def test_missing_checkpoint_fails_fast(sample_input, tmp_path):
    cfg = CaptionConfig(
        input=[sample_input.shards],
        segments=[sample_input.segments],
        labels=sample_input.labels,
        output=str(tmp_path / "out"),
        captioner=f"blat:{tmp_path / 'nope'}",
        progress=False,
    )
    with pytest.raises(ConfigError, match="checkpoint incomplete or missing"):
        run_caption(cfg)
