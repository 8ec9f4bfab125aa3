"""Evaluation of a contrastive model: zero-shot classification, audio-text retrieval and a
supervised linear probe on the frozen audio tower (the baseline zero-shot is judged by).

Evaluation data is WebDataset shards with an audio member and a ``json`` member holding
the labels (``label_field``: a string for single-label sets such as ESC-50, a list for
multi-label sets such as AudioSet's ``tag``) or the captions (``text``, a list of five for
the 5-captions-per-clip retrieval protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tagcap.workers.datasets import crop, decode_audio_member, expand_urls, sample_json, tar_samples
from tagcap.workers.models.clap import ContrastiveModel
from tagcap.workers.storage import Storage


@dataclass
class EvalSet:
    keys: list[str]
    waveforms: np.ndarray  # (n, clip_samples)
    meta: list[dict[str, Any]]


def load_eval_set(
    urls: list[str] | str,
    sample_rate: int,
    clip_samples: int,
    storage: Storage | None = None,
    on_clip: Callable[[], None] | None = None,
) -> EvalSet:
    """Every clip of ``urls`` decoded and cropped to the model's length; ``on_clip`` is
    called after each (progress)."""
    storage = storage or Storage()
    keys, waves, metas = [], [], []
    src = ({"url": u} for u in expand_urls(urls))
    for sample in tar_samples(storage)(src):
        keys.append(sample["__key__"])
        waves.append(crop(decode_audio_member(sample, sample_rate), clip_samples, None))
        metas.append(sample_json(sample))
        if on_clip:
            on_clip()
    return EvalSet(keys, np.stack(waves) if waves else np.zeros((0, clip_samples), np.float32), metas)


@torch.no_grad()
def embed_audio(
    model: ContrastiveModel, waves: np.ndarray, batch_size: int = 64, features: bool = False
) -> torch.Tensor:
    device = model.logit_scale.device
    out = []
    for i in range(0, len(waves), batch_size):
        x = torch.from_numpy(waves[i : i + batch_size]).to(device)
        out.append((model.audio_features(x) if features else model.embed_audio(x)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: ContrastiveModel, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    return torch.cat(
        [model.embed_text(texts[i : i + batch_size]).float().cpu() for i in range(0, len(texts), batch_size)]
    )


def labels_of(meta: dict[str, Any], field: str) -> list[str]:
    value = meta.get(field, [])
    return [value] if isinstance(value, str) else [str(v) for v in value]


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def zeroshot(
    model: ContrastiveModel,
    data: EvalSet,
    classes: list[str],
    prompt: str = "the sound of {}",
    label_field: str = "label",
) -> dict[str, Any]:
    """Top-1/top-5 accuracy when every clip has one label, else mAP over classes.

    Clips whose ``label_field`` names none of ``classes`` are left out and counted
    (``clips_without_label``); a ValueError when that is every clip (a wrong field or
    class list), rather than a figure over nothing."""
    index = {c: i for i, c in enumerate(classes)}
    labelled = [[index[lbl] for lbl in labels_of(m, label_field) if lbl in index] for m in data.meta]
    keep = [i for i, t in enumerate(labelled) if t]
    if not keep:
        raise ValueError(
            f"none of the {len(labelled)} clips has a label of the {len(classes)} classes in its json field "
            f"{label_field!r} (tagcap's own shards carry their tag names in 'tag': --label-field tag)"
        )
    targets = [labelled[i] for i in keep]
    texts = [prompt.format(c.replace("_", " ")) for c in classes]
    sims = (embed_audio(model, data.waveforms[keep]) @ embed_texts(model, texts).T).numpy()
    result: dict[str, Any] = {
        "clips": len(targets),
        "clips_without_label": len(labelled) - len(targets),
        "classes": len(classes),
        "chance_top1": 1.0 / len(classes),
    }
    if all(len(t) == 1 for t in targets):
        ranked = np.argsort(-sims, axis=1, kind="stable")
        truth = np.array([t[0] for t in targets])
        result["top1"] = float((ranked[:, 0] == truth).mean())
        result["top5"] = float((ranked[:, :5] == truth[:, None]).any(axis=1).mean())
    else:
        positives = np.zeros_like(sims, dtype=bool)
        for row, t in enumerate(targets):
            positives[row, t] = True
        aps = [average_precision(sims[:, c], positives[:, c]) for c in range(len(classes)) if positives[:, c].any()]
        result["mAP"] = float(np.mean(aps))
    return result


def retrieval(model: ContrastiveModel, data: EvalSet) -> dict[str, float]:
    """R@1/5/10 text->audio (each caption finds its clip) and audio->text (a clip finds any
    of its captions): the 5-captions-per-clip protocol of AudioCaps/Clotho."""
    texts, owner = [], []
    for i, meta in enumerate(data.meta):
        for caption in labels_of(meta, "text"):
            texts.append(caption)
            owner.append(i)
    audio = embed_audio(model, data.waveforms)
    text = embed_texts(model, texts)
    sims = (text @ audio.T).numpy()  # (captions, clips)
    owner_arr = np.array(owner)
    rank_t2a = np.argsort(-sims, axis=1, kind="stable")
    pos_t2a = np.array([int(np.where(rank_t2a[j] == owner_arr[j])[0][0]) for j in range(len(texts))])
    rank_a2t = np.argsort(-sims.T, axis=1, kind="stable")
    pos_a2t = np.array([min(int(np.where(owner_arr[rank_a2t[i]] == i)[0][0]), 10**9) for i in range(len(data.keys))])
    out: dict[str, float] = {"clips": float(len(data.keys)), "captions": float(len(texts))}
    for k in (1, 5, 10):
        out[f"t2a_R@{k}"] = float((pos_t2a < k).mean())
        out[f"a2t_R@{k}"] = float((pos_a2t < k).mean())
    return out


def linear_probe(
    train_x: torch.Tensor,
    train_y: list[int],
    test_x: torch.Tensor,
    test_y: list[int],
    n_classes: int,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> float:
    """Top-1 of a logistic-regression head trained on frozen features (standardised)."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    head = torch.nn.Linear(xtr.shape[1], n_classes)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    ytr = torch.tensor(train_y)
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(head(xtr), ytr).backward()
        opt.step()
    with torch.no_grad():
        return float((head(xte).argmax(1) == torch.tensor(test_y)).float().mean())
