"""An existing tagcap corpus as the input of a regeneration (``tagcap regenerate``): each
committed shard's samples as the text stages need them, read from the ``<key>.json`` members
alone. The tar's headers are read to step over the audio members; their bytes never are.

What a sample gives the chain: its tag names, and the caption stage's result as the source
run recorded it: the captioner's answers (an ``alm:`` chain), its candidates (those the
source run's rewrite read, where it had one) and its caption. The unit that comes out has no
audio: its shard is caption-only, with the same name and keys as the source shard, which
``tagcap pretrain --captions`` joins to the source corpus.
"""

from __future__ import annotations

import json
import tarfile
import time
from typing import IO, Any

from tagcap.schemas.records import ErrorReason, ErrorRecord
from tagcap.schemas.work import (
    CaptionedUnit,
    CaptionResult,
    PackedBytes,
    SampleMeta,
    StageOutput,
    UnitPayload,
    WorkUnit,
)
from tagcap.workers.storage import Storage


def _caption_result(record: dict[str, Any]) -> CaptionResult:
    meta = record.get("caption_meta") or {}
    texts = [str(t) for t in record.get("text") or []]
    candidates = [str(c) for c in meta.get("candidates") or texts]
    for stage in meta.get("stages") or []:
        if stage.get("stage") == "rewrite" and (stage.get("output") or {}).get("input"):
            candidates = [str(c) for c in stage["output"]["input"]]  # what the captioner itself said
    # The scores a filter recorded, for a new rule over them (``--filter recorded``).
    recorded = [
        StageOutput("filter", dict(stage["output"]))
        for stage in meta.get("stages") or []
        if stage.get("stage") == "filter" and stage.get("output")
    ]
    return CaptionResult(
        text=texts[0] if texts else None,
        logprob=meta.get("logprob"),
        candidates=tuple(candidates),
        answers=tuple(str(a) for a in meta.get("answers") or ()),
        error=None if texts else "no caption in the source sample",
        stages=tuple(recorded[-1:]),
    )


def _sample_meta(key: str, url: str, record: dict[str, Any]) -> SampleMeta:
    data = record.get("original_data") or {}
    return SampleMeta(
        key=key,
        source=f"{url}:{key}",
        ytid=str(data.get("ytid", "")),
        start_ms=round(float(data.get("start_seconds", 0.0)) * 1000),
        end_ms=round(float(data.get("end_seconds", 0.0)) * 1000),
        mids=tuple(str(m) for m in data.get("mids") or ()),
        tags=tuple(str(t) for t in record.get("tag") or ()),
        audio_ext="",
        pcm_digest=str(data["pcm_digest"]) if data.get("pcm_digest") else None,
    )


def _open_headers(storage: Storage, url: str) -> IO[bytes]:
    """The tar opened for small reads at the places asked for: on an object store, ranged
    reads of 64 kB rather than the default read-ahead of megabytes of audio."""
    fs, path = storage.fs(url)
    if storage.is_local(fs):
        return open(path, "rb")
    return storage.retry(lambda: fs.open(path, "rb", block_size=1 << 16), f"open {url}")


def json_members(fh: IO[bytes]) -> list[tuple[str, bytes]]:
    """(name, bytes) of every ``.json`` file member, in archive order; every other member's
    data is stepped over (a seek), not read."""
    out = []
    with tarfile.open(fileobj=fh, mode="r:") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                data = tar.extractfile(member)
                if data is not None:
                    out.append((member.name, data.read()))
    return out


def sample_records(storage: Storage, url: str) -> tuple[int, list[tuple[str, dict[str, Any] | ValueError]]]:
    """(json members, [(key, its parsed record or why it does not parse)]) of one shard."""
    with _open_headers(storage, url) as fh:
        members = json_members(fh)
    out: list[tuple[str, dict[str, Any] | ValueError]] = []
    for name, raw in members:
        key = name[: -len(".json")]
        try:
            record = json.loads(raw)
            out.append((key, record if isinstance(record, dict) else ValueError("not a JSON object")))
        except ValueError as exc:
            out.append((key, exc))
    return len(members), out


def read_corpus_unit(unit: WorkUnit, storage: Storage) -> tuple[CaptionedUnit, UnitPayload]:
    """One source shard as (the caption stage's result, the caption-only payload to write)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    url = unit.urls[0]
    samples: list[SampleMeta] = []
    results: list[CaptionResult] = []
    errors: list[ErrorRecord] = []
    members, records = sample_records(storage, url)
    for key, record in records:
        if isinstance(record, ValueError):
            errors.append(ErrorRecord(key, f"{url}:{key}.json", "read", ErrorReason.BAD_JSON, str(record)))
            continue
        samples.append(_sample_meta(key, url, record))
        results.append(_caption_result(record))
    now = time.time()
    captioned = CaptionedUnit(results, now, now, tags=[list(s.tags) for s in samples])
    payload = UnitPayload(
        unit=unit,
        samples=samples,
        audio=PackedBytes.pack([b""] * len(samples)),
        errors=errors,
        samples_in=members,
        # The stages of a decode task, as every shard's stats have them: nothing decodes here.
        stage_seconds={
            "read": time.perf_counter() - started,
            "decode": 0.0,
            "prepare_cpu": time.process_time() - cpu_started,
        },
        prepared_at=now,
    )
    return captioned, payload
