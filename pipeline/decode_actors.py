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
    """Decode actors, each unit to the one with the fewest units handed to it and not yet
    decoded (:meth:`take` counts one on, :meth:`finished` one off).

    An actor that died is left out until it answers again (:meth:`recover` does not wait):
    Ray restarts it where a node has a CPU for it, and one that cannot come back (its node
    lost, no CPU left elsewhere) is simply not handed units, where a task would have run
    on the nodes that are left."""

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
        self._coming_back: dict[int, ray.ObjectRef] = {}  # index -> its info() call since it died

    def take(self) -> int:
        self._welcome_back()
        up = [i for i in range(len(self.actors)) if i not in self._coming_back] or list(range(len(self.actors)))
        index = min(up, key=self._queued.__getitem__)
        self._queued[index] += 1
        return index

    def finished(self, index: int) -> None:
        """A unit that actor ``index`` was handed is decoded, failed or given up."""
        self._queued[index] = max(0, self._queued[index] - 1)

    def recover(self, index: int) -> None:
        """Leave actor ``index`` out until it answers (Ray restarts it)."""
        if index not in self._coming_back:
            self._coming_back[index] = self.actors[index].info.remote()

    def up(self) -> int:
        """How many actors are handed units."""
        self._welcome_back()
        return len(self.actors) - len(self._coming_back)

    def _welcome_back(self) -> None:
        if not self._coming_back:
            return
        answered, _ = ray.wait(list(self._coming_back.values()), num_returns=len(self._coming_back), timeout=0)
        for index, ref in list(self._coming_back.items()):
            if ref not in answered:
                continue
            try:
                ray.get(ref)
                del self._coming_back[index]
            except Exception:  # it died again meanwhile: ask again
                self._coming_back[index] = self.actors[index].info.remote()

    def close(self) -> None:
        """Ends the actors once their queued units are done (``actor_pools.end_actors``),
        so that their calls stay in Ray's timeline."""
        end_actors(self.actors)
