"""``tagcap dedupe OUT [OUT ...]``: duplicate clips within and across corpora.

* **Exact** duplicates share the PCM digest the index recorded for each clip at caption time
  (:func:`tagcap.workers.fingerprint.pcm_digest`); this needs no audio.
* **Near** duplicates (one recording re-encoded, at another gain, shifted by up to a second)
  are found from the stored audio: one Ray task a shard decodes its clips and fingerprints
  them, and the driver matches all fingerprints at once (:mod:`tagcap.workers.duplicates`).
  A corpus written with ``--audio none`` takes part in the exact search only.

One key that several corpora hold is one clip (a corpus regenerated from another, say), not a
duplicate: it is compared once, as the first corpus's. Each group keeps its first clip in
input order (corpora in the order given, shards and clips in order) and lists the others.

It writes a key list (``#`` comments, then one ``Y<ytid>_<ms>`` key a line) that
``tagcap caption --exclude`` and ``tagcap pretrain --exclude-keys`` read; the groups, one
JSON line each; and into every corpus ``dedupe/summary.json`` (:class:`DedupeSummary`),
which ``tagcap inspect`` reports.
"""

from __future__ import annotations

import json
import tarfile
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray

from tagcap.pipeline.outputs import committed_shards, read_manifest
from tagcap.pipeline.ray_runtime import ray_session
from tagcap.schemas.dedupe import ClipRef, DedupeSummary, DuplicateGroup, ShardFingerprints
from tagcap.schemas.layout import OutputLayout, join_url
from tagcap.workers.audio import AUDIO_EXTENSIONS, AudioError, read_mono
from tagcap.workers.duplicates import NearDuplicateSettings, duplicate_groups
from tagcap.workers.fingerprint import FP_RATE, FRAME, HOP, Fingerprint, fingerprint
from tagcap.workers.storage import Storage


def fingerprint_shard(storage: Storage, layout: OutputLayout, corpus: int, shard: str) -> ShardFingerprints:
    """Every audio member of one committed shard, decoded and fingerprinted in tar order."""
    keys: list[str] = []
    bits: list[np.ndarray] = []
    audible: list[np.ndarray] = []
    unreadable: list[tuple[str, str]] = []
    with storage.open_read(layout.tar(shard)) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            key, _, ext = member.name.partition(".")
            if not member.isfile() or ext not in AUDIO_EXTENSIONS:
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            try:
                samples, rate = read_mono(data, pcm16=True)
            except AudioError as exc:
                unreadable.append((key, f"{exc.reason}: {exc.detail}"))
                continue
            fp = fingerprint(samples, rate)
            keys.append(key)
            bits.append(fp.bits)
            audible.append(fp.audible)
    lengths = [len(b) for b in bits]
    return ShardFingerprints(
        corpus=corpus,
        shard=shard,
        keys=keys,
        bits=np.concatenate(bits) if bits else np.zeros(0, np.uint32),
        audible=np.concatenate(audible) if audible else np.zeros(0, bool),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        unreadable=unreadable,
    )


def _unpack(batch: ShardFingerprints) -> dict[str, Fingerprint]:
    out = {}
    for i, key in enumerate(batch.keys):
        lo, hi = int(batch.offsets[i]), int(batch.offsets[i + 1])
        out[key] = Fingerprint(batch.bits[lo:hi], batch.audible[lo:hi])
    return out


def _index_rows(storage: Storage, layout: OutputLayout, shard: str) -> list[tuple[str, str | None]]:
    """(key, pcm digest or None) of a shard's index, in order."""
    with storage.open_read(layout.index(shard)) as fh:
        index = pq.ParquetFile(fh)
        names = index.schema_arrow.names
        table = index.read(columns=[c for c in ("key", "pcm_digest") if c in names])  # not the captions
    keys = table.column("key").to_pylist()
    digests = table.column("pcm_digest").to_pylist() if "pcm_digest" in table.column_names else [None] * len(keys)
    return list(zip(keys, digests, strict=True))


def _write_keys(storage: Storage, url: str, groups: list[DuplicateGroup], corpora: list[str]) -> int:
    dropped = sorted({c.key for g in groups for c in g.dropped})
    head = [
        "# tagcap dedupe: one duplicate clip a line (its group's first clip is kept)",
        f"# corpora: {' '.join(corpora)}",
    ]
    storage.publish_bytes(("\n".join(head + dropped) + "\n").encode(), url)
    return len(dropped)


