"""Ray scheduling of a caption run: each unit's chain of calls, a bounded number of units in
the air, retries.

Per work unit, Ray calls chained by object references, so audio and text flow worker to
worker without touching the driver:

    DecodeActor.prepare  ->  caption  ->  [rewrite]  ->  [filter]  ->  ShardWriter.write_shard
    read, decode, join       the model stages, each a pool of actors   tar + index + errors + stats

The parts: admission (``pipeline.admission``: which units may go into the air), failure
handling (``pipeline.failures``: what a failed attempt says, which actors to wait for), the
decode actors (``pipeline.decode_actors``; with ``tuning.decode_actors`` off, a task per unit),
the stages' actors (``pipeline.stage_actors``, in pools of ``pipeline.actor_pools``) and the
shard writers (``pipeline.shard_writers``); this module schedules. It hands each unit's stages to
their pools' actors round robin and, once its last stage has returned, its write to a writer
near its payload; a unit whose chain failed (a task error, a dead actor, a lost node) is
retried up to ``max_attempts`` times before its shard is reported failed with the last
error; the other shards go on. The decode pool is fitted to the cluster's CPUs as the run
goes (nodes joining or lost), and a node that joins gets shard writers; the model stages'
pools keep the size they started with.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import ray

from tagcap.pipeline.actor_pools import ActorPool
from tagcap.pipeline.admission import InflightLimits, actor_cpus, decode_slots, gpu_shortfall, limits_for
from tagcap.pipeline.decode_actors import DECODE, DecodePool
from tagcap.pipeline.failures import WRITER, describe_error, pools_to_recover
from tagcap.pipeline.shard_writers import WriterPool, cpu_nodes
from tagcap.pipeline.stage_actors import caption_actor_class, stage_actor_class
from tagcap.schemas.audioset import LabelMap, SegmentTable
from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.records import ShardStats
from tagcap.schemas.stages import StageSettings
from tagcap.schemas.tuning import Tuning
from tagcap.schemas.work import DecodeSpec, WorkUnit
from tagcap.workers.corpus_reader import read_corpus_unit
from tagcap.workers.exclusion import Exclusions
from tagcap.workers.prepare import prepare_unit
from tagcap.workers.storage import Storage
from tagcap.workers.writer import ProvenanceInfo


@ray.remote(num_returns=2)
def _prepare(
    unit: WorkUnit,
    spec: DecodeSpec,
    segments: SegmentTable,
    labels: LabelMap,
    storage: Storage,
    exclusions: Exclusions | None = None,
):
    return prepare_unit(unit, spec, segments, labels, storage, exclusions)


@ray.remote(num_returns=2)
def _read_corpus(unit: WorkUnit, storage: Storage):
    return read_corpus_unit(unit, storage)


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
    max_inflight: int | None  # None: see admission.inflight_limits
    max_attempts: int
    write_cpus: float = 0.0  # CPUs each shard writer reserves
    actor_threads: int = 1
    unit_timeout_s: float = 1800.0
    storage_options: dict[str, Any] = field(default_factory=dict)
    unit_bytes: int | None = None  # typical input bytes of a unit (sizes the default in-flight)
    captioner_id: str | None = None  # what the driver recorded in the manifest; actors must match it
    # The stages after the captioner, in chain order (rewrite, filter).
    stages: tuple[StageSettings, ...] = ()
    # The run's advanced settings, carried to every actor (a joined cluster's workers
    # obey the driver's values, whatever their own environment holds).
    tuning: Tuning = field(default_factory=Tuning)
    call_trace: str | None = None  # a folder: each actor writes where its calls' time went
    # A regeneration: each unit is a shard of an existing corpus, read without its audio,
    # and no captioner runs (the corpus holds the caption stage's results).
    from_corpus: bool = False
    # A joined cluster, which may add nodes (an autoscaler): actors asking for GPUs it does
    # not have yet, and a first node with CPUs, are waited for. False (the embedded Ray):
    # they are an error at once.
    cluster_grows: bool = False

    @property
    def maps_ahead(self) -> bool:
        """Whether each decoded unit's pages are mapped into its actor while it waits for
        its caption call (CaptionActor.map_input); by default where the actor has a GPU."""
        map_ahead = self.tuning.map_ahead
        return self.gpus_per_actor > 0 if map_ahead is None else map_ahead


def _inflight_limits(settings: ExecutionSettings, n_actors: int, actor_cpus: float, other_cpus: float = 0.0):
    """The run's admission limits on the cluster it runs on."""
    return limits_for(
        settings.max_inflight,
        ray.cluster_resources(),
        n_actors,
        actor_cpus,
        settings.decode_cpus,
        settings.unit_bytes,
        other_cpus,
        settings.tuning.store_fraction,
    )


