"""Audio decode and encode on the CPU, without torch (decode workers stay small and start
fast); the GPU side of model input is ``workers.model_input``.

``decode_clip`` is the only way bytes become a waveform in tagcap. It checks what the
header promises before decoding (so a 10-hour file or a 1 Hz "rate" fails cheaply) and
what the samples hold after (NaN/Inf), raising :class:`AudioError` with a reason from the
closed vocabulary in ``schemas.records``.

Two decoders: 16-bit FLAC, AudioSet's format and the bulk of any corpus tagcap reads, goes
through dr_flac (the ``miniaudio`` package), with samples bit-identical to libsndfile's
and faster (docs/design/decode-path.md); everything else, and any FLAC that dr_flac does not
decode completely (truncated, corrupt, unknown length), goes through soundfile, whose
verdict and error text are then the ones recorded. The fast path can therefore change how
fast a clip decodes, never what it decodes to or why it fails.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from miniaudio import ffi as _ffi
from miniaudio import lib as _lib

from tagcap.schemas.records import ErrorReason
from tagcap.schemas.work import DecodeSpec

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus")
# Without a DecodeSpec (read_mono), the most samples the fast path allocates on a header's
# word: an hour of 48 kHz stereo. Longer streams go through soundfile.
_UNCHECKED_MAX_SAMPLES = 3600 * 48_000 * 2


class AudioError(Exception):
    def __init__(self, reason: ErrorReason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedClip:
    samples: np.ndarray  # mono float32 (or int16 where asked and lossless), at ``sample_rate``
    sample_rate: int

    def as_float(self) -> np.ndarray:
        if self.samples.dtype == np.int16:
            return self.samples.astype(np.float32) / 32768.0
        return self.samples


# Encodings whose samples int16 holds exactly: decoding them straight to int16 skips a
# float32 round trip (and the NaN scan, as integers cannot be NaN).
_INT16_EXACT = frozenset({"PCM_16", "PCM_S8", "PCM_U8"})


def decode_clip(data: bytes | memoryview, spec: DecodeSpec, pcm16: bool = False) -> DecodedClip:
    """Decode any soundfile-readable bytes to mono float32 at the file's own rate, or, with
    ``pcm16`` and an encoding int16 holds exactly (16-bit and 8-bit PCM, FLAC included), to
    mono int16 (what the captioner's transport carries)."""
    if not data:
        raise AudioError(ErrorReason.EMPTY_AUDIO, "zero bytes")
    mono, rate = _read(data, pcm16, spec)
    if mono.shape[0] == 0:
        raise AudioError(ErrorReason.EMPTY_AUDIO, "no frames decoded")
    seconds = mono.shape[0] / rate
    if seconds < spec.min_clip_seconds:
        raise AudioError(ErrorReason.TOO_SHORT, f"{seconds:.3f} s < {spec.min_clip_seconds} s")
    if seconds > spec.max_clip_seconds:
        raise AudioError(ErrorReason.TOO_LONG, f"{seconds:.1f} s > {spec.max_clip_seconds} s")
    if mono.dtype == np.float32 and not np.isfinite(mono).all():
        raise AudioError(ErrorReason.NON_FINITE, f"{int((~np.isfinite(mono)).sum())} NaN/Inf samples")
    return DecodedClip(np.ascontiguousarray(mono), rate)


def _read(data: bytes | memoryview, pcm16: bool, spec: DecodeSpec | None) -> tuple[np.ndarray, int]:
    """(mono, rate): dr_flac where it applies and decodes every frame, else soundfile."""
    decoded = _read_flac16(data, pcm16, spec)
    return decoded if decoded is not None else _read_soundfile(data, pcm16, spec)


def _check_header(rate: int, frames: int, spec: DecodeSpec) -> None:
    """What the header promises, before any decoding. ``frames`` outside 1..2**62 means
    unknown (Ogg and MP3 may not know their length up front; checked after decoding)."""
    if not spec.min_sample_rate <= rate <= spec.max_sample_rate:
        raise AudioError(
            ErrorReason.BAD_SAMPLE_RATE,
            f"{rate} Hz outside {spec.min_sample_rate}..{spec.max_sample_rate} Hz",
        )
    if frames == 0:
        raise AudioError(ErrorReason.EMPTY_AUDIO, "no frames")
    if 0 < frames < 2**62 and frames / rate > spec.max_clip_seconds:
        raise AudioError(ErrorReason.TOO_LONG, f"{frames / rate:.1f} s > {spec.max_clip_seconds} s")


def _read_flac16(data: bytes | memoryview, pcm16: bool, spec: DecodeSpec | None) -> tuple[np.ndarray, int] | None:
    """16-bit FLAC with a known length through dr_flac, header checked first (with a
    ``spec``); ``None`` where this path does not apply or did not decode every frame the
    header promises, so that soundfile decides.

    Through dr_flac's C API rather than ``miniaudio.flac_read_s16``: one open reads the
    header and decodes, straight into the array that is returned
    (docs/design/decode-path.md)."""
    if data[:4] != b"fLaC":
        return None
    # Whatever dr_flac makes of bad bytes, soundfile then gives the answer that is
    # recorded, so a failure here is never the verdict.
    source = _ffi.from_buffer(data)
    flac = _lib.ma_dr_flac_open_memory(source, len(data), _ffi.NULL)
    if flac == _ffi.NULL:
        return None
    try:
        rate, channels, frames = int(flac.sampleRate), int(flac.channels), int(flac.totalPCMFrameCount)
        # Exactly 16 bits: int16 holds them as they are (a 20-bit stream would be cut).
        if flac.bitsPerSample != 16 or frames <= 0 or channels <= 0:
            return None
        if spec is not None:
            _check_header(rate, frames, spec)
        elif frames * channels > _UNCHECKED_MAX_SAMPLES:
            return None  # no limits given: a header's promise alone allocates no more than this
        out = np.empty((frames, channels), np.int16)
        read = _lib.ma_dr_flac_read_pcm_frames_s16(flac, frames, _ffi.cast("ma_int16 *", _ffi.from_buffer(out)))
    finally:
        _lib.ma_dr_flac_close(flac)
    if read != frames:
        return None  # truncated or a corrupt frame skipped: soundfile says what is wrong
    # Else libsndfile's float for 16-bit: exactly int / 32768, before the downmix.
    samples = out if pcm16 else out.astype(np.float32) / np.float32(32768.0)
    return _downmix(samples, as_int16=pcm16), rate


def _read_soundfile(data: bytes | memoryview, pcm16: bool, spec: DecodeSpec | None) -> tuple[np.ndarray, int]:
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise AudioError(ErrorReason.DECODE_ERROR, f"unreadable header: {_describe(exc)}") from None
    # The header is checked before decoding, on the same open file (one parse per clip).
    with f:
        rate = int(f.samplerate)
        if spec is not None:
            _check_header(rate, int(f.frames), spec)
        as_int16 = pcm16 and f.subtype in _INT16_EXACT
        try:
            samples = f.read(dtype="int16" if as_int16 else "float32", always_2d=True)
        except Exception as exc:
            raise AudioError(ErrorReason.DECODE_ERROR, _describe(exc)) from None
    return _downmix(samples, as_int16), rate


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


def _describe(exc: Exception) -> str:
    """soundfile's message without the in-memory file's repr (its address differs on
    every run, and error records must be the same on a rerun)."""
    return _OBJECT_REPR.sub("audio bytes", str(exc))


def read_mono(data: bytes | memoryview, pcm16: bool) -> tuple[np.ndarray, int]:
    """Decode to mono at the file's rate, without :func:`decode_clip`'s limits: int16 where
    ``pcm16`` and the encoding fits int16 exactly (16- and 8-bit PCM, FLAC included), else
    float32. Raises :class:`AudioError` where the bytes do not decode."""
    return _read(data, pcm16, None)


def _downmix(samples: np.ndarray, as_int16: bool) -> np.ndarray:
    """(frames, channels) to mono: the channel mean, rounded back to int16 for int16."""
    if samples.shape[1] == 1:
        mono = samples[:, 0]
    elif as_int16:
        mono = samples.mean(axis=1).round().astype(np.int16)
    else:
        mono = samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono)


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """CPU resampling (torchaudio's windowed sinc), for the few clips that need it on a
    CPU: torch is imported here, on first use, so that a decode worker whose clips all
    share one rate never loads it (about 2 s of start-up and 600 MB of memory per
    worker). Its thread count follows OMP_NUM_THREADS, which Ray sets to the task's CPUs."""
    if orig_rate == new_rate:
        return samples
    import torch
    import torchaudio.functional as taf

    out = taf.resample(torch.from_numpy(samples), orig_rate, new_rate)
    return out.numpy().astype(np.float32, copy=False)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] to 16-bit PCM (clipped: louder float audio saturates); int16 as is."""
    if samples.dtype == np.int16:
        return samples
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """Crop to the first ``length`` samples or zero-pad at the end (deterministic)."""
    if samples.shape[0] >= length:
        return samples[:length]
    out = np.zeros(length, dtype=samples.dtype)
    out[: samples.shape[0]] = samples
    return out


def encode_flac(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono 16-bit FLAC. Clipped to [-1, 1] first, as PCM_16 cannot hold more."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()
