"""Read + decode + join: one work unit in, (ModelBatch, UnitPayload) out.

This is the body of the CPU task that feeds the captioner actors. Checks run cheapest
first (name, JSON, tag join) so a clip without tags is never decoded; every sample that
falls out becomes exactly one :class:`ErrorRecord`, in input order.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from tagcap.schemas.audioset import LabelMap, Segment, SegmentTable
from tagcap.schemas.keys import ClipId, clip_id_from_json, make_key, parse_clip_name
from tagcap.schemas.records import ErrorReason, ErrorRecord
from tagcap.schemas.work import DecodeSpec, ModelBatch, PackedBytes, SampleMeta, UnitPayload, WorkUnit
from tagcap.workers.audio import (
    AudioError,
    DecodedClip,
    decode_clip,
    encode_flac,
    fit_length,
    resample,
    to_pcm16,
)
from tagcap.workers.exclusion import Exclusions
from tagcap.workers.fingerprint import pcm_digest
from tagcap.workers.process_settings import lower_priority, retain_freed_memory
from tagcap.workers.readers import Blob, RawSample, read_unit
from tagcap.workers.storage import Storage


@dataclass
class _Pending:
    raw: RawSample
    clip: ClipId
    ext: str
    audio: Blob


class _SampleError(Exception):
    def __init__(self, reason: ErrorReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _error(key: str, source: str, stage: str, reason: ErrorReason, detail: str) -> ErrorRecord:
    return ErrorRecord(key=key, source=source, stage=stage, reason=reason, detail=detail[:500])


def _fail(errors: list[ErrorRecord], key: str, source: str, stage: str, reason: ErrorReason, detail: str) -> None:
    errors.append(_error(key, source, stage, reason, detail))


def _clip_id(raw: RawSample, max_json_bytes: int) -> ClipId:
    """The clip's (YTID, start): from its JSON when that names one, else from its name."""
    blob = raw.members.get("json")
    if blob is not None:
        if len(blob) > max_json_bytes:
            raise _SampleError(ErrorReason.BAD_JSON, f"json member is {len(blob)} bytes > {max_json_bytes}")
        try:
            meta = json.loads(bytes(blob))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise _SampleError(ErrorReason.BAD_JSON, f"json does not parse: {exc}") from None
        if isinstance(meta, dict):
            try:
                clip = clip_id_from_json(meta)
            except ValueError as exc:
                raise _SampleError(ErrorReason.BAD_JSON, str(exc)) from None
            if clip is not None:
                return clip
    try:
        return parse_clip_name(raw.source)
    except ValueError as exc:
        raise _SampleError(ErrorReason.BAD_NAME, str(exc)) from None


def _native_length(spec: DecodeSpec, rate: int) -> int:
    """Samples at ``rate`` that cover the captioner's clip (it crops after resampling)."""
    return math.ceil(spec.clip_samples * rate / spec.sample_rate)


def _clip_pcm(clip: DecodedClip, spec: DecodeSpec) -> tuple[int, np.ndarray]:
    # Kept as int16 right away: a unit's float32 clips at 48 kHz would hold 2 MB each.
    return clip.sample_rate, to_pcm16(fit_length(clip.samples, _native_length(spec, clip.sample_rate)))


def _transport_pcm(clips: list[tuple[int, np.ndarray]], spec: DecodeSpec) -> tuple[int, np.ndarray]:
    """The unit's clips as one int16 array at the rate most of them have; the few at
    another rate are resampled to it here."""
    if not clips:
        return spec.sample_rate, np.zeros((0, spec.clip_samples), np.int16)
    rate = Counter(r for r, _ in clips).most_common(1)[0][0]
    length = _native_length(spec, rate)
    out = np.empty((len(clips), length), np.int16)
    for row, (clip_rate, pcm) in enumerate(clips):
        if clip_rate != rate:
            pcm = to_pcm16(fit_length(resample(pcm.astype(np.float32) / 32768.0, clip_rate, rate), length))
        out[row] = pcm
    return rate, out


def _json_meta(item: _Pending) -> dict[str, Any]:
    blob = item.raw.members.get("json")
    try:
        meta = json.loads(bytes(blob)) if blob is not None else {}
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _join(
    item: _Pending,
    found: dict[str, list[Segment]],
    labels: LabelMap,
    seen_keys: set[str],
    exclusions: Exclusions | None = None,
) -> tuple[_Pending, SampleMeta] | ErrorRecord:
    """The clip's segment row and tags, or the one error record that says why it has none."""
    source = item.raw.source
    segment = SegmentTable.choose(found.get(item.clip.ytid, []), item.clip.start_ms)
    if segment is None:
        where = f"{item.clip.ytid} start {item.clip.start_ms} ms" if item.clip.start_ms is not None else item.clip.ytid
        n = len(found.get(item.clip.ytid, []))
        detail = f"no segment row for {where}" + (f" ({n} segments, none matches)" if n else "")
        return _error(source, source, "join", ErrorReason.NO_SEGMENT, detail)
    key = make_key(segment.ytid, segment.start_ms)
    if exclusions:
        listed = exclusions.why(
            segment.ytid, segment.start_ms, source, _json_meta(item) if exclusions.by_file else None
        )
        if listed is not None:
            return _error(key, source, "exclude", ErrorReason.EXCLUDED, f"on {listed}")
    if key in seen_keys:
        return _error(key, source, "join", ErrorReason.DUPLICATE_KEY, f"{key} already in this shard")
    seen_keys.add(key)
    if not segment.mids:
        return _error(key, source, "join", ErrorReason.NO_TAGS, "segment has no labels")
    mids, names, unknown = labels.resolve(segment.mids)
    if not mids:
        return _error(key, source, "join", ErrorReason.UNKNOWN_TAGS, f"no known MID among {list(unknown)}")
    meta = SampleMeta(
        key=key,
        source=source,
        ytid=segment.ytid,
        start_ms=segment.start_ms,
        end_ms=segment.end_ms,
        mids=tuple(mids),
        tags=tuple(names),
        audio_ext=item.ext,
    )
    return item, meta


