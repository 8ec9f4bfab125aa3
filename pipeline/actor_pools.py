"""A pool of identical Ray actors for one model stage of a run (the captioner, a rewriter,
a filter): made at the start, handed units round robin, waited for after one dies (Ray
restarts it) or replaced where it cannot come back, killed at the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

# How long an actor that died gets to come back before it is replaced.
RECOVERY_S = 120.0


class ActorPool:
    def __init__(self, name: str, make: Callable[[], Any], size: int):
        self.name = name
        self._make = make
        self.actors = [make() for _ in range(size)]
        self._next = 0

    def __len__(self) -> int:
        return len(self.actors)

    def take(self) -> int:
        """The next actor's index, round robin."""
        index = self._next % len(self.actors)
        self._next += 1
        return index

    def __getitem__(self, index: int) -> Any:
        return self.actors[index]

    def actor_ids(self) -> frozenset[str]:
        """The actors' ids (hex), as a ``RayActorError`` names the actor that died."""
        return frozenset(actor._actor_id.hex() for actor in self.actors)

    def recover(self, index: int) -> None:
        """Wait until Ray has restarted actor ``index`` (so retried units do not fail again
        on the dead process), or replace it if it cannot come back."""
        try:
            ray.get(self.actors[index].info.remote(), timeout=RECOVERY_S)
        except Exception:
            ray.kill(self.actors[index])
            self.actors[index] = self._make()

    def restart(self, index: int) -> None:
        """Kill actor ``index`` for Ray to restart (one stuck in a call cannot be cancelled;
        the calls queued behind it fail over and are retried)."""
        ray.kill(self.actors[index], no_restart=False)

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)


def end_actors(handles: list[Any], wait_s: float = 5.0) -> None:
    """End actors as an actor ends itself, once the calls queued on it are done (a killed
    one loses what it had yet to report, its calls' events in Ray's timeline among them);
    any still there after ``wait_s`` is killed."""
    if not handles:
        return
    exits = [handle.__ray_terminate__.remote() for handle in handles]
    _, left = ray.wait(exits, num_returns=len(exits), timeout=wait_s)
    for handle, ref in zip(handles, exits, strict=True):
        if ref in left:
            ray.kill(handle)
