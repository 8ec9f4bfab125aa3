"""``tagcap prepare-captions``: captioner training shards from audio plus human captions.

Caption CSVs in three shapes, told apart by their header:

* AudioCaps ``audiocap_id,youtube_id,start_time,caption`` (one caption a row; a clip's
  rows are gathered);
* Clotho ``file_name,caption_1..caption_5``;
* MusicCaps ``ytid,start_s,end_s,...,caption``.

AudioCaps and MusicCaps clips are joined to the AudioSet segment CSVs by YTID and start
for their tags; Clotho clips (Freesound, no YTID) carry no tags. Audio comes from a
folder (any fsspec URL) whose files are named in any shape tagcap reads
(``Y<YTID>``, ``<YTID>_<start>_<end>``, tagcap keys) or, for Clotho, by file name. Each
clip becomes ``<key>.<ext>`` (the original bytes) + ``<key>.json`` with ``text`` (all its
captions), ``tag`` and ``original_data.mids``: the shape ``train-captioner`` and
``pretrain`` read. A summary of what joined and what did not is printed and written as
``prepare_summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import sys
import tarfile
from dataclasses import dataclass, field

from tqdm import tqdm

from tagcap.pipeline.esc50 import pseudo_ytid
from tagcap.schemas.audioset import LabelMap, SegmentTable
from tagcap.schemas.keys import make_key, parse_clip_name
from tagcap.schemas.layout import join_url, shard_name
from tagcap.workers.audio import AUDIO_EXTENSIONS
from tagcap.workers.storage import Storage


@dataclass
class CaptionedClip:
    key: str
    captions: list[str]
    ytid: str | None = None
    start_ms: int | None = None
    file_name: str | None = None  # Clotho
    mids: list[str] = field(default_factory=list)
    end_ms: int | None = None


def detect_format(header: list[str]) -> str:
    cols = {c.strip() for c in header}
    if {"youtube_id", "start_time", "caption"} <= cols:
        return "audiocaps"
    if {"ytid", "start_s", "caption"} <= cols:
        return "musiccaps"
    if "file_name" in cols and "caption_1" in cols:
        return "clotho"
    raise ValueError(f"unknown caption CSV header: {header}")


def parse_caption_csv(text: str) -> tuple[str, list[CaptionedClip]]:
    reader = csv.DictReader(io.StringIO(text))
    fmt = detect_format(list(reader.fieldnames or []))
    clips: dict[str, CaptionedClip] = {}
    for row in reader:
        if fmt == "clotho":
            name = row["file_name"]
            caps = [row[k].strip() for k in sorted(row) if k and k.startswith("caption_") and row[k] and row[k].strip()]
            key = make_key(pseudo_ytid(name), 0)
            clips.setdefault(key, CaptionedClip(key, [], file_name=name)).captions.extend(caps)
            continue
        ytid = row["youtube_id" if fmt == "audiocaps" else "ytid"].strip()
        start_ms = round(float(row["start_time" if fmt == "audiocaps" else "start_s"]) * 1000)
        key = make_key(ytid, start_ms)
        clip = clips.setdefault(key, CaptionedClip(key, [], ytid=ytid, start_ms=start_ms))
        if row["caption"].strip():
            clip.captions.append(row["caption"].strip())
    return fmt, list(clips.values())


def join_tags(clips: list[CaptionedClip], segments: SegmentTable) -> tuple[int, int]:
    """Fill each YouTube clip's MIDs from the segment table; returns (joined, missing)."""
    found = segments.lookup(c.ytid for c in clips if c.ytid)
    joined = missing = 0
    for clip in clips:
        if clip.ytid is None:
            continue
        seg = SegmentTable.choose(found.get(clip.ytid, []), clip.start_ms)
        if seg is None:
            missing += 1
            continue
        clip.mids, clip.end_ms = list(seg.mids), seg.end_ms
        joined += 1
    return joined, missing


def index_audio(folder: str, storage: Storage) -> dict[str, str]:
    """Audio files under ``folder`` by tagcap key, by ``Y<YTID>`` (no start) and by name."""
    by: dict[str, str] = {}
    for entry in storage.find(folder):
        url = entry["url"]
        name = posixpath.basename(url)
        stem, _, ext = name.rpartition(".")
        if ext.lower() not in AUDIO_EXTENSIONS:
            continue
        by[f"name:{name}"] = url
        try:
            clip = parse_clip_name(stem)
        except ValueError:
            continue
        by[make_key(clip.ytid, clip.start_ms) if clip.start_ms is not None else f"ytid:{clip.ytid}"] = url
    return by


@dataclass
class PrepareSummary:
    format: str
    clips: int
    with_audio: int
    missing_audio: int
    joined_tags: int
    missing_segment: int
    shards: int


def prepare_captions(
    captions_url: str,
    audio_url: str,
    output: str,
    segments: SegmentTable,
    labels: LabelMap,
    storage: Storage,
    clips_per_shard: int = 256,
    progress: bool = False,
) -> PrepareSummary:
    fmt, clips = parse_caption_csv(storage.read_text(captions_url))
    joined, missing_seg = join_tags(clips, segments) if fmt != "clotho" else (0, 0)
    audio = index_audio(audio_url, storage)
    ready: list[tuple[CaptionedClip, str]] = []
    for clip in clips:
        url = (
            audio.get(f"name:{clip.file_name}")
            if clip.file_name
            else audio.get(clip.key) or audio.get(f"ytid:{clip.ytid}")
        )
        if url is not None and clip.captions:
            ready.append((clip, url))
    storage.makedirs(output)
    n_shards = 0
    bar = tqdm(total=len(ready), desc="prepare-captions", unit="clip", disable=not progress, file=sys.stderr)
    for start in range(0, len(ready), clips_per_shard):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for clip, url in ready[start : start + clips_per_shard]:
                data = storage.read_bytes(url)
                ext = url.rsplit(".", 1)[-1].lower()
                _, names, _ = labels.resolve(clip.mids)
                meta = {
                    "text": clip.captions,
                    "tag": names,
                    "original_data": {
                        "ytid": clip.ytid,
                        "start_seconds": clip.start_ms / 1000 if clip.start_ms is not None else None,
                        "end_seconds": clip.end_ms / 1000 if clip.end_ms is not None else None,
                        "mids": [m for m in clip.mids if m in labels],
                        "file_name": clip.file_name,
                    },
                }
                for name, payload in ((f"{clip.key}.{ext}", data), (f"{clip.key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                bar.update(1)
        storage.publish_bytes(buf.getvalue(), join_url(output, f"{shard_name(n_shards)}.tar"))
        n_shards += 1
    bar.close()
    summary = PrepareSummary(fmt, len(clips), len(ready), len(clips) - len(ready), joined, missing_seg, n_shards)
    storage.publish_bytes(json.dumps(summary.__dict__, indent=1).encode(), join_url(output, "prepare_summary.json"))
    return summary