def run_dedupe(
    outputs: list[str],
    keys_url: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    settings: NearDuplicateSettings | None = None,
    storage: Storage | None = None,
) -> dict[str, Any]:
    """Find duplicates across ``outputs`` and write the key list, the groups and each
    corpus's summary; returns the summary of the whole (what the command prints)."""
    storage = storage or Storage()
    settings = settings or NearDuplicateSettings()
    layouts = [OutputLayout(u) for u in outputs]
    for layout in layouts:
        if read_manifest(layout, storage) is None:
            raise ValueError(f"{layout.root}: no manifest.json (not a tagcap output root)")
    keys_url = keys_url or join_url(layouts[0].root, "dedupe", "drop-keys.txt")
    groups_url = join_url(layouts[0].root, "dedupe", "groups.jsonl")

    refs: list[ClipRef] = []
    digests: list[str | None] = []
    seen: dict[str, int] = {}
    shared = 0
    keys_per_corpus: list[set[str]] = []
    shards_per_corpus: list[list[str]] = []
    for c, layout in enumerate(layouts):
        shards = sorted(committed_shards(layout, storage))
        shards_per_corpus.append(shards)
        mine: set[str] = set()
        for shard in shards:
            for key, digest in _index_rows(storage, layout, shard):
                mine.add(key)
                if key in seen:
                    shared += refs[seen[key]].corpus != c
                    continue
                seen[key] = len(refs)
                refs.append(ClipRef(c, shard, key))
                digests.append(digest)
        keys_per_corpus.append(mine)

    started = time.perf_counter()
    fps: dict[tuple[int, str], Fingerprint] = {}
    unreadable = 0
    with ray_session(ray_address, num_cpus=num_cpus):
        task = ray.remote(num_cpus=1)(fingerprint_shard)
        pending = [
            task.remote(storage, layout, c, shard) for c, layout in enumerate(layouts) for shard in shards_per_corpus[c]
        ]
        while pending:
            done, pending = ray.wait(pending, num_returns=min(len(pending), 16))
            for batch in ray.get(done):
                unreadable += len(batch.unreadable)
                fps.update({(batch.corpus, k): fp for k, fp in _unpack(batch).items()})
    fingerprint_s = time.perf_counter() - started
    started = time.perf_counter()
    fingerprints = [fps.get((r.corpus, r.key)) for r in refs]
    groups = duplicate_groups(refs, digests, fingerprints, settings)
    match_s = time.perf_counter() - started

    dropped = _write_keys(storage, keys_url, groups, [lay.root for lay in layouts])
    corpora = [lay.root for lay in layouts]
    storage.publish_bytes("".join(json.dumps(g.to_json(corpora)) + "\n" for g in groups).encode(), groups_url)
    method = {
        "exact": "xxh3-128 of decoded PCM, recorded at caption time",
        "near": f"sub-band energy-difference bits, {FRAME / FP_RATE * 1000:.0f} ms frames every "
        f"{HOP / FP_RATE * 1000:.0f} ms at {FP_RATE} Hz; pairs sharing frame values, "
        "confirmed by bit error rate",
        **settings.describe(),
    }
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    exact = [g for g in groups if g.kind == "exact"]
    near = [g for g in groups if g.kind == "near"]
    totals: dict[str, Any] = {}
    for c, layout in enumerate(layouts):
        dropped_here = {r.key for g in groups for r in g.dropped} & keys_per_corpus[c]
        summary = DedupeSummary(
            corpora=corpora,
            clips=len(refs),
            clips_here=len(keys_per_corpus[c]),
            exact_groups=len(exact),
            exact_dropped=sum(len(g.dropped) for g in exact),
            near_groups=len(near),
            near_dropped=sum(len(g.dropped) for g in near),
            dropped_here=len(dropped_here),
            keys_url=keys_url,
            groups_url=groups_url,
            shared_keys=shared,
            without_digest=sum(1 for r, d in zip(refs, digests, strict=True) if d is None and r.corpus == c),
            not_fingerprinted=sum(1 for r, f in zip(refs, fingerprints, strict=True) if f is None and r.corpus == c),
            method=method,
            created=created,
        )
        storage.publish_bytes(json.dumps(asdict(summary), indent=2, sort_keys=True).encode(), layout.dedupe_summary)
        if c == 0:
            totals = asdict(summary)
    totals.pop("clips_here", None)
    totals.pop("dropped_here", None)
    totals.update(
        dropped=dropped, unreadable=unreadable, fingerprint_s=round(fingerprint_s, 2), match_s=round(match_s, 2)
    )
    return totals
