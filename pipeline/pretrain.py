"""``tagcap pretrain``: the same training loop (``tagcap.workers.pretrain``) run as one
process, under ``torchrun`` (it reads RANK/WORLD_SIZE and joins the process group), or on a
Ray cluster through Ray Train's TorchTrainer, which sets up torch.distributed on each
worker before calling the loop."""

from __future__ import annotations

from typing import Any

from tagcap.workers.exclusion import load_exclusions
from tagcap.workers.pretrain import PretrainConfig, parse_corpus, pretrain
from tagcap.workers.storage import Storage


def pretrain_config(cfg: PretrainConfig) -> PretrainConfig:
    for spec in cfg.train:
        parse_corpus(spec)  # fail fast on a bad weight
    if cfg.captions and len(cfg.captions) != len(cfg.train):
        raise ValueError("give one --captions per --train (empty string for none), in the same order")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.checkpoint_every < 1:
        raise ValueError("--steps, --batch-size and --checkpoint-every must be >= 1")
    load_exclusions(cfg.exclude_keys, Storage(cfg.storage_options), "segment")  # fail fast on a bad list
    return cfg


def _ray_worker(config: dict[str, Any]) -> None:
    pretrain(PretrainConfig(**config))


def run_pretrain(cfg: PretrainConfig, ray_address: str | None, workers: int = 1, use_gpu: bool = False) -> dict:
    if not ray_address:
        return pretrain(cfg)
    from dataclasses import asdict

    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tagcap.pipeline.ray_runtime import ray_session

    with ray_session(ray_address):
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config=asdict(cfg),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="tagcap-pretrain"),
        )
        trainer.fit()
    import json

    from tagcap.schemas.layout import join_url
    from tagcap.workers.storage import Storage

    lines = Storage(cfg.storage_options).read_text(join_url(cfg.out, "metrics.jsonl")).splitlines()
    return json.loads(lines[-1]) if lines else {}
