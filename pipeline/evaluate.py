"""``tagcap eval zeroshot|retrieval``: load a pretrain checkpoint and evaluation shards,
print (and optionally write) the result JSON."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Any

import torch
from tqdm import tqdm

from tagcap.workers.evaluate import labels_of, load_eval_set, retrieval, zeroshot
from tagcap.workers.models.clap import load_clap
from tagcap.workers.storage import Storage


def class_names(spec: str | None, data_meta: list[dict[str, Any]], field: str, storage: Storage) -> list[str]:
    """From a file (plain lines or class_labels_indices.csv's display_name), a comma list,
    or every label found in the data (sorted)."""
    if not spec:
        return sorted({lbl for m in data_meta for lbl in labels_of(m, field)})
    if "," in spec and not storage.exists(spec):
        return [s.strip() for s in spec.split(",") if s.strip()]
    text = storage.read_text(spec)
    if text.startswith("index,mid,display_name"):
        return [row["display_name"] for row in csv.DictReader(io.StringIO(text))]
    return [line.strip() for line in text.splitlines() if line.strip()]


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    storage = Storage()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, sha = load_clap(args.model, storage, device)
    with tqdm(desc=f"eval {args.task}: decoding", unit="clip", disable=not args.progress, file=sys.stderr) as bar:
        data = load_eval_set(
            args.data, model.cfg.frontend.sample_rate, model.clip_samples, storage, on_clip=lambda: bar.update(1)
        )
    if args.task == "zeroshot":
        classes = class_names(args.labels, data.meta, args.label_field, storage)
        result = zeroshot(model, data, classes, args.prompt, args.label_field)
    else:
        result = retrieval(model, data)
    result = {"task": args.task, "model_sha256": sha, **result}
    if args.output:
        storage.publish_bytes(json.dumps(result, indent=1, sort_keys=True).encode(), args.output)
    return result
