"""The run's shard writers: a fixed pool of Ray actors, started with the run, that write
every unit's shard (``workers.writer.write_shard``).

Why actors and not a Ray task per shard: write tasks reserve no CPU, so Ray ran every
ready write at once in a worker process of its own and ended those processes once idle; a
pool is started once and bounds the writes running at once (docs/design/writer-pool.md).

Each node with CPUs gets ``writers_per_node`` writers (one per ``Tuning.cpus_per_writer``),
bound to it (Ray 2.60 placed a writer with soft node affinity on another node now and then,
with both nodes up; one whose node is gone is replaced on another), each running up to
``Tuning.writes_per_writer`` writes at once on threads (a write mostly waits in system
calls, which release the GIL). A unit's write goes
to the least busy writer on a node that holds the unit's decoded payload, where there is
one: the audio bytes are most of a unit, and Ray placed write tasks by their arguments in
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tagcap.pipeline.actor_pools import end_actors
from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.records import ShardStats
from tagcap.schemas.work import CaptionedUnit, UnitPayload
from tagcap.workers.storage import Storage
from tagcap.workers.writer import DEFAULT_WRITEBACK_BYTES, ProvenanceInfo, write_shard

# The defaults of Tuning.writes_per_writer and Tuning.cpus_per_writer
# (docs/design/writer-pool.md).
WRITES_PER_WRITER = 4
CPUS_PER_WRITER = 4
# How long a writer that died gets to come back before it is replaced.
_RECOVERY_S = 60.0


class ShardWriter:
    """Writes shards for one run: the layout, storage and provenance are the run's, given
    once; each call brings a unit's payload and its captions."""

    def __init__(self, layout: OutputLayout, storage: Storage, provenance: ProvenanceInfo, writeback: int):
        self.layout = layout
        self.storage = storage
        self.provenance = provenance
        self.writeback = writeback  # tuning.writeback_mb, in bytes

    def node(self) -> str:
        """The Ray node this writer runs on (and an answer that it is up)."""
        return ray.get_runtime_context().get_node_id()

    def write_shard(self, payload: UnitPayload, captioned: CaptionedUnit, started: float) -> ShardStats:
        """``started``: when the driver submitted the unit (unix seconds), for its stats."""
        window = (captioned.started_at, captioned.finished_at)
        return write_shard(
            payload, captioned.results, self.layout, self.storage, self.provenance, started, window, self.writeback
        )


def writers_per_node(cpus: float, cpus_per_writer: int = CPUS_PER_WRITER) -> int:
    return max(1, round(cpus / cpus_per_writer))


def cpu_nodes() -> list[tuple[str, float]]:
    """(node id, CPUs) of every live node that has CPUs."""
    nodes = []
    for node in ray.nodes():
        cpus = float(node.get("Resources", {}).get("CPU", 0.0))
        if node.get("Alive") and cpus > 0:
            nodes.append((node["NodeID"], cpus))
    return nodes


@dataclass
class _Writer:
    handle: Any
    node: str
    busy: int = 0  # writes sent to it and not yet returned