@dataclass(frozen=True)
class _Decoded:
    pcm: tuple[int, np.ndarray]  # (rate, transport PCM)
    audio: Blob  # what the shard stores
    ext: str
    digest: str  # of the PCM as decoded, before any fitting


def _decode(audio: Blob, ext: str, spec: DecodeSpec) -> _Decoded | AudioError:
    """One clip: its transport PCM, its digest and the audio to store (with its extension)."""
    try:
        clip = decode_clip(audio, spec, pcm16=True)
    except AudioError as exc:
        return exc
    pcm = _clip_pcm(clip, spec)
    digest = pcm_digest(clip.samples, clip.sample_rate)
    mode = spec.audio_mode
    if mode.startswith("flac:"):
        flac_rate = int(mode.split(":", 1)[1])
        flac = encode_flac(resample(clip.as_float(), clip.sample_rate, flac_rate), flac_rate)
        return _Decoded(pcm, flac, "flac", digest)
    if mode == "none":
        return _Decoded(pcm, b"", "", digest)
    return _Decoded(pcm, audio, ext, digest)


T = TypeVar("T")
R = TypeVar("R")


def _map_threads(fn: Callable[[T], R], items: list[T], threads: int) -> list[R]:
    """``map`` in input order, on ``threads`` threads: libsndfile and NumPy release the GIL
    while they work, so a task given several CPUs decodes a unit several times sooner
    (the first batch reaches the GPU sooner, and the last unit's tail is shorter)."""
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def prepare_unit(
    unit: WorkUnit,
    spec: DecodeSpec,
    segments: SegmentTable,
    labels: LabelMap,
    storage: Storage,
    exclusions: Exclusions | None = None,
) -> tuple[ModelBatch, UnitPayload]:
    lower_priority(spec.niceness)
    retain_freed_memory(spec.retain_freed_memory)
    started, cpu_started = time.perf_counter(), time.process_time()
    errors: list[ErrorRecord] = []
    pending: list[_Pending] = []
    samples_in = 0
    for raw in read_unit(unit, storage):
        samples_in += 1
        if raw.error is not None:
            _fail(errors, raw.source, raw.source, "read", raw.error[0], raw.error[1])
            continue
        audio = raw.audio
        if audio is None:
            kinds = ",".join(sorted(raw.members)) or "nothing"
            _fail(errors, raw.source, raw.source, "read", ErrorReason.NO_AUDIO, f"sample has {kinds}, no audio")
            continue
        try:
            clip = _clip_id(raw, spec.max_json_bytes)
        except _SampleError as exc:
            _fail(errors, raw.source, raw.source, "read", exc.reason, exc.detail)
            continue
        pending.append(_Pending(raw, clip, audio[0], audio[1]))

    read_s = time.perf_counter() - started
    found = segments.lookup(p.clip.ytid for p in pending)
    # Join first (cheap, in input order), then decode the joined clips, then assemble in
    # input order again, so error records keep the order of the input.
    joined: list[tuple[_Pending, SampleMeta] | ErrorRecord] = []
    seen_keys: set[str] = set()
    for item in pending:
        joined.append(_join(item, found, labels, seen_keys, exclusions))
    to_decode = [entry for entry in joined if not isinstance(entry, ErrorRecord)]
    decoded = _map_threads(lambda entry: _decode(entry[0].audio, entry[0].ext, spec), to_decode, spec.threads)
    metas: list[SampleMeta] = []
    stored: list[Blob] = []
    clips: list[tuple[int, np.ndarray]] = []
    outcomes = iter(decoded)
    for entry in joined:
        if isinstance(entry, ErrorRecord):
            errors.append(entry)
            continue
        item, meta = entry
        outcome = next(outcomes)
        if isinstance(outcome, AudioError):
            _fail(errors, meta.key, item.raw.source, "decode", outcome.reason, outcome.detail)
            continue
        clips.append(outcome.pcm)
        stored.append(outcome.audio)
        # per sample: copy mode keeps each clip's own encoding
        metas.append(replace(meta, audio_ext=outcome.ext, pcm_digest=outcome.digest))

    rate, wave_array = _transport_pcm(clips, spec)
    batch = ModelBatch(
        waveforms=wave_array,
        sample_rate=rate,
        tags=[list(m.tags) for m in metas],
        mids=[list(m.mids) for m in metas],
        keys=[m.key for m in metas],
    )
    audio = PackedBytes.pack(stored)
    finished = time.perf_counter()
    stages = {
        "read": read_s,
        "decode": finished - started - read_s,
        "prepare_cpu": time.process_time() - cpu_started,
    }
    payload = UnitPayload(
        unit=unit,
        samples=metas,
        audio=audio,
        errors=errors,
        samples_in=samples_in,
        stage_seconds=stages,
        prepared_at=time.time(),
    )
    return batch, payload
