import numpy as np
import pytest
import torch

from tagcap.schemas.records import ErrorReason
from tagcap.schemas.work import DecodeSpec
from tagcap.workers import audio, model_input
from tagcap.workers.audio import AudioError, decode_clip, encode_flac, fit_length, read_mono, resample, to_pcm16
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


def _outcome(data: bytes, pcm16: bool, spec: DecodeSpec = SPEC) -> tuple:
    try:
        clip = decode_clip(data, spec, pcm16=pcm16)
    except AudioError as exc:
        return ("error", exc.reason, exc.detail)
    return ("ok", clip.sample_rate, clip.samples.dtype.str, clip.samples.tobytes())


def _flac_variants() -> list[bytes]:
    rng = np.random.default_rng(7)
    noisy = (rng.standard_normal((24000, 2)) * 0.2).clip(-1, 1).astype(np.float32)
    return [
        encode(tone(1.0, 48000), 48000, "FLAC", "PCM_16"),
        encode(noisy, 44100, "FLAC", "PCM_16"),
        encode(noisy[:, 0], 22050, "FLAC", "PCM_24"),
        encode(noisy, 16000, "FLAC", "PCM_S8"),
    ]


def test_fast_flac_path_decodes_exactly_what_soundfile_decodes_and_fails_alike(monkeypatch):
    """dr_flac takes 16-bit FLAC; for every variant, truncation and corrupted byte the
    outcome (samples bit for bit, or error reason and text) equals soundfile's alone."""
    cases = []
    for data in _flac_variants():
        cases.append(data)
        cases += [data[:cut] for cut in np.linspace(4, len(data) - 1, 12, dtype=int)]
        for at in np.linspace(0, len(data) - 1, 16, dtype=int):
            bad = bytearray(data)
            bad[at] ^= 0x5A
            cases.append(bytes(bad))
    short = DecodeSpec(**{**SPEC.__dict__, "max_clip_seconds": 0.2})
    fast = [(_outcome(c, p), _outcome(c, p, short)) for c in cases for p in (True, False)]
    fast_mono = [read_mono(data, pcm16) for data in _flac_variants() for pcm16 in (True, False)]
    # The fast path is taken where it applies (else the comparison below is vacuous) ...
    good16 = _flac_variants()[1]
    assert audio._read_flac16(good16, True, None) is not None
    assert audio._read_flac16(good16[: len(good16) // 2], True, None) is None
    assert audio._read_flac16(_flac_variants()[2], True, None) is None  # 24-bit: soundfile
    # ... and turning it off changes no outcome.
    monkeypatch.setattr(audio, "_read_flac16", lambda data, pcm16, spec: None)
    reference = [(_outcome(c, p), _outcome(c, p, short)) for c in cases for p in (True, False)]
    assert fast == reference
    assert {o[0][0] for o in fast} == {"ok", "error"}
    reference_mono = [read_mono(data, pcm16) for data in _flac_variants() for pcm16 in (True, False)]
    for (a, rate_a), (b, rate_b) in zip(fast_mono, reference_mono, strict=True):
        assert rate_a == rate_b and a.dtype == b.dtype and np.array_equal(a, b)


def test_without_limits_the_fast_path_allocates_no_more_than_its_cap(monkeypatch):
    """``read_mono`` has no DecodeSpec to bound a header's frame count: above the cap dr_flac
    is not asked to allocate, and soundfile decodes the same samples."""
    good16 = _flac_variants()[1]
    expected, rate = read_mono(good16, True)
    assert audio._read_flac16(good16, True, None) is not None
    monkeypatch.setattr(audio, "_UNCHECKED_MAX_SAMPLES", expected.shape[0] - 1)
    assert audio._read_flac16(good16, True, None) is None
    capped, capped_rate = read_mono(good16, True)
    assert capped_rate == rate and np.array_equal(capped, expected)


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


def test_model_waveforms_take_a_tensor_as_they_take_its_array():
    pcm = (np.random.default_rng(3).standard_normal((3, 4800)) * 3000).astype(np.int16)
    from_array = model_waveforms(pcm, 48000, 16000, 1600, "cpu")
    assert torch.equal(model_waveforms(torch.from_numpy(pcm), 48000, 16000, 1600, "cpu"), from_array)


@pytest.mark.parametrize("threads", [1, 3, 4, 8])
@pytest.mark.parametrize("size", [0, 1, 7, (8 << 20) // 2 + 3])
def test_parallel_copy_copies_every_element_once(monkeypatch, threads, size):
    """The pinned buffer's fill (GPU path) in pieces: whatever the split, all of it."""
    monkeypatch.setattr(model_input, "COPY_THREADS", threads)
    src = np.arange(size, dtype=np.int16)
    dst = np.full(size, -1, dtype=np.int16)
    model_input._parallel_copy(dst, src)
    assert np.array_equal(dst, src)


def pcm_round(x: np.ndarray) -> np.ndarray:
    return to_pcm16(x).astype(np.float32) / 32768


def test_flac_encode_is_deterministic_and_lossless_at_16_bit():
    x = tone(0.5, 48000)
    a, b = encode_flac(x, 48000), encode_flac(x, 48000)
    assert a == b
    back = decode_clip(a, SPEC).samples
    assert np.abs(back - x).max() < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pins host pages for the GPU: needs one")
def test_registered_copies_match_pageable_ones_from_calls_at_once(monkeypatch):
    """Arrays pinned in place, from several threads at once: neighbours in one buffer (a
    page at their border), one array in two calls, one shorter than a page and starts off
    a page boundary all arrive as the pageable copy gives them."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    buffer = (rng.standard_normal(8 * 48000 + 777) * 3000).astype(np.int16)
    arrays = [buffer[1 + i * 48000 : 1 + (i + 1) * 48000].reshape(2, 24000) for i in range(7)]
    arrays += [arrays[0], buffer[3:1003].reshape(1, 1000)]
    monkeypatch.setattr(model_input, "STAGING", "pageable")
    expected = [model_waveforms(a, 48000, 16000, 8000, "cuda").cpu() for a in arrays]
    monkeypatch.setattr(model_input, "STAGING", "register")
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda a: model_waveforms(a, 48000, 16000, 8000, "cuda").cpu(), arrays))
    for want, have in zip(expected, got, strict=True):
        assert torch.equal(want, have)
    assert model_input.STAGING == "register"  # no refusal turned it off