class WriterPool:
    """The run's writers, and which of them each unit's write goes to. Made, it knows its
    writers' nodes and the CPUs they will hold; :meth:`start` starts them (a run starts its
    writers after its decoding and its captioner, which are needed first)."""

    def __init__(
        self,
        layout: OutputLayout,
        storage: Storage,
        provenance: ProvenanceInfo,
        cpus_each: float,
        writeback: int = DEFAULT_WRITEBACK_BYTES,
        cpus_per_writer: int = CPUS_PER_WRITER,
        writes_per_writer: int = WRITES_PER_WRITER,
    ):
        self._args = (layout, storage, provenance, writeback)
        self._cls = ray.remote(ShardWriter)
        self._cpus_each = cpus_each
        self._writes_each = writes_per_writer
        self._cpus_per_writer = cpus_per_writer
        self._nodes = [node for node, cpus in cpu_nodes() for _ in range(writers_per_node(cpus, cpus_per_writer))]
        if not self._nodes:
            raise RuntimeError("the Ray cluster has no node with CPUs for the shard writers")
        self.writers: list[_Writer] = []

    def start(self) -> WriterPool:
        """Starts the writers (once)."""
        if not self.writers:
            self.writers = [self._writer(node) for node in self._nodes]
        return self

    @property
    def reserved_cpus(self) -> float:
        """The CPUs the writers hold from Ray, all together."""
        return len(self._nodes) * self._cpus_each

    def add_joined_nodes(self, nodes: list[tuple[str, float]]) -> int:
        """Start writers on every node of ``nodes`` (:func:`cpu_nodes`) that has none (one
        that joined after the start), as many as :func:`writers_per_node` gives it; returns
        how many. A started pool only."""
        have = {w.node for w in self.writers}
        added = [
            node
            for node, cpus in nodes
            if node not in have
            for _ in range(writers_per_node(cpus, self._cpus_per_writer))
        ]
        self._nodes.extend(added)
        self.writers.extend(self._writer(node) for node in added)
        return len(added)

    def _writer(self, node: str) -> _Writer:
        return _Writer(self._start(node), node)

    def _start(self, node: str) -> Any:
        return self._cls.options(
            num_cpus=self._cpus_each,
            max_concurrency=self._writes_each,
            # A writer that dies fails the writes it had (each retried as its unit's next
            # attempt, bounded) and comes back.
            max_restarts=-1,
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        ).remote(*self._args)

    def submit(self, payload: ray.ObjectRef, captioned: ray.ObjectRef, started: float) -> tuple[ray.ObjectRef, int]:
        """Sends a unit's write: (its result, the writer's index for :meth:`finished`)."""
        held_on = _nodes_holding(payload)
        near = [i for i, w in enumerate(self.writers) if w.node in held_on]
        index = min(near or range(len(self.writers)), key=lambda i: self.writers[i].busy)
        writer = self.writers[index]
        writer.busy += 1
        return writer.handle.write_shard.remote(payload, captioned, started), index

    def actor_ids(self) -> frozenset[str]:
        """The writers' actor ids (hex), as a ``RayActorError`` names the actor that died."""
        return frozenset(w.handle._actor_id.hex() for w in self.writers)

    def finished(self, index: int) -> None:
        self.writers[index].busy -= 1

    def recover(self, index: int) -> None:
        """After a write failed with its actor: wait until Ray has restarted the writer, or
        replace it if it does not come back (on another node where its own is gone: Ray
        restarts a writer only on the node it is bound to)."""
        writer = self.writers[index]
        try:
            ray.get(writer.handle.node.remote(), timeout=_RECOVERY_S)
        except Exception:
            ray.kill(writer.handle)
            live = [node for node, _ in cpu_nodes()]
            if not live:
                raise RuntimeError("the Ray cluster has no node with CPUs left for the shard writers") from None
            node = writer.node if writer.node in live else min(live, key=self._writers_on)
            self.writers[index] = self._writer(node)

    def _writers_on(self, node: str) -> int:
        return sum(w.node == node for w in self.writers)

    def kill(self, index: int) -> None:
        """Restarts a writer stuck in a write (its other writes fail over and are retried)."""
        ray.kill(self.writers[index].handle, no_restart=False)

    def close(self, wait_s: float = 5.0) -> None:
        """Ends the writers (``actor_pools.end_actors``)."""
        end_actors([writer.handle for writer in self.writers], wait_s)


def _nodes_holding(ref: ray.ObjectRef) -> set[str]:
    """The nodes whose object store holds ``ref`` (none for a small object kept inline)."""
    try:
        where = ray.experimental.get_object_locations([ref], timeout_ms=1000)
    except Exception:  # placement is an optimisation: any writer can write any unit
        return set()
    return set(where.get(ref, {}).get("node_ids", []))