@dataclass
class _Flight:
    """A unit in the air: its attempt, the actor of each stage it went to, when, and the Ray
    calls it still waits on: its decode task until that is done, its last model stage until
    that returns, then its write (sent to a writer only then, so that the pool's least busy
    writer near the unit's payload takes it). ``stage_calls``: every model stage's call, in
    chain order, to tell which one a unit that timed out is stuck in."""

    unit: WorkUnit
    attempt: int
    actors: dict[str, int]  # stage -> index in its pool
    submitted: float  # monotonic, for the unit's deadline
    submitted_at: float  # unix seconds, for its shard's stats
    batch: ray.ObjectRef | None  # its decode task's first result, until that is ready
    payload: ray.ObjectRef
    captions: ray.ObjectRef | None  # the last stage's result, until it returned
    stage_calls: list[tuple[str, ray.ObjectRef]] = field(default_factory=list)
    write: ray.ObjectRef | None = None  # once sent
    writer: int | None = None  # which of the pool's writers has it
    decoding_in: int | None = None  # the decode actor it is queued on or decoding in, until decoded

    def pending(self) -> list[ray.ObjectRef]:
        return [r for r in (self.batch, self.captions, self.write) if r is not None]

    def stuck_stage(self) -> str | None:
        """The first model stage whose call has not returned (none: all have)."""
        refs = [ref for _, ref in self.stage_calls]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        done = set(ready)
        return next((stage for stage, ref in self.stage_calls if ref not in done), None)


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


def _pools(settings: ExecutionSettings, n_units: int, writers_cpus: float) -> tuple[dict[str, ActorPool], float, float]:
    """The model stages' actor pools (caption first), the CPUs each captioner actor reserves
    and the CPUs the stages after the captioner reserve in all."""
    n_actors = max(1, min(settings.actors, n_units))
    wanted = {} if settings.from_corpus else {"caption": (n_actors, settings.cpus_per_actor)}
    for stage in settings.stages:
        wanted[stage.stage] = (max(1, min(stage.resources.actors, n_units)), stage.resources.cpus)
    _check_gpus(settings, {name: n for name, (n, _) in wanted.items()})
    total = float(ray.cluster_resources().get("CPU", 0.0))
    cpus = actor_cpus(total, settings.decode_cpus, writers_cpus, wanted)
    pools = {}
    if not settings.from_corpus:
        caption_cls = caption_actor_class(settings, cpus["caption"])
        pools["caption"] = ActorPool("caption", lambda: caption_cls.remote(settings), n_actors)
    for stage in settings.stages:
        cls = stage_actor_class(stage, cpus[stage.stage])

        def make(cls: Any = cls, stage: StageSettings = stage) -> Any:
            return cls.remote(stage, settings.tuning, settings.call_trace)

        pools[stage.stage] = ActorPool(stage.stage, make, wanted[stage.stage][0])
    others = sum(n * cpus[name] for name, (n, _) in wanted.items() if name != "caption")
    return pools, cpus.get("caption", 0.0), others


