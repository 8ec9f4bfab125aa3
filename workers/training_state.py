"""What a training run keeps beside its model folder, shared by ``train-captioner`` and
``pretrain``: ``state.json`` (the step; written last, so it marks a complete checkpoint),
``optimizer.pt`` (optimizer and scheduler, loaded with ``weights_only=True``) and
``metrics.jsonl``."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from typing import Any

import torch

from tagcap.schemas.layout import join_url
from tagcap.workers.storage import Storage


class TrainingState:
    def __init__(self, out: str, storage: Storage):
        self.out, self.storage = out, storage
        self.state_url = join_url(out, "state.json")
        self.optimizer_url = join_url(out, "optimizer.pt")
        self.metrics_url = join_url(out, "metrics.jsonl")
        self.metrics: list[str] = []

    def resumable(self) -> bool:
        return self.storage.exists(self.state_url)

    def restore(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Load optimizer, scheduler and the metrics so far; returns the step to continue at."""
        blob = torch.load(io.BytesIO(self.storage.read_bytes(self.optimizer_url)), weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        if self.storage.exists(self.metrics_url):
            self.metrics = self.storage.read_text(self.metrics_url).splitlines()
        return self.step()

    def step(self) -> int:
        return int(json.loads(self.storage.read_bytes(self.state_url))["step"])

    def save(self, optimizer: torch.optim.Optimizer, scheduler: Any, step: int, config: Any) -> None:
        """After the model folder has been written."""
        buf = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buf)
        self.storage.publish_bytes(buf.getvalue(), self.optimizer_url)
        state = {"step": step, "config": asdict(config)}
        self.storage.publish_bytes(json.dumps(state, default=str).encode(), self.state_url)

    def log(self, record: dict[str, Any]) -> None:
        self.metrics.append(json.dumps(record, sort_keys=True))
        self.storage.publish_bytes(("\n".join(self.metrics) + "\n").encode(), self.metrics_url)
