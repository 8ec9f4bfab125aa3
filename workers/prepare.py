"""Read + decode + join: one work unit in, (ModelBatch, UnitPayload) out.

This is the body of the CPU task that feeds the captioner actors. Checks run cheapest
first (name, JSON, tag join) so a clip without tags is never decoded; every sample that
falls out becomes exactly one :class:`ErrorRecord`, in input order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from tagcap.schemas.audioset import LabelMap, SegmentTable
from tagcap.schemas.keys import ClipId, clip_id_from_json, make_key, parse_clip_name
from tagcap.schemas.records import ErrorReason, ErrorRecord
from tagcap.schemas.work import DecodeSpec, ModelBatch, SampleMeta, UnitPayload, WorkUnit
from tagcap.workers.audio import AudioError, decode_clip, encode_flac, fit_length, limit_torch_threads, resample
from tagcap.workers.readers import RawSample, read_unit
from tagcap.workers.storage import Storage


@dataclass
class _Pending:
    raw: RawSample
    clip: ClipId
    ext: str
    audio: bytes


class _SampleError(Exception):
    def __init__(self, reason: ErrorReason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _fail(errors: list[ErrorRecord], key: str, source: str, stage: str, reason: ErrorReason, detail: str) -> None:
    errors.append(ErrorRecord(key=key, source=source, stage=stage, reason=reason, detail=detail[:500]))


def _clip_id(raw: RawSample, max_json_bytes: int) -> ClipId:
    """The clip's (YTID, start): from its JSON when that names one, else from its name."""
    blob = raw.members.get("json")
    if blob is not None:
        if len(blob) > max_json_bytes:
            raise _SampleError(ErrorReason.BAD_JSON, f"json member is {len(blob)} bytes > {max_json_bytes}")
        try:
            meta = json.loads(blob)
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


def prepare_unit(
    unit: WorkUnit,
    spec: DecodeSpec,
    segments: SegmentTable,
    labels: LabelMap,
    storage: Storage,
) -> tuple[ModelBatch, UnitPayload]:
    limit_torch_threads()
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

    found = segments.lookup(p.clip.ytid for p in pending)
    audio_mode = spec.audio_mode
    flac_rate = int(audio_mode.split(":", 1)[1]) if audio_mode.startswith("flac:") else None
    metas: list[SampleMeta] = []
    stored: list[bytes] = []
    waves: list[np.ndarray] = []
    seen_keys: set[str] = set()
    for item in pending:
        source = item.raw.source
        segment = SegmentTable.choose(found.get(item.clip.ytid, []), item.clip.start_ms)
        if segment is None:
            where = (
                f"{item.clip.ytid} start {item.clip.start_ms} ms" if item.clip.start_ms is not None else item.clip.ytid
            )
            n = len(found.get(item.clip.ytid, []))
            detail = f"no segment row for {where}" + (f" ({n} segments, none matches)" if n else "")
            _fail(errors, source, source, "join", ErrorReason.NO_SEGMENT, detail)
            continue
        key = make_key(segment.ytid, segment.start_ms)
        if key in seen_keys:
            _fail(errors, key, source, "join", ErrorReason.DUPLICATE_KEY, f"{key} already in this shard")
            continue
        seen_keys.add(key)
        if not segment.mids:
            _fail(errors, key, source, "join", ErrorReason.NO_TAGS, "segment has no labels")
            continue
        mids, names, unknown = labels.resolve(segment.mids)
        if not mids:
            _fail(errors, key, source, "join", ErrorReason.UNKNOWN_TAGS, f"no known MID among {list(unknown)}")
            continue
        try:
            clip = decode_clip(item.audio, spec)
        except AudioError as exc:
            _fail(errors, key, source, "decode", exc.reason, exc.detail)
            continue
        waves.append(fit_length(resample(clip.samples, clip.sample_rate, spec.sample_rate), spec.clip_samples))
        if flac_rate is not None:
            stored.append(encode_flac(resample(clip.samples, clip.sample_rate, flac_rate), flac_rate))
            ext = "flac"
        elif audio_mode == "none":
            stored.append(b"")
            ext = ""
        else:
            stored.append(item.audio)
            ext = item.ext
        metas.append(
            SampleMeta(
                key=key,
                source=source,
                ytid=segment.ytid,
                start_ms=segment.start_ms,
                end_ms=segment.end_ms,
                mids=tuple(mids),
                tags=tuple(names),
                audio_ext=ext,  # per sample: copy mode keeps each clip's own encoding
            )
        )

    wave_array = np.stack(waves) if waves else np.zeros((0, spec.clip_samples), np.float32)
    batch = ModelBatch(
        waveforms=wave_array,
        tags=[list(m.tags) for m in metas],
        mids=[list(m.mids) for m in metas],
        keys=[m.key for m in metas],
    )
    payload = UnitPayload(unit=unit, samples=metas, audio=stored, errors=errors, samples_in=samples_in)
    return batch, payload
