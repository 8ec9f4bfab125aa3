"""Tiny random transformers models saved as ``save_pretrained`` folders, with BPE tokenizers
trained here by the ``tokenizers`` library: two audio-language families (Qwen2-Audio, Audio
Flamingo 3) and a causal LM (Qwen2). Nothing is downloaded."""

from __future__ import annotations

import os

# A ChatML template that takes string or typed-part content; the audio part becomes the
# model's audio placeholder.
_CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'audio' %}AUDIO_PLACEHOLDER{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Every special token but the end of a turn (<|im_end|>, the EOS).
_SPECIALS = ("<unk>", "<pad>", "<|im_start|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>", "<sound>")
_CORPUS = [
    "a dog barks while a car passes by in the rain",
    "describe the sounds you hear and how they unfold",
    "is anyone speaking in the clip; is there music in the clip",
    "speech music engine siren bird wind water crowd",
    "the tags are beep tick chirp tone white noise pink noise sine wave",
    "rewrite the description in one sentence without naming the labels",
]


def _tokenizer(specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>")
    fast.padding_side = "left"
    return fast


def _text_config(vocab: int) -> dict:
    return dict(
        model_type="qwen2",
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
    )


def _speaks(model, tokenizer) -> None:
    """Random weights would often end at once or say only special tokens, which decode to
    nothing: the saved generation config makes them say a few real tokens first."""
    config = model.generation_config
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.min_new_tokens = 3
    vocab = tokenizer.get_vocab()
    config.suppress_tokens = [vocab[t] for t in _SPECIALS if t in vocab]


def _finish(model, processor, tokenizer, folder: str) -> str:
    _speaks(model, tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def qwen2_audio(folder: str, seed: int = 0) -> str:
    import torch
    import transformers

    tok = _tokenizer(["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"])
    features = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, chunk_length=30)
    template = _CHAT.replace("AUDIO_PLACEHOLDER", "<|audio_bos|><|AUDIO|><|audio_eos|>")
    processor = transformers.Qwen2AudioProcessor(feature_extractor=features, tokenizer=tok, chat_template=template)
    config = transformers.Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=80),
        text_config=_text_config(len(tok)),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    return _finish(transformers.Qwen2AudioForConditionalGeneration(config), processor, tok, folder)


def audio_flamingo3(folder: str, seed: int = 0) -> str:
    import torch
    import transformers

    tok = _tokenizer(["<sound>"])
    features = transformers.WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=30)
    processor = transformers.AudioFlamingo3Processor(
        feature_extractor=features, tokenizer=tok, chat_template=_CHAT.replace("AUDIO_PLACEHOLDER", "<sound>")
    )
    config = transformers.AudioFlamingo3Config(
        audio_config=dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_mel_bins=128
        ),
        text_config=_text_config(len(tok)),
        audio_token_id=tok.convert_tokens_to_ids("<sound>"),
    )
    torch.manual_seed(seed)
    return _finish(transformers.AudioFlamingo3ForConditionalGeneration(config), processor, tok, folder)


def causal_lm(folder: str, seed: int = 0) -> str:
    import torch
    import transformers

    tok = _tokenizer([])
    tok.chat_template = _CHAT
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_text_config(len(tok))))
    _speaks(model, tok)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_all(root: str) -> dict[str, str]:
    return {
        "qwen2_audio": qwen2_audio(os.path.join(root, "qwen2-audio")),
        "audio_flamingo3": audio_flamingo3(os.path.join(root, "audio-flamingo3")),
        "causal_lm": causal_lm(os.path.join(root, "causal-lm")),
    }
