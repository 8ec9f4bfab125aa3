"""The shard writer: one unit's samples and captions in, one committed shard out.

A shard is published in this order, each file atomically: the tar, the index rows, the
error rows, and last the stats file, whose presence marks the shard committed. A crash at
any point leaves either a committed shard or one that the next run redoes from scratch
(an earlier tar under the final name is replaced whole, never appended to).

Tar members are written in input order with fixed metadata (mtime 0, uid/gid 0, no user
names), so the same inputs and captions give byte-identical tars.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.records import (
    ERROR_SCHEMA,
    INDEX_SCHEMA,
    CaptionMeta,
    ErrorReason,
    ErrorRecord,
    SampleRecord,
    ShardStats,
)
from tagcap.schemas.tuning import Tuning
from tagcap.schemas.work import CaptionResult, StageInfo, UnitPayload
from tagcap.workers.storage import Storage


@dataclass(frozen=True)
class ProvenanceInfo:
    """The run-wide part of every sample's ``caption_meta``."""

    captioner_id: str
    checkpoint_sha256: str | None
    params: dict[str, Any]
    tagcap_version: str
    stages: tuple[StageInfo, ...] = ()  # the stages after the captioner, in chain order


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# How much of a tar is written before the kernel is asked to start putting it on disk
# (tuning.writeback_mb; 0: leave it all to the fsync at publication).
DEFAULT_WRITEBACK_BYTES = Tuning().writeback_bytes


class _TarStream:
    """Writes a ustar archive member by member straight to a file: a header, the bytes, the
    padding, and at the end what ``tarfile`` writes when it closes (two zero blocks, then
    zeros to a whole record), so the archive is byte for byte what ``tarfile`` makes.
    ``tarfile.addfile`` copies every member through 16 kB reads of a file object; this
    writes each member's buffer once, as it came out of the object store.

    Every ``writeback`` bytes the part just written is handed to the disk (``fadvise``
    DONTNEED starts its writeback and waits for nothing): a shard's 170 MB of audio then
    goes to disk while the tar streams, instead of all of it at the fsync that publishes
    it, where concurrent writers queued behind each other holding their units in flight."""

    def __init__(self, fh: BinaryIO, writeback: int = 0):
        self.fh = fh
        self.offset = 0
        self.writeback = writeback if hasattr(os, "posix_fadvise") else 0
        self.handed = 0  # bytes already handed to the disk
        # Of every byte written, for the stats: xxh3-128 finds damage as sha256 would, at a
        # fifteenth of the core time per shard (docs/how-a-run-works.md).
        self.digest = xxhash.xxh3_128()
        self.members = 0

    def _write(self, data: bytes | memoryview) -> None:
        self.fh.write(data)
        self.digest.update(data)

    def add(self, name: str, data: bytes | memoryview) -> None:
        size = len(data)
        header = _tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
        pad = -size % tarfile.BLOCKSIZE
        self._write(header)
        self._write(data)
        self._write(b"\0" * pad)
        self.members += 1
        self.offset += len(header) + size + pad
        if self.writeback and self.offset - self.handed >= self.writeback:
            self.fh.flush()
            with contextlib.suppress(OSError):  # advice only: a filesystem may not take it
                os.posix_fadvise(self.fh.fileno(), self.handed, self.offset - self.handed, os.POSIX_FADV_DONTNEED)
            self.handed = self.offset

    def close(self) -> None:
        end = self.offset + 2 * tarfile.BLOCKSIZE
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return buf.getvalue()


def stage_seconds(
    payload: UnitPayload,
    submitted: float,
    caption_window: tuple[float, float] | None,
    write_started: float,
    write_finished: float,
) -> dict[str, float]:
    """ShardStats.stage_seconds from the decode task's part and the unix times the unit was
    submitted, captioned and written. Times come from the clocks of the nodes that did the
    work, so a gap is never below zero (clocks a little apart on a cluster)."""
    stages = dict(payload.stage_seconds)
    if payload.prepared_at:
        decode_started = payload.prepared_at - stages.get("read", 0.0) - stages.get("decode", 0.0)
        stages["pending"] = max(0.0, decode_started - submitted)
        if caption_window is None:
            stages["queued"] = max(0.0, write_started - payload.prepared_at)
        else:
            caption_started, caption_finished = caption_window
            stages["to_captioner"] = max(0.0, caption_started - payload.prepared_at)
            stages["caption"] = max(0.0, caption_finished - caption_started)
            stages["to_writer"] = max(0.0, write_started - caption_finished)
    stages["write"] = write_finished - write_started
    return stages


def _reason(result: CaptionResult) -> ErrorReason:
    if result.error == "filtered":
        return ErrorReason.FILTERED
    return ErrorReason.REWRITE_ERROR if result.error_stage == "rewrite" else ErrorReason.CAPTION_ERROR


