"""``blat:PATH_OR_URL``: tagcap's tag-guided captioner (BLAT's model) from a checkpoint
folder. Loads once per actor, on the actor's GPU when it has one, bf16 autocast there.

Config (``captioner_options``): ``beam_size`` (3), ``max_words`` (20), ``min_words`` (1),
``candidates`` (how many n-best hypotheses to return per clip; default all ``beam_size``),
``cuda_graphs`` (true: on a GPU, each beam step is replayed as a CUDA graph captured at the
actor's warm-up for its batch size; the same captions, without the per-kernel launch cost;
docs/design/gpu-captioner.md).

This module is what the driver needs (the description of a run: id, sample rate, clip
length) and imports no torch; the model itself lives in ``blat_runtime``, imported by the
actor that builds the captioner (torch costs a driver seconds of start and hundreds of MB).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from tagcap.schemas.work import CaptionResult, ModelBatch
from tagcap.workers.captioners.base import CaptionerInfo
from tagcap.workers.models.checkpoint_files import captioner_id, read_config, read_weights, weights_sha256
from tagcap.workers.models.configs import CaptionerConfig
from tagcap.workers.storage import Storage

if TYPE_CHECKING:
    from tagcap.workers.captioners.blat_runtime import BlatRuntime


def _params(config: dict[str, Any]) -> dict[str, Any]:
    beam = int(config.get("beam_size", 3))
    return {
        "beam_size": beam,
        "max_words": int(config.get("max_words", 20)),
        "min_words": int(config.get("min_words", 1)),
        "candidates": int(config.get("candidates", beam)),
    }


def _use_cuda_graphs(config: dict[str, Any]) -> bool:
    value = config.get("cuda_graphs", True)
    return value if isinstance(value, bool) else str(value).lower() not in ("0", "false", "no", "off")


class BlatCaptioner:
    name: ClassVar[str] = "blat"
    # Thread-safe (no state changes after loading): the actor runs two calls at once so
    # one batch's copy to the GPU and caption decoding overlap the other's model work.
    concurrent_calls: ClassVar[int] = 2

    @classmethod
    def describe(cls, target: str, config: dict[str, Any]) -> CaptionerInfo:
        if not target:
            raise ValueError("blat needs a checkpoint: blat:PATH_OR_URL")
        storage = Storage(config.get("storage_options") or {})
        try:
            model_cfg = read_config(target, storage)
            sha = weights_sha256(target, storage)
        except FileNotFoundError as exc:
            raise ValueError(f"checkpoint incomplete or missing: {exc}") from None
        return cls._info(model_cfg, sha, config)

    @staticmethod
    def _info(model_cfg: CaptionerConfig, sha: str, config: dict[str, Any]) -> CaptionerInfo:
        params = _params(config)
        if params["beam_size"] < 1 or not 1 <= params["candidates"] <= params["beam_size"]:
            raise ValueError("need beam_size >= 1 and 1 <= candidates <= beam_size")
        return CaptionerInfo(
            captioner_id=captioner_id(sha),
            checkpoint_sha256=sha,
            sample_rate=model_cfg.frontend.sample_rate,
            clip_seconds=model_cfg.clip_seconds,
            params={**params, "tag_fusion": model_cfg.tag_fusion},
        )

    def __init__(self, config: dict[str, Any]):
        self.params = _params(config)
        storage = Storage(config.get("storage_options") or {})
        # The weights (hundreds of MB) are read and hashed on a thread while the model is
        # built (and, on a CPU, while torch imports; a GPU actor has imported it already to
        # set how its threads wait): an actor's start delays every caption of a run.
        with ThreadPoolExecutor(1, thread_name_prefix="tagcap-weights") as pool:
            weights = pool.submit(read_weights, config["target"], storage)
            from tagcap.workers.captioners.blat_runtime import BlatRuntime  # torch: the actor's only

            self.runtime: BlatRuntime = BlatRuntime(
                config["target"], storage, self.params, _use_cuda_graphs(config), weights
            )
        # From what was loaded (the weights are read and hashed once); the actor checks the
        # id against the one the driver recorded (see ``CaptionActor``).
        self.info = self._info(self.runtime.ckpt.model.cfg, self.runtime.ckpt.sha256, config)

    def warm_up(self, batch_size: int) -> None:
        """See :meth:`BlatRuntime.warm_up`."""
        self.runtime.warm_up(batch_size, self.info.clip_samples)

    def __call__(self, batch: ModelBatch) -> list[CaptionResult]:
        return self.runtime.caption(batch, self.info.sample_rate, self.info.clip_samples)
