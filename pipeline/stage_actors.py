"""The Ray actors of a run's model stages: :class:`CaptionActor` (the captioner) and
:class:`StageActor` (a stage after it: a rewriter, a filter). Each holds its model for its
lifetime: it loads once, on the actor's GPU when it has one, and checks that it loaded the
model the driver recorded (a checkpoint replaced mid-run cannot work under the run's id).

An actor says once, in its log, how long its start took (the worker's ``.err`` file under
Ray's session logs: the embedded Ray does not forward worker output).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import ray

from tagcap.schemas.stages import StageSettings
from tagcap.schemas.tuning import Tuning
from tagcap.schemas.work import CaptionedUnit, ModelBatch, StageInfo
from tagcap.workers.actor_settings import apply_actor_tuning
from tagcap.workers.captioners import build
from tagcap.workers.captioners.base import CaptionerInfo, caption_in_batches
from tagcap.workers.stages import build_stage
from tagcap.workers.store_pages import map_pages

if TYPE_CHECKING:
    from tagcap.pipeline.executor import ExecutionSettings

# The captioner actor's thread for map_input, beside its caption calls' threads.
MAP_INPUT_GROUP = "map_input"


def _say_ready(what: str, started: float, parts: str, applied: dict[str, Any]) -> None:
    waits = f", GPU waits {applied['cuda_sync']}" if "cuda_sync" in applied else ""
    print(
        f"tagcap: {what} ready in {time.perf_counter() - started:.1f} s ({parts}){waits}", file=sys.stderr, flush=True
    )


class CaptionActor:
    """Holds one captioner for its lifetime."""

    def __init__(self, settings: ExecutionSettings):
        started = time.perf_counter()
        self.applied = apply_actor_tuning(settings.tuning, settings.gpus_per_actor > 0, settings.call_trace)
        self.captioner = build(settings.captioner_spec, settings.captioner_config)
        built = time.perf_counter()
        loaded = self.captioner.info.captioner_id
        if settings.captioner_id is not None and loaded != settings.captioner_id:
            raise RuntimeError(f"the captioner loaded as {loaded}, but this run is {settings.captioner_id}")
        self.batch_size = settings.batch_size
        # Optional: a captioner may prepare for batches up to this size (the BLAT
        # captioner captures its CUDA graphs) before calls run concurrently.
        warm_up = getattr(self.captioner, "warm_up", None)
        if callable(warm_up):
            warm_up(self.batch_size)
        warmed = time.perf_counter()
        _say_ready(
            f"captioner {loaded}",
            started,
            f"load {built - started:.1f} s, warm-up {warmed - built:.1f} s",
            self.applied,
        )

    def info(self) -> CaptionerInfo:
        return self.captioner.info

    def settings_in_effect(self) -> dict[str, Any]:
        """What this actor's process applied of the run's tuning and diagnostics."""
        return dict(self.applied)

    @ray.method(concurrency_group=MAP_INPUT_GROUP)
    def map_input(self, batch: ModelBatch) -> int:
        """Map a decoded unit's pages of the object store into this process while the unit
        waits for its caption call, on a thread of its own (see ``workers.store_pages``):
        pinning them for the GPU then costs no page faults. The pages touched."""
        return map_pages(batch.waveforms)

    def caption(self, batch: ModelBatch) -> CaptionedUnit:
        started = time.time()
        results = caption_in_batches(self.captioner, batch, self.batch_size)
        return CaptionedUnit(results, started, time.time(), tags=list(batch.tags))


class StageActor:
    """Holds one stage after the captioner (``workers.stages``) for its lifetime."""

    def __init__(self, settings: StageSettings, tuning: Tuning, call_trace_dir: str | None):
        started = time.perf_counter()
        self.name = settings.stage
        self.applied = apply_actor_tuning(tuning, settings.resources.gpus_per_actor > 0, call_trace_dir)
        options = {**settings.options, "batch_size": settings.resources.batch_size}
        self.stage = build_stage(settings.stage, settings.spec, options)
        loaded = self.stage.info.model_id
        if settings.model_id is not None and loaded != settings.model_id:
            raise RuntimeError(f"the {self.name} model loaded as {loaded}, but this run's is {settings.model_id}")
        _say_ready(f"{self.name} {loaded}", started, "load", self.applied)

    def info(self) -> StageInfo:
        return self.stage.info

    def run(self, unit: CaptionedUnit, batch: ModelBatch | None = None) -> CaptionedUnit:
        started = time.time()
        out = self.stage(unit, batch)
        return replace(out, stage_windows={**out.stage_windows, self.name: (started, time.time())})


def caption_actor_class(settings: ExecutionSettings, actor_cpus: float) -> Any:
    """CaptionActor as the Ray actor class a run makes its actors from."""
    # Ray takes concurrency groups only here, not in .options(); its typing lacks them.
    as_actor = ray.remote(concurrency_groups={MAP_INPUT_GROUP: 1})  # type: ignore[call-overload]
    return as_actor(CaptionActor).options(
        num_gpus=settings.gpus_per_actor,
        num_cpus=actor_cpus,
        # Restarts are unbounded but each unit's attempts are not, so a captioner that
        # keeps dying on one input ends as one failed shard, not a stalled job.
        max_restarts=-1,
        max_task_retries=0,
        # Two calls at once let one unit's host-to-GPU copy and result decoding overlap
        # the other's model work (for captioners that say they are thread-safe).
        max_concurrency=settings.actor_threads,
    )


def stage_actor_class(settings: StageSettings, actor_cpus: float) -> Any:
    """StageActor as the Ray actor class of one stage's pool."""
    return ray.remote(StageActor).options(
        num_gpus=settings.resources.gpus_per_actor,
        num_cpus=actor_cpus,
        max_restarts=-1,
        max_task_retries=0,
        max_concurrency=settings.resources.threads,
    )
