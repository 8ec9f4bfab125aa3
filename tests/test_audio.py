import numpy as np
import pytest
import torch

from tagcap.schemas.records import ErrorReason
from tagcap.schemas.work import DecodeSpec
from tagcap.workers.audio import AudioError, decode_clip, encode_flac, fit_length, resample, to_pcm16
from tagcap.workers.model_input import model_waveforms
from tests.builders import encode, tone

SPEC = DecodeSpec(
    sample_rate=16000,
    clip_samples=16000,
    audio_mode="copy",
    min_clip_seconds=0.1,
    max_clip_seconds=60,
    min_sample_rate=4000,
    max_sample_rate=192000,
    max_json_bytes=1 << 20,
)


@pytest.mark.parametrize(
    "fmt,subtype",
    [("FLAC", None), ("WAV", "PCM_16"), ("WAV", "FLOAT"), ("OGG", "VORBIS"), ("OGG", "OPUS"), ("MP3", None)],
)
def test_decodes_every_supported_format_to_mono_float32(fmt, subtype):
    rate = 48000
    stereo = tone(1.0, rate, channels=2)
    clip = decode_clip(encode(stereo, rate, fmt, subtype), SPEC)
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.sample_rate == rate
    assert abs(clip.samples.shape[0] - rate) < rate * 0.1  # codecs may pad a little
    assert 0.1 < np.abs(clip.samples).max() < 0.5


def test_16_bit_audio_decodes_straight_to_the_exact_int16_samples():
    rate = 48000
    pcm = (tone(1.0, rate, channels=2) * 32767).round().astype(np.int16)
    for fmt in ("FLAC", "WAV"):
        data = encode(pcm.astype(np.float32) / 32768.0, rate, fmt, "PCM_16")
        clip = decode_clip(data, SPEC, pcm16=True)
        assert clip.samples.dtype == np.int16 and clip.sample_rate == rate
        expected = pcm.astype(np.int32).mean(axis=1).round().astype(np.int16)
        assert np.array_equal(clip.samples, expected)
        # The float path, converted, agrees to within one step of 16-bit rounding.
        float_path = to_pcm16(decode_clip(data, SPEC).samples)
        assert np.abs(float_path.astype(int) - clip.samples.astype(int)).max() <= 1
    # Encodings int16 cannot hold exactly keep the float path, and its NaN check.
    nan = tone(1.0)
    nan[100:200] = np.nan
    assert decode_clip(encode(tone(1.0), 16000, "WAV", "FLOAT"), SPEC, pcm16=True).samples.dtype == np.float32
    with pytest.raises(AudioError) as info:
        decode_clip(encode(nan, 16000, "WAV", "FLOAT"), SPEC, pcm16=True)
    assert info.value.reason == ErrorReason.NON_FINITE


def _reason(data: bytes, spec: DecodeSpec = SPEC) -> ErrorReason:
    with pytest.raises(AudioError) as info:
        decode_clip(data, spec)
    return info.value.reason


def test_bad_audio_gives_a_reason():
    good = encode(tone(1.0), 16000)
    assert _reason(b"") == ErrorReason.EMPTY_AUDIO
    assert _reason(b"\x00" * 1000) == ErrorReason.DECODE_ERROR
    assert _reason(good[: len(good) // 3] + b"garbage" * 10) in (ErrorReason.DECODE_ERROR, ErrorReason.TOO_SHORT)
    assert _reason(good[:30]) == ErrorReason.DECODE_ERROR
    nan = tone(1.0)
    nan[100:200] = np.nan
    assert _reason(encode(nan, 16000, "WAV", "FLOAT")) == ErrorReason.NON_FINITE
    assert _reason(encode(tone(1.0, 1000), 1000, "WAV", "PCM_16")) == ErrorReason.BAD_SAMPLE_RATE
    assert _reason(encode(tone(0.01), 16000)) == ErrorReason.TOO_SHORT
    assert (
        _reason(encode(tone(2.0), 16000), DecodeSpec(**{**SPEC.__dict__, "max_clip_seconds": 1.0}))
        == ErrorReason.TOO_LONG
    )


def test_resample_and_fit_length():
    x = tone(1.0, 48000)
    y = resample(x, 48000, 16000)
    assert y.dtype == np.float32 and y.shape == (16000,)
    assert np.array_equal(resample(x, 48000, 48000), x)
    assert fit_length(y, 8000).shape == (8000,)
    padded = fit_length(y, 20000)
    assert padded.shape == (20000,) and not padded[16000:].any()


def test_model_waveforms_match_the_cpu_path_from_pcm16():
    """The batched (device) path: int16 at the clip's rate in, float32 at the model's
    rate out, equal to resampling each float clip on its own."""
    rng = np.random.default_rng(1)
    clips = [tone(0.5, 48000, freq=f) * 0.8 + rng.standard_normal(24000).astype(np.float32) * 0.01 for f in (300, 2000)]
    pcm = np.stack([to_pcm16(c) for c in clips])
    assert pcm.dtype == np.int16 and np.abs(pcm.astype(np.float32) / 32768 - np.stack(clips)).max() < 1e-4
    out = model_waveforms(pcm, 48000, 16000, 10000, "cpu")
    assert out.dtype == torch.float32 and tuple(out.shape) == (2, 10000)  # padded past 8000
    for row, clip in zip(out.numpy(), clips, strict=True):
        ref = fit_length(resample(pcm_round(clip), 48000, 16000), 10000)
        assert np.abs(row - ref).max() < 1e-5
        assert not row[8000:].any()
    assert tuple(model_waveforms(pcm, 48000, 16000, 4000, "cpu").shape) == (2, 4000)
    same = model_waveforms(pcm[:, :100].astype(np.float32) / 32768, 48000, 48000, 100, "cpu")
    assert np.array_equal(same.numpy(), pcm[:, :100] / np.float32(32768))
    assert to_pcm16(np.array([2.0, -2.0, 0.5], np.float32)).tolist() == [32767, -32767, 16384]


def pcm_round(x: np.ndarray) -> np.ndarray:
    return to_pcm16(x).astype(np.float32) / 32768


def test_flac_encode_is_deterministic_and_lossless_at_16_bit():
    x = tone(0.5, 48000)
    a, b = encode_flac(x, 48000), encode_flac(x, 48000)
    assert a == b
    back = decode_clip(a, SPEC).samples
    assert np.abs(back - x).max() < 1e-4