def _check_gpus(settings: ExecutionSettings, sizes: dict[str, int]) -> None:
    """A ValueError where the pools' actors (``sizes``: pool -> actors) ask for GPUs the
    cluster does not have (Ray would hold them pending with no word); on a cluster that
    may grow, a warning."""
    each = {"caption": settings.gpus_per_actor, **{s.stage: s.resources.gpus_per_actor for s in settings.stages}}
    wanted = {("captioner" if name == "caption" else name): (n, each[name]) for name, n in sizes.items()}
    if not any(gpus > 0 for _, gpus in wanted.values()):
        return
    nodes = [float(n.get("Resources", {}).get("GPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    short = gpu_shortfall(wanted, nodes)
    if short is None:
        return
    if not settings.cluster_grows:
        raise ValueError(
            f"{short}: lower --gpus-per-actor or --actors (a stage's: --rewrite-gpus-per-actor and the like), "
            "or join a cluster that has them (--ray-address)"
        )
    print(f"warning: {short}: waiting for the cluster to add them", file=sys.stderr, flush=True)


def _wait_for_cpus(settings: ExecutionSettings, poll_s: float = 1.0) -> None:
    """On a cluster that may grow, wait (said once) until a node with CPUs is up: a head
    started with none, its workers yet to join. Elsewhere there is nothing to wait for (the
    shard writers' pool says so)."""
    said = False
    while settings.cluster_grows and not cpu_nodes():
        if not said:
            print(
                "warning: the cluster has no node with CPUs yet: waiting for one to join", file=sys.stderr, flush=True
            )
            said = True
        time.sleep(poll_s)


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
    exclusions: Exclusions | None = None,
) -> ExecutionResult:
    result = ExecutionResult()
    if not units:
        return result
    tuning = settings.tuning
    _wait_for_cpus(settings)
    # Started in the order they are first needed: the captioner (the longest start), the
    # decode actors, then the writers (first needed once a unit is captioned).
    writers = WriterPool(
        layout,
        storage,
        provenance,
        settings.write_cpus,
        tuning.writeback_bytes,
        tuning.cpus_per_writer,
        tuning.writes_per_writer,
    )
    pools, caption_cpus, stage_cpus = _pools(settings, len(units), writers.reserved_cpus)
    captioners = pools.get("caption")
    n_captioners = len(captioners) if captioners else 1
    other_cpus = writers.reserved_cpus + stage_cpus
    limits: InflightLimits = _inflight_limits(settings, n_captioners, caption_cpus, other_cpus)
    segments_ref = ray.put(segments)
    labels_ref = ray.put(labels)
    exclusions_ref = ray.put(exclusions) if exclusions else None
    prepare = _prepare.options(num_cpus=settings.decode_cpus, max_retries=0)
    read_corpus = _read_corpus.options(num_cpus=settings.decode_cpus, max_retries=0)
    decoders: DecodePool | None = None
    if tuning.decode_actors:
        decoders = DecodePool(min(limits.slots, len(units)), settings.decode_cpus)
    writers.start()

    pending = deque((unit, 1) for unit in units)
    waiting: dict[ray.ObjectRef, _Flight] = {}  # every pending call of every unit in the air
    flights: list[_Flight] = []
    flowing = False  # a last-stage call has returned: the actors are up, the ahead limit applies

    def counts() -> tuple[int, int, int]:
        """Units in the air: (ahead, writing, not yet decoded)."""
        ahead = sum(f.captions is not None for f in flights)
        return ahead, len(flights) - ahead, sum(f.batch is not None for f in flights)

    def decoded(flight: _Flight) -> None:
        """Its decode actor (if it has one) has one unit fewer queued."""
        if decoders is not None and flight.decoding_in is not None:
            decoders.finished(flight.decoding_in)
            flight.decoding_in = None

    def finish(flight: _Flight) -> None:
        decoded(flight)
        flights.remove(flight)
        for ref in flight.pending():
            waiting.pop(ref, None)
        if flight.writer is not None:
            writers.finished(flight.writer)

    def pool_ids() -> dict[str, frozenset[str]]:
        ids = {**{name: pool.actor_ids() for name, pool in pools.items()}, WRITER: writers.actor_ids()}
        return {**ids, DECODE: decoders.actor_ids()} if decoders is not None else ids

    def settle(flight: _Flight, outcome: ShardStats | BaseException, stuck: str | None = None) -> None:
        """A unit's end: its stats, or a failed attempt (retried while attempts are left)."""
        finish(flight)
        if isinstance(outcome, ShardStats):
            result.stats[flight.unit.shard] = outcome
            if on_done:
                on_done(outcome)
            return
        ids = pool_ids()
        reason = describe_error(outcome, ids)
        for name in pools_to_recover(outcome, ids, flight.write is not None, stuck):
            if name == WRITER:
                if flight.writer is not None:
                    writers.recover(flight.writer)
            elif name == DECODE and decoders is not None and DECODE in flight.actors:
                decoders.recover(flight.actors[DECODE])
            elif name in flight.actors and name in pools:
                pools[name].recover(flight.actors[name])
        if flight.attempt < settings.max_attempts:
            result.retries += 1
            pending.appendleft((flight.unit, flight.attempt + 1))
        else:
            result.failed[flight.unit.shard] = f"failed after {flight.attempt} attempts: {reason}"
            if on_failed:
                on_failed(flight.unit.shard, result.failed[flight.unit.shard])

    def submit(unit: WorkUnit, attempt: int) -> None:
        # Taken before any call goes out: a task may start before .remote() returns, and its
        # shard's pending time runs from here.
        submitted, submitted_at = time.monotonic(), time.time()
        chosen = {name: pool.take() for name, pool in pools.items()}
        # The unit's decode: a call to the least queued decode actor, or a task.
        decoder = None
        if decoders is not None:
            chosen[DECODE] = decoders.take()
            decoder = decoders[chosen[DECODE]]
        refs: Any
        if captioners is None:  # a regeneration: the corpus gives the caption stage's results
            refs = (decoder.read_corpus if decoder is not None else read_corpus).remote(unit, storage)
            batch_ref, payload_ref = refs  # num_returns=2
            last, calls = batch_ref, []
        else:
            run_prepare = decoder.prepare if decoder is not None else prepare
            refs = run_prepare.remote(unit, decode, segments_ref, labels_ref, storage, exclusions_ref)
            batch_ref, payload_ref = refs  # num_returns=2
            captioner = captioners[chosen["caption"]]
            last = captioner.caption.remote(batch_ref)
            if settings.maps_ahead:
                # Fire and forget: a unit whose decode failed, or an actor that died, fails only this call.
                captioner.map_input.options(num_returns=0).remote(batch_ref)
            calls = [("caption", last)]
        for stage in settings.stages:
            actor = pools[stage.stage][chosen[stage.stage]]
            last = actor.run.remote(last, batch_ref) if stage.needs_audio else actor.run.remote(last)
            calls.append((stage.stage, last))
        flight = _Flight(
            unit,
            attempt,
            chosen,
            submitted,
            submitted_at,
            batch_ref,
            payload_ref,
            last,
            stage_calls=calls,
            decoding_in=chosen.get(DECODE),
        )
        flights.append(flight)
        waiting[last] = flight
        if last != batch_ref:
            waiting[batch_ref] = flight
        else:
            flight.batch = None  # read and to be written: nothing decodes

    def pools_up() -> bool:
        """Every actor of the model pools is up, and a decode actor is: a call to an actor
        that Ray is restarting fails at once, so new units wait here until it is back (or
        replaced), as the units in the air go on. (Sent to the model pools' other actors
        meanwhile, a unit that hung its actor hangs the next, with the units queued behind
        it.)"""
        return all(pool.up() == len(pool) for pool in pools.values()) and (decoders is None or decoders.up() > 0)

    fitted_at = time.monotonic()

    def fit_to_cluster() -> None:
        """On a joined cluster, the run follows its CPUs, asked every
        ``tuning.cluster_check_s`` and every second while an actor is coming back: a node
        that joined gets shard writers and decode actors for its CPUs; where a node was
        lost, the decode pool shrinks to what the nodes left hold beside the other actors
        (the actors that were on it wait for CPUs that decode actors hold there). The
        admission limits follow the decode pool."""
        nonlocal fitted_at, limits, other_cpus
        if not settings.cluster_grows:  # the embedded Ray: its one node never changes
            return
        since = time.monotonic() - fitted_at
        if since < min(1.0, tuning.cluster_check_s):
            return
        troubled = any(pool.coming_back() for pool in pools.values()) or bool(decoders and decoders.coming_back())
        if not troubled and since < tuning.cluster_check_s:
            return
        fitted_at = time.monotonic()
        nodes = cpu_nodes()
        if writers.add_joined_nodes(nodes):
            other_cpus = writers.reserved_cpus + stage_cpus
        cpus = sum(node_cpus for _, node_cpus in nodes)
        if decoders is None or settings.decode_cpus <= 0:
            return
        want = min(decode_slots(cpus, n_captioners, caption_cpus, settings.decode_cpus, other_cpus), len(units))
        live = len(decoders.live_indices())
        if want == live:
            return
        live = decoders.grow_to(want) if want > live else decoders.shrink_to(want)
        resized = _inflight_limits(settings, n_captioners, caption_cpus, other_cpus)
        limits = resized.once_flowing(counts()[0]) if flowing else resized
        limits = replace(limits, slots=live)

    try:
        while pending or flights:
            fit_to_cluster()
            while pending:
                ahead, writing, undecoded = counts()
                if not limits.admits(ahead, writing, flowing, undecoded) or not pools_up():
                    break
                submit(*pending.popleft())
            if not waiting:  # units wait for an actor to come back, nothing else is in the air
                time.sleep(0.05)
            for ref in _ready(list(waiting)):
                found = waiting.pop(ref, None)
                if found is None:  # its unit already ended (a failed call ends it early)
                    continue
                flight = found
                if ref == flight.batch:  # decoded (or failed): the next unit may go to its slot
                    flight.batch = None
                    decoded(flight)
                elif ref == flight.captions:  # through every stage (or failed): its write goes out
                    if not flowing:
                        limits = limits.once_flowing(counts()[0])
                        flowing = True
                    flight.captions = None
                    decoded(flight)  # a regeneration's read is its last call
                    # A failed decode or stage call fails the write with its error, so
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
                if flight.write is not None:
                    stuck = None
                elif decoders is not None and flight.decoding_in is not None:
                    stuck = DECODE  # still queued on its decode actor, or decoding
                else:
                    stuck = flight.stuck_stage() or "caption"
                for ref in flight.pending():
                    ray.cancel(ref, force=False, recursive=True)
                if flight.write is not None and flight.writer is not None:
                    # A writer stuck in a write cannot be cancelled: restart it (the writes
                    # it had fail over and are retried).
                    writers.kill(flight.writer)
                elif stuck == DECODE and decoders is not None:
                    decoders.restart(flight.actors[DECODE])
                elif stuck is not None:
                    # Nor can an actor stuck in a call: restart it (the units queued behind
                    # it fail over and are retried).
                    pools[stuck].restart(flight.actors[stuck])
                settle(flight, TimeoutError(f"unit did not finish within {settings.unit_timeout_s:g} s"), stuck)
    finally:
        for pool in pools.values():
            pool.close()
        if decoders is not None:
            decoders.close()
        writers.close()
    return result
