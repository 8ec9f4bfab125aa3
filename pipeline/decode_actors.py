"""The decode stage as a pool of long-lived actors, one per decode slot (``tuning.decode_actors``).

Each :class:`DecodeActor` runs the same code a decode task runs (``workers.prepare`` for a
caption run, ``workers.corpus_reader`` for a regeneration), one unit at a time, in a worker
process it keeps for the run. A unit goes to the actor with the fewest units queued, so a
slow unit holds back only the one queued behind it.

Why actors and not a task per unit: for tasks, Ray starts a worker process per queued task
while it hands out the idle ones (on a 16-CPU node a run held 17 worker processes that never
ran anything), and the first tasks wait for those starts; an actor takes one of the workers
Ray starts when the driver connects, and keeps it. The figures: docs/design/decode-actors.md.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from tagcap.pipeline.actor_pools import ActorPool, end_actors
from tagcap.workers.corpus_reader import read_corpus_unit
from tagcap.workers.prepare import prepare_unit

DECODE = "decode"


class DecodeActor:
    """Decodes units for its lifetime: what a decode task does, in one process."""

    def info(self) -> int:
        """This actor's process id (an actor that answers has come back)."""
        return os.getpid()

    @ray.method(num_returns=2)
    def prepare(self, *args: Any) -> Any:
        """``workers.prepare.prepare_unit`` on its arguments."""
        return prepare_unit(*args)

    @ray.method(num_returns=2)
    def read_corpus(self, *args: Any) -> Any:
        """``workers.corpus_reader.read_corpus_unit`` on its arguments."""
        return read_corpus_unit(*args)


class DecodePool(ActorPool):
    """Decode actors, each unit to the one that is up with the fewest units handed to it
    and not yet decoded (:meth:`take` counts one on, :meth:`finished` one off). One that
    died is left out while it comes back, and replaced where it does not
    (:meth:`ActorPool.recover`). The pool follows the cluster's CPUs: :meth:`grow_to` where
    nodes join, :meth:`shrink_to` where they are lost."""

    def __init__(self, size: int, decode_cpus: float):
        cls = ray.remote(DecodeActor).options(
            num_cpus=decode_cpus,
            # Restarts are unbounded but each unit's attempts are not: an input that kills
            # its decoder ends as one failed shard.
            max_restarts=-1,
            max_task_retries=0,
        )
        super().__init__(DECODE, cls.remote, size)
        self._queued = [0] * size

    def take(self) -> int:
        index = min(self.up_indices(), key=self._queued.__getitem__)
        self._queued[index] += 1
        return index

    def finished(self, index: int) -> None:
        """A unit that actor ``index`` was handed is decoded, failed or given up."""
        self._queued[index] = max(0, self._queued[index] - 1)

    def grow_to(self, size: int) -> int:
        """Add actors until ``size`` are live (a node joined: its CPUs decode too); they
        take units at once (calls to an actor not yet started wait for it). Returns how
        many are live."""
        while len(self.live_indices()) < size:
            self.actors.append(self._make())
            self._queued.append(0)
        return len(self.live_indices())

    def shrink_to(self, size: int) -> int:
        """Retire actors until at most ``size`` (at least one) are left, where that can be
        done without failing a unit: first those coming back (an actor lost with its node
        waits for a CPU that the rest of the run needs), then idle ones, the last first. A
        busy actor is left for a later call. Returns how many are left."""
        live, lost = self.live_indices(), self.coming_back()
        idle = [i for i in reversed(live) if self._queued[i] == 0 and i not in lost]
        for index in [*lost, *idle]:
            if len(live) <= max(1, size):
                break
            self.retire(index)
            live.remove(index)
        return len(live)

    def close(self) -> None:
        """Ends the actors once their queued units are done (``actor_pools.end_actors``),
        so that their calls stay in Ray's timeline."""
        end_actors([self.actors[i] for i in self.live_indices()])
