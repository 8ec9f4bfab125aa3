"""Ray scheduling of a caption run.

Per work unit, three Ray calls chained by object references, so data flows worker to
worker without touching the driver:

    prepare task (CPU)  ->  CaptionActor.caption (GPU)  ->  ShardWriter.write_shard
    read, decode, join       model batches, loaded once      tar + index + errors + stats

The driver keeps a bounded number of units in the air (memory stays flat however
large the corpus), hands units to captioner actors round robin and, once a unit's
captions are made, its write to a writer of the run's pool (``pipeline.shard_writers``),
and retries a unit whose chain failed (a task error, a dead actor, a lost node) up to
``max_attempts`` times before reporting the shard failed with the last error; the other
shards go on.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, ActorUnschedulableError, RayActorError, RayTaskError

from tagcap.pipeline.shard_writers import WriterPool
from tagcap.schemas.audioset import LabelMap, SegmentTable
from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.records import ShardStats
from tagcap.schemas.tuning import Tuning
from tagcap.schemas.work import CaptionedUnit, CaptionResult, DecodeSpec, ModelBatch, WorkUnit
from tagcap.workers.actor_settings import apply_actor_tuning
from tagcap.workers.captioners import build
from tagcap.workers.captioners.base import CaptionerInfo, caption_in_batches
from tagcap.workers.prepare import prepare_unit
from tagcap.workers.storage import Storage
from tagcap.workers.store_pages import map_pages
from tagcap.workers.writer import ProvenanceInfo


@ray.remote(num_returns=2)
def _prepare(unit: WorkUnit, spec: DecodeSpec, segments: SegmentTable, labels: LabelMap, storage: Storage):
    return prepare_unit(unit, spec, segments, labels, storage)


@dataclass
class ExecutionResult:
    stats: dict[str, ShardStats] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # shard -> reason
    retries: int = 0


@dataclass(frozen=True)
class ExecutionSettings:
    captioner_spec: str
    captioner_config: dict[str, Any]
    batch_size: int
    actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    decode_cpus: float
    max_inflight: int | None  # None: see inflight_limits
    max_attempts: int
    write_cpus: float = 0.0  # CPUs each shard writer reserves
    actor_threads: int = 1
    filter_spec: str | None = None
    filter_rule: str = "best>=0.5"
    unit_timeout_s: float = 1800.0
    storage_options: dict[str, Any] = field(default_factory=dict)
    unit_bytes: int | None = None  # typical input bytes of a unit (sizes the default in-flight)
    captioner_id: str | None = None  # what the driver recorded in the manifest; actors must match it
    # The run's advanced settings, carried to every actor (a joined cluster's workers
    # obey the driver's values, whatever their own environment holds).
    tuning: Tuning = field(default_factory=Tuning)
    call_trace: str | None = None  # a folder: each actor writes where its calls' time went

    @property
    def maps_ahead(self) -> bool:
        """Whether each decoded unit's pages are mapped into its actor while it waits for
        its caption call (CaptionActor.map_input); by default where the actor has a GPU."""
        map_ahead = self.tuning.map_ahead
        return self.gpus_per_actor > 0 if map_ahead is None else map_ahead


# The actor's thread for map_input, beside its caption calls' threads.
MAP_INPUT_GROUP = "map_input"


class CaptionActor:
    """Holds one captioner (and the caption filter, if any) for its lifetime: models load
    once, on the actor's GPU when it has one."""

    def __init__(self, settings: ExecutionSettings):
        started = time.perf_counter()
        self.applied = apply_actor_tuning(settings.tuning, settings.gpus_per_actor > 0, settings.call_trace)
        waits = f", GPU waits {self.applied['cuda_sync']}" if "cuda_sync" in self.applied else ""
        self.captioner = build(settings.captioner_spec, settings.captioner_config)
        built = time.perf_counter()
        loaded = self.captioner.info.captioner_id
        if settings.captioner_id is not None and loaded != settings.captioner_id:
            # E.g. a checkpoint replaced after the run started: its captions would carry
            # another model's provenance.
            raise RuntimeError(f"the captioner loaded as {loaded}, but this run is {settings.captioner_id}")
        self.batch_size = settings.batch_size
        # Optional: a captioner may prepare for batches up to this size (the BLAT
        # captioner captures its CUDA graphs) before calls run concurrently.
        warm_up = getattr(self.captioner, "warm_up", None)
        if callable(warm_up):
            warm_up(self.batch_size)
        warmed = time.perf_counter()
        self.filter = None
        if settings.filter_spec:
            from tagcap.workers.filters import ClapFilter

            self.filter = ClapFilter(settings.filter_spec, settings.filter_rule, Storage(settings.storage_options))
        # A captioner's start (imports, weights, device, warm-up, filter) delays every
        # caption of a run; said once per actor, in its log (the worker's .err file under
        # Ray's session logs: the embedded Ray does not forward worker output).
        ready = time.perf_counter()
        print(
            f"tagcap: captioner {loaded} ready in {ready - started:.1f} s (load {built - started:.1f} s, "
            f"warm-up {warmed - built:.1f} s, filter {ready - warmed:.1f} s){waits}",
            file=sys.stderr,
            flush=True,
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
        if self.filter is not None:
            filtered: list[CaptionResult] = []
            for start in range(0, len(batch), self.batch_size):
                part = batch.slice(start, start + self.batch_size)
                filtered.extend(
                    self.filter.apply(results[start : start + len(part)], part.waveforms, part.sample_rate, part.tags)
                )
            results = filtered
        return CaptionedUnit(results, started, time.time())


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


def _describe_error(exc: BaseException, writer_ids: frozenset[str] = frozenset()) -> str:
    """A failed attempt's reason, one line. ``writer_ids``: the shard writers' actor ids, to
    tell a writer that died from a captioner that did."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    if isinstance(exc, RayActorError):
        return "shard writer died" if getattr(exc, "actor_id", None) in writer_ids else "captioner actor died"
    return f"{type(exc).__name__}: {exc}"


_ACTOR_TROUBLE = (RayActorError, ActorUnavailableError, ActorUnschedulableError, TimeoutError)


def failed_actors(exc: BaseException, writer_ids: frozenset[str], writing: bool) -> tuple[bool, bool]:
    """Which actors a failed attempt must wait for, (captioner, writer): the one its error
    names, so that the driver does not queue a question behind a healthy captioner's calls
    after a writer died. ``writing``: the unit timed out with its write sent (the timeout
    restarted its writer, not its captioner). Only a writer is bound to a node, so an actor
    that cannot be scheduled is one; an actor error that names no actor stands for both."""
    trouble = exc.cause if isinstance(exc, RayTaskError) and isinstance(exc.cause, _ACTOR_TROUBLE) else exc
    if not isinstance(trouble, _ACTOR_TROUBLE):
        return False, False
    if isinstance(trouble, ActorUnschedulableError):
        return False, True
    if isinstance(trouble, TimeoutError):
        return not writing, writing
    actor_id = getattr(trouble, "actor_id", None)
    if actor_id is None:
        return True, True
    return actor_id not in writer_ids, actor_id in writer_ids


_ACTOR_RECOVERY_S = 120.0


def _actor_cpus(settings: ExecutionSettings, n_actors: int, writers_cpus: float) -> float:
    """CPUs to reserve per actor, capped so that actors never hold every CPU of the
    cluster: a decode task and the writers (``writers_cpus`` in all) must always be able
    to run, or the pipeline deadlocks waiting for input that cannot be produced."""
    total = float(ray.cluster_resources().get("CPU", 0.0))
    spare = total - settings.decode_cpus - writers_cpus
    if n_actors * settings.cpus_per_actor <= spare:
        return settings.cpus_per_actor
    capped = max(spare, 0.0) / n_actors
    if capped <= 0:
        raise ValueError(
            f"the cluster has {total:g} CPUs: too few for decode tasks ({settings.decode_cpus:g} CPU) "
            f"beside {n_actors} captioner actors"
        )
    return round(capped, 4)


@dataclass(frozen=True)
class InflightLimits:
    """Which work units may go into the air. A unit is *ahead* (submitted, its captions
    not yet returned) or *writing* (only its write left). At most ``ahead`` units may
    be ahead once caption calls return (until then, while the captioner actors start, as
    many as the budget takes), and the units in the air must fit ``budget``: a unit ahead
    costs ``ahead_cost``, one writing ``writing_cost``.

    The units that piled up while the actors started are not held against decoding once
    calls return: the ahead limit becomes at least as many as were ahead then
    (:meth:`once_flowing`); that many already fit the budget.

    Of the units ahead, at most ``decoding`` may not be decoded yet (0: no such limit), as
    Ray starts worker processes for queued tasks. Decoded units still wait in the store up
    to the budget. Why each rule: docs/design/inflight-policy.md."""

    ahead: int
    budget: float
    ahead_cost: float = 1.0
    writing_cost: float = 1.0
    decoding: int = 0

    def admits(self, ahead: int, writing: int, flowing: bool, decoding: int = 0) -> bool:
        """Whether one more unit may go: ``ahead`` and ``writing`` are in the air now,
        ``decoding`` of those ahead not decoded yet; ``flowing``: a caption call has returned."""
        if flowing and ahead >= self.ahead:
            return False
        if self.decoding and decoding >= self.decoding:
            return False
        return (ahead + 1) * self.ahead_cost + writing * self.writing_cost <= self.budget

    def once_flowing(self, ahead: int) -> InflightLimits:
        """The limits from the first returned caption call on, ``ahead`` units ahead then."""
        return replace(self, ahead=max(self.ahead, ahead))


# Units not yet decoded, per decode slot: one running and one queued behind it (see
# InflightLimits for why not more).
UNDECODED_PER_SLOT = 2

# The share of the object store that units in the air may fill by default
# (tuning.store_fraction). The rest is slack for the store's own fragmentation and what
# Ray keeps there; a full store spills to disk rather than fail, but slowly.
STORE_FRACTION = Tuning().store_fraction


def inflight_limits(
    cpus: float,
    store_bytes: float,
    n_actors: int,
    actor_cpus: float,
    decode_cpus: float,
    unit_bytes: int | None,
    writers_cpus: float = 0.0,
    store_fraction: float = STORE_FRACTION,
) -> InflightLimits:
    """The default limits on work units in flight.

    Ahead of the captioners: twice the units that can decode at once (the CPUs the actors
    and the shard writers, ``writers_cpus`` in all, leave) plus two per actor, so a
    decode task that finishes always finds its next unit queued.

    Memory: the units in the air fit ``store_fraction`` of the object store. A unit ahead
    counts three times its input bytes (its audio bytes and its PCM, about twice compressed
    FLAC); a unit writing counts its audio only (its PCM is released once captioned). While
    the captioner actors start, decoded units wait in the store up to this budget instead
    of the decode slots standing idle. Bounded either way, so memory does not grow with the
    corpus. Input sizes unknown: at most the ahead limit in the air, writing or not. Why:
    docs/design/inflight-policy.md and docs/design/store-fraction.md."""
    decoding = decode_slots(cpus, n_actors, actor_cpus, decode_cpus, writers_cpus)
    ahead = 2 * (decoding + n_actors)
    floor = n_actors + 1
    if not unit_bytes or store_bytes <= 0:
        return InflightLimits(max(floor, ahead), float(max(floor, ahead)), decoding=UNDECODED_PER_SLOT * decoding)
    budget = store_fraction * store_bytes / unit_bytes  # in units of one unit's input bytes
    ahead = max(floor, min(ahead, int(budget / 3)))
    return InflightLimits(
        ahead, max(budget, 3.0 * ahead), ahead_cost=3.0, writing_cost=1.0, decoding=UNDECODED_PER_SLOT * decoding
    )


def decode_slots(cpus: float, n_actors: int, actor_cpus: float, decode_cpus: float, writers_cpus: float) -> int:
    """Decode tasks that can run at once: the CPUs the captioner actors and the shard
    writers (``writers_cpus`` in all) leave."""
    return max(1, int(max(cpus - n_actors * actor_cpus - writers_cpus, 1.0) / decode_cpus))


def _inflight_limits(
    settings: ExecutionSettings, n_actors: int, actor_cpus: float, writers_cpus: float = 0.0
) -> InflightLimits:
    resources = ray.cluster_resources()
    if settings.max_inflight:  # that many in the air, writing or not, decoding at two per slot
        slots = decode_slots(float(resources.get("CPU", 1.0)), n_actors, actor_cpus, settings.decode_cpus, writers_cpus)
        return InflightLimits(settings.max_inflight, float(settings.max_inflight), decoding=UNDECODED_PER_SLOT * slots)
    return inflight_limits(
        float(resources.get("CPU", 1.0)),
        float(resources.get("object_store_memory", 0.0)),
        n_actors,
        actor_cpus,
        settings.decode_cpus,
        settings.unit_bytes,
        writers_cpus,
        settings.tuning.store_fraction,
    )


@dataclass
class _Flight:
    """A unit in the air: its attempt, the captioner actor it went to, when, and the Ray
    calls it still waits on: its decode task until that is done, its caption call until that
    returns, then its write (sent to a writer only then, so that the pool's least busy
    writer near the unit's payload takes it)."""

    unit: WorkUnit
    attempt: int
    actor: int
    submitted: float  # monotonic, for the unit's deadline
    submitted_at: float  # unix seconds, for its shard's stats
    batch: ray.ObjectRef | None  # its decode task's first result, until that is ready
    payload: ray.ObjectRef
    captions: ray.ObjectRef | None  # until the caption call returned
    write: ray.ObjectRef | None = None  # once sent
    writer: int | None = None  # which of the pool's writers has it

    def pending(self) -> list[ray.ObjectRef]:
        return [r for r in (self.batch, self.captions, self.write) if r is not None]


def _ready(refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
    """The refs that are ready: waits up to a second for one, then takes every other one
    ready by then. Nothing is fetched: results are read with ``ray.get`` where needed."""
    if not refs:
        return []
    first, rest = ray.wait(refs, num_returns=1, timeout=1.0, fetch_local=False)
    if not first or not rest:
        return first
    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
    return [*first, *more]


def run_units(
    units: list[WorkUnit],
    settings: ExecutionSettings,
    decode: DecodeSpec,
    segments: SegmentTable,
    labels: LabelMap,
    layout: OutputLayout,
    storage: Storage,
    provenance: ProvenanceInfo,
    on_done: Callable[[ShardStats], None] | None = None,
    on_failed: Callable[[str, str], None] | None = None,
) -> ExecutionResult:
    result = ExecutionResult()
    if not units:
        return result
    n_actors = max(1, min(settings.actors, len(units)))
    writers = WriterPool(layout, storage, provenance, settings.write_cpus, settings.tuning.writeback_bytes)
    writers_cpus = writers.reserved_cpus
    actor_cpus = _actor_cpus(settings, n_actors, writers_cpus)
    limits = _inflight_limits(settings, n_actors, actor_cpus, writers_cpus)
    actor_cls = caption_actor_class(settings, actor_cpus)

    def new_actor():
        return actor_cls.remote(settings)

    actors = [new_actor() for _ in range(n_actors)]

    def recover(i: int) -> None:
        """After an actor died: wait until Ray has restarted it (so retried units do not
        fail again on the dead process), or replace it if it cannot come back."""
        try:
            ray.get(actors[i].info.remote(), timeout=_ACTOR_RECOVERY_S)
        except Exception:
            ray.kill(actors[i])
            actors[i] = new_actor()

    segments_ref = ray.put(segments)
    labels_ref = ray.put(labels)
    prepare = _prepare.options(num_cpus=settings.decode_cpus, max_retries=0)

    pending = deque((unit, 1) for unit in units)
    waiting: dict[ray.ObjectRef, _Flight] = {}  # every pending call of every unit in the air
    flights: list[_Flight] = []
    next_actor = 0
    flowing = False  # a caption call has returned: the actors are up, the ahead limit applies

    def counts() -> tuple[int, int, int]:
        """Units in the air: (ahead, writing, not yet decoded)."""
        ahead = sum(f.captions is not None for f in flights)
        return ahead, len(flights) - ahead, sum(f.batch is not None for f in flights)

    def finish(flight: _Flight) -> None:
        flights.remove(flight)
        for ref in flight.pending():
            waiting.pop(ref, None)
        if flight.writer is not None:
            writers.finished(flight.writer)

    def settle(flight: _Flight, outcome: ShardStats | BaseException) -> None:
        """A unit's end: its stats, or a failed attempt (retried while attempts are left)."""
        finish(flight)
        if isinstance(outcome, ShardStats):
            result.stats[flight.unit.shard] = outcome
            if on_done:
                on_done(outcome)
            return
        writer_ids = writers.actor_ids()
        reason = _describe_error(outcome, writer_ids)
        captioner_failed, writer_failed = failed_actors(outcome, writer_ids, flight.write is not None)
        if captioner_failed:
            recover(flight.actor)
        if writer_failed and flight.writer is not None:
            writers.recover(flight.writer)
        if flight.attempt < settings.max_attempts:
            result.retries += 1
            pending.appendleft((flight.unit, flight.attempt + 1))
        else:
            result.failed[flight.unit.shard] = f"failed after {flight.attempt} attempts: {reason}"
            if on_failed:
                on_failed(flight.unit.shard, result.failed[flight.unit.shard])

    try:
        while pending or flights:
            while pending:
                ahead, writing, undecoded = counts()
                if not limits.admits(ahead, writing, flowing, undecoded):
                    break
                unit, attempt = pending.popleft()
                refs: Any = prepare.remote(unit, decode, segments_ref, labels_ref, storage)
                batch_ref, payload_ref = refs  # num_returns=2
                actor_index = next_actor % n_actors
                next_actor += 1
                captions_ref = actors[actor_index].caption.remote(batch_ref)
                if settings.maps_ahead:
                    # Fire and forget: a unit whose decode failed, or an actor that died,
                    # fails only this call.
                    actors[actor_index].map_input.options(num_returns=0).remote(batch_ref)
                flight = _Flight(
                    unit, attempt, actor_index, time.monotonic(), time.time(), batch_ref, payload_ref, captions_ref
                )
                flights.append(flight)
                waiting[batch_ref] = waiting[captions_ref] = flight
            done = _ready(list(waiting))
            for ref in done:
                found = waiting.pop(ref, None)
                if found is None:  # its unit already ended (a failed call ends it early)
                    continue
                flight = found
                if ref == flight.batch:  # decoded (or failed): the next unit may go to its slot
                    flight.batch = None
                elif ref == flight.captions:  # captioned (or failed): its write goes out
                    if not flowing:
                        limits = limits.once_flowing(counts()[0])
                        flowing = True
                    flight.captions = None
                    # A failed decode or caption call fails the write with its error, so
                    # that every unit ends through its write's result.
                    flight.write, flight.writer = writers.submit(flight.payload, ref, flight.submitted_at)
                    waiting[flight.write] = flight
                elif ref == flight.write:
                    flight.write = None
                    try:
                        outcome: ShardStats | BaseException = ray.get(ref)
                    except Exception as exc:
                        outcome = exc
                    settle(flight, outcome)
            # A unit stuck past its deadline (e.g. waiting on objects lost with a node that
            # Ray keeps trying to reconstruct) is cancelled and counts as a failed attempt.
            now = time.monotonic()
            for flight in [f for f in flights if now - f.submitted > settings.unit_timeout_s]:
                for ref in flight.pending():
                    ray.cancel(ref, force=False, recursive=True)
                if flight.write is not None and flight.writer is not None:
                    # A writer stuck in a write cannot be cancelled: restart it (the writes
                    # it had fail over and are retried).
                    writers.kill(flight.writer)
                else:
                    # Nor can a captioner stuck in a call: restart its actor (the units
                    # queued behind it fail over and are retried).
                    ray.kill(actors[flight.actor], no_restart=False)
                settle(flight, TimeoutError(f"unit did not finish within {settings.unit_timeout_s:g} s"))
    finally:
        for actor in actors:
            ray.kill(actor)
        writers.close()
    return result
