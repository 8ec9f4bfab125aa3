"""``tagcap eval captions OUT --references FILE``: a corpus's captions against human ones.

References, recognised by their header:

* the AudioCaps CSVs (``audiocap_id,youtube_id,start_time,caption``: one caption a row, five
  rows a clip in val and test);
* the MusicCaps CSV (``ytid,start_s,end_s,...,caption,...``);
* Clotho's captions CSVs (``file_name,caption_1,...,caption_5``).

AudioCaps and MusicCaps join a corpus sample by YouTube id and start (the sample's
``original_data``); Clotho by file name (the input file's name without its extension, from
the index's ``source``). Every sample with references is scored, per captioner (its
provenance id) and per stage: ``caption`` is what the captioner said (what a rewrite read),
``rewrite`` what the rewrite made of it, where the chain has one. The result is written to
``OUT/eval/captions.json``, which ``tagcap inspect`` reports.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from tagcap.pipeline.outputs import committed_shards, read_manifest
from tagcap.schemas.layout import OutputLayout
from tagcap.workers.caption_metrics import score_caption_sets
from tagcap.workers.corpus_reader import sample_records
from tagcap.workers.storage import Storage, check_url


@dataclass(frozen=True)
class References:
    """One reference file, parsed."""

    url: str
    sha256: str
    kind: str  # audiocaps | musiccaps | clotho
    by_segment: dict[tuple[str, int], list[str]]  # (YouTube id, start ms) -> captions
    by_file: dict[str, list[str]]  # file name without extension -> captions

    @property
    def clips(self) -> int:
        return len(self.by_segment) + len(self.by_file)


def parse_references(data: bytes, url: str) -> References:
    text = data.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError(f"reference file {url} is empty")
    header = [h.strip().lower() for h in rows[0]]
    body = [r for r in rows[1:] if r]
    by_segment: dict[tuple[str, int], list[str]] = defaultdict(list)
    by_file: dict[str, list[str]] = {}
    if header[:2] == ["audiocap_id", "youtube_id"] and "caption" in header:
        kind, c = "audiocaps", header.index("caption")
        for r in body:
            by_segment[(r[1], round(float(r[2]) * 1000))].append(r[c])
    elif header[:2] == ["ytid", "start_s"] and "caption" in header:
        kind, c = "musiccaps", header.index("caption")
        for r in body:
            by_segment[(r[0], round(float(r[1]) * 1000))].append(r[c])
    elif header and header[0] == "file_name" and any(h.startswith("caption") for h in header):
        kind = "clotho"
        cols = [i for i, h in enumerate(header) if h.startswith("caption")]
        for r in body:
            by_file[posixpath.splitext(r[0])[0]] = [r[i] for i in cols if i < len(r) and r[i].strip()]
    else:
        raise ValueError(
            f"reference file {url}: header {','.join(header[:4])} is none of AudioCaps', MusicCaps' or Clotho's"
        )
    refs = References(url, hashlib.sha256(data).hexdigest(), kind, dict(by_segment), by_file)
    if not refs.clips:
        raise ValueError(f"reference file {url} ({kind}) holds no caption")
    return refs


def _stage_texts(record: dict[str, Any]) -> dict[str, str]:
    """``caption`` (the captioner's own) and, after a rewrite, ``rewrite`` (the final text)."""
    texts = record.get("text") or []
    if not texts:
        return {}
    final = str(texts[0])
    for stage in (record.get("caption_meta") or {}).get("stages") or []:
        if stage.get("stage") == "rewrite" and (stage.get("output") or {}).get("input"):
            return {"caption": str(stage["output"]["input"][0]), "rewrite": final}
    return {"caption": final}


def _lookup(refs: list[References], record: dict[str, Any], source: str) -> list[str] | None:
    data = record.get("original_data") or {}
    segment = (str(data.get("ytid", "")), round(float(data.get("start_seconds", -1)) * 1000))
    stem = posixpath.splitext(posixpath.basename(source.rsplit(":", 1)[-1]))[0] if source else ""
    for ref in refs:
        found = ref.by_segment.get(segment) or (ref.by_file.get(stem) if stem else None)
        if found:
            return found
    return None


def _sources(storage: Storage, layout: OutputLayout, shard: str) -> dict[str, str]:
    with storage.open_read(layout.index(shard)) as fh:
        table = pq.read_table(fh, columns=["key", "source"])
    return dict(zip(table.column("key").to_pylist(), table.column("source").to_pylist(), strict=True))


def eval_captions(
    output: str, reference_urls: list[str], storage: Storage | None = None, use_java: bool = True
) -> dict[str, Any]:
    """Score every committed sample of ``output`` that has references; writes and returns
    the result (``OUT/eval/captions.json``)."""
    storage = storage or Storage()
    layout = OutputLayout(output)
    if read_manifest(layout, storage) is None:
        raise ValueError(f"{output}: no manifest.json (not a tagcap output root)")
    if not reference_urls:
        raise ValueError("give at least one --references FILE")
    refs = []
    for url in reference_urls:
        check_url(url)
        try:
            refs.append(parse_references(storage.read_bytes(url), url))
        except FileNotFoundError:
            raise ValueError(f"reference file not found: {url}") from None
    started = time.perf_counter()
    # (captioner, stage) -> key -> caption; key -> references
    candidates: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    references: dict[str, list[str]] = {}
    samples = 0
    for shard in sorted(committed_shards(layout, storage)):
        sources = _sources(storage, layout, shard)
        _, records = sample_records(storage, layout.tar(shard))
        for key, record in records:
            if isinstance(record, ValueError):
                continue
            samples += 1
            found = _lookup(refs, record, sources.get(key, ""))
            if not found:
                continue
            references[key] = found
            captioner = str((record.get("caption_meta") or {}).get("captioner", "?"))
            for stage, text in _stage_texts(record).items():
                candidates[(captioner, stage)][key] = text
    named = {f"{captioner}\0{stage}": texts for (captioner, stage), texts in candidates.items()}
    scored = score_caption_sets(named, references, use_java=use_java) if named else {}
    results = []
    notes: dict[str, str] = {}
    for name, scores in sorted(scored.items()):
        captioner, stage = name.split("\0")
        notes.update(scores.notes)
        results.append({"captioner": captioner, "stage": stage, **scores.to_json()})
    out = {
        "references": [{"url": r.url, "sha256": r.sha256, "kind": r.kind, "clips": r.clips} for r in refs],
        "samples": samples,
        "matched": len(references),
        "results": results,
        "not_computed": notes,
        "seconds": round(time.perf_counter() - started, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.publish_bytes(json.dumps(out, indent=2, sort_keys=True).encode(), layout.caption_eval)
    return out
