"""Audio decode and encode with soundfile, on the CPU, without torch (decode workers stay
small and start fast); the GPU side of model input is ``workers.model_input``.

``decode_clip`` is the only way bytes become a waveform in tagcap. It checks what the
header promises before decoding (so a 10-hour file or a 1 Hz "rate" fails cheaply) and
what the samples hold after (NaN/Inf), raising :class:`AudioError` with a reason from the
closed vocabulary in ``schemas.records``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from tagcap.schemas.records import ErrorReason
from tagcap.schemas.work import DecodeSpec

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus")


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


def decode_clip(data: bytes, spec: DecodeSpec, pcm16: bool = False) -> DecodedClip:
    """Decode any soundfile-readable bytes to mono float32 at the file's own rate, or, with
    ``pcm16`` and an encoding int16 holds exactly (16-bit and 8-bit PCM, FLAC included), to
    mono int16 (what the captioner's transport carries; about 10% cheaper per clip)."""
    if not data:
        raise AudioError(ErrorReason.EMPTY_AUDIO, "zero bytes")
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise AudioError(ErrorReason.DECODE_ERROR, f"unreadable header: {_describe(exc)}") from None
    # The header is checked before decoding, on the same open file (one parse per clip).
    with f:
        rate = int(f.samplerate)
        if not spec.min_sample_rate <= rate <= spec.max_sample_rate:
            raise AudioError(
                ErrorReason.BAD_SAMPLE_RATE,
                f"{rate} Hz outside {spec.min_sample_rate}..{spec.max_sample_rate} Hz",
            )
        if f.frames == 0:
            raise AudioError(ErrorReason.EMPTY_AUDIO, "no frames")
        # Some containers (Ogg, MP3) do not know their length up front; they are checked
        # again after decoding.
        if 0 < f.frames < 2**62 and f.frames / rate > spec.max_clip_seconds:
            raise AudioError(ErrorReason.TOO_LONG, f"{f.frames / rate:.1f} s > {spec.max_clip_seconds} s")
        try:
            mono = _read_mono(f, pcm16)
        except Exception as exc:
            raise AudioError(ErrorReason.DECODE_ERROR, _describe(exc)) from None
    if mono.shape[0] == 0:
        raise AudioError(ErrorReason.EMPTY_AUDIO, "no frames decoded")
    seconds = mono.shape[0] / rate
    if seconds < spec.min_clip_seconds:
        raise AudioError(ErrorReason.TOO_SHORT, f"{seconds:.3f} s < {spec.min_clip_seconds} s")
    if seconds > spec.max_clip_seconds:
        raise AudioError(ErrorReason.TOO_LONG, f"{seconds:.1f} s > {spec.max_clip_seconds} s")
    if mono.dtype == np.float32 and not np.isfinite(mono).all():
        raise AudioError(ErrorReason.NON_FINITE, f"{int((~np.isfinite(mono)).sum())} NaN/Inf samples")
    return DecodedClip(np.ascontiguousarray(mono), int(rate))


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>")


def _describe(exc: Exception) -> str:
    """soundfile's message without the in-memory file's repr (its address differs on
    every run, and error records must be the same on a rerun)."""
    return _OBJECT_REPR.sub("audio bytes", str(exc))


def read_mono(data: bytes, pcm16: bool) -> tuple[np.ndarray, int]:
    """Decode to mono at the file's rate: int16 where ``pcm16`` and the encoding fits int16
    exactly (16- and 8-bit PCM, FLAC included), else float32. Raises what soundfile raises."""
    with sf.SoundFile(io.BytesIO(data)) as f:
        return _read_mono(f, pcm16), int(f.samplerate)


def _read_mono(f: sf.SoundFile, pcm16: bool) -> np.ndarray:
    as_int16 = pcm16 and f.subtype in _INT16_EXACT
    samples = f.read(dtype="int16" if as_int16 else "float32", always_2d=True)
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