def _stage_provenance(stages: tuple[StageInfo, ...], result: CaptionResult) -> list[dict[str, Any]]:
    """Each stage's model, settings and its output for this sample, in chain order."""
    outputs = {out.stage: out.output for out in result.stages}
    return [
        {"stage": s.stage, "model": s.model_id, "sha256": s.sha256, "params": s.params, "output": outputs.get(s.stage)}
        for s in stages
    ]


def write_shard(
    payload: UnitPayload,
    results: list[CaptionResult],
    layout: OutputLayout,
    storage: Storage,
    provenance: ProvenanceInfo,
    started: float | None = None,
    caption_window: tuple[float, float] | None = None,
    writeback: int = DEFAULT_WRITEBACK_BYTES,
) -> ShardStats:
    """Writes the shard's tar, index and errors, then its stats (the completion marker).
    ``started``: when the unit was submitted; ``caption_window``: when its caption call ran
    (both unix seconds), for the stats' stage seconds; ``writeback``: bytes of the tar
    written between hand-offs to the disk (0: none before the fsync)."""
    if len(results) != len(payload.samples):
        raise ValueError(f"{len(results)} captions for {len(payload.samples)} samples")
    t0 = started if started is not None else time.time()
    write_started = time.time()
    shard = payload.unit.shard
    errors: list[ErrorRecord] = list(payload.errors)
    index_rows: list[dict[str, Any]] = []

    spool = storage.spool_dir(layout.tmp_dir)
    fd, tmp_tar = tempfile.mkstemp(prefix=f"{shard}.", suffix=".tar.part", dir=spool)
    try:
        with os.fdopen(fd, "wb") as fh:
            tar = _TarStream(fh, writeback)
            for i, (meta, result) in enumerate(zip(payload.samples, results, strict=True)):
                if result.text is None:
                    errors.append(
                        ErrorRecord(meta.key, meta.source, result.error_stage, _reason(result), result.error or "")
                    )
                    continue
                record = SampleRecord(
                    text=[result.text],
                    tag=list(meta.tags),
                    original_data={
                        "ytid": meta.ytid,
                        "start_seconds": meta.start_ms / 1000.0,
                        "end_seconds": meta.end_ms / 1000.0,
                        "mids": list(meta.mids),
                        **({"pcm_digest": meta.pcm_digest} if meta.pcm_digest else {}),
                    },
                    caption_meta=CaptionMeta(
                        captioner=provenance.captioner_id,
                        checkpoint_sha256=provenance.checkpoint_sha256,
                        params=provenance.params,
                        logprob=result.logprob,
                        clap_score=result.score,
                        candidates=list(result.candidates),
                        tagcap_version=provenance.tagcap_version,
                        answers=list(result.answers) if result.answers else None,
                        stages=_stage_provenance(provenance.stages, result) if provenance.stages else None,
                    ),
                )
                if meta.audio_ext:
                    tar.add(f"{meta.key}.{meta.audio_ext}", payload.audio[i])
                tar.add(f"{meta.key}.json", record.to_json_bytes())
                index_rows.append(
                    {
                        "key": meta.key,
                        "shard": shard,
                        "source": meta.source,
                        "ytid": meta.ytid,
                        "start_seconds": meta.start_ms / 1000.0,
                        "end_seconds": meta.end_ms / 1000.0,
                        "captions": [result.text],
                        "tags": list(meta.tags),
                        "mids": list(meta.mids),
                        "logprob": result.logprob,
                        "clap_score": result.score,
                        "pcm_digest": meta.pcm_digest,
                    }
                )
            tar.close()
        tar_bytes = os.path.getsize(tmp_tar)
        storage.publish_file(tmp_tar, layout.tar(shard))
    except BaseException:
        if os.path.exists(tmp_tar):
            os.unlink(tmp_tar)
        raise

    error_rows = [
        {
            "key": e.key,
            "shard": shard,
            "source": e.source,
            "stage": e.stage,
            "reason": str(e.reason),
            "detail": e.detail,
        }
        for e in errors
    ]
    storage.publish_bytes(_table(index_rows, INDEX_SCHEMA), layout.index(shard))
    storage.publish_bytes(_table(error_rows, ERROR_SCHEMA), layout.errors(shard))
    finished = time.time()
    seconds = finished - t0
    stages = stage_seconds(payload, t0, caption_window, write_started, finished)
    stats = ShardStats(
        shard=shard,
        source=payload.unit.source,
        samples_in=payload.samples_in,
        written=len(index_rows),
        failed=dict(sorted(Counter(str(e.reason) for e in errors).items())),
        seconds=round(seconds, 3),
        clips_per_second=round(payload.samples_in / seconds, 2) if seconds > 0 else 0.0,
        tar_bytes=tar_bytes,
        tar_xxh3_128=tar.digest.hexdigest(),
        tar_members=tar.members,
        finished_at=round(finished, 3),
        stage_seconds={stage: round(t, 4) for stage, t in stages.items()},
    )
    if stats.written + stats.failed_total != stats.samples_in:
        raise AssertionError(f"shard {shard}: counts do not reconcile: {stats}")
    storage.publish_bytes(stats.to_json_bytes(), layout.stats(shard))
    return stats
