"""A pool of identical Ray actors for one model stage of a run (the captioner, a rewriter,
a filter): made at the start, handed units round robin, left out while one that died comes
back (Ray restarts it) and replaced where it does not come back in time, killed at the end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray

# How long an actor that died gets to come back before it is replaced.
RECOVERY_S = 120.0


class ActorPool:
    """Actors made by ``make``, each with an ``info()`` method (an actor that answers it is
    up). Nothing here waits: the driver's loop keeps serving the other units while an actor
    comes back."""

    def __init__(self, name: str, make: Callable[[], Any], size: int):
        self.name = name
        self._make = make
        self.actors = [make() for _ in range(size)]
        self._next = 0
        # index -> (its info() call since it died, when it began coming back)
        self._coming_back: dict[int, tuple[ray.ObjectRef, float]] = {}
        self._retired: set[int] = set()  # ended for good (:meth:`retire`); indices stay put

    def __len__(self) -> int:
        return len(self.actors)

    def take(self) -> int:
        """The next actor's index, round robin over the actors that are up."""
        up = self.up_indices()
        index = up[self._next % len(up)]
        self._next += 1
        return index

    def __getitem__(self, index: int) -> Any:
        return self.actors[index]

    def actor_ids(self) -> frozenset[str]:
        """The actors' ids (hex), as a ``RayActorError`` names the actor that died."""
        return frozenset(actor._actor_id.hex() for actor in self.actors)

    def recover(self, index: int) -> None:
        """Leave actor ``index`` out until it answers again (Ray restarts it; a call to an
        actor that is restarting fails at once); one that has not answered within
        ``RECOVERY_S`` (its node lost and no room elsewhere) is replaced by a new actor,
        up at once (calls to an actor not yet started wait for it). Does not wait."""
        if index not in self._coming_back and index not in self._retired:
            self._coming_back[index] = (self.actors[index].info.remote(), time.monotonic())

    def retire(self, index: int) -> None:
        """End actor ``index`` for good (Ray frees what it reserved); it is never handed a
        unit again and the other actors keep their indices."""
        ray.kill(self.actors[index], no_restart=True)
        self._retired.add(index)
        self._coming_back.pop(index, None)

    def live_indices(self) -> list[int]:
        """The indices of the actors not retired, up or coming back."""
        return [i for i in range(len(self.actors)) if i not in self._retired]

    def up_indices(self) -> list[int]:
        """The indices of the actors that are up, or of every live one where none is (a
        caller that must not fail a unit checks :meth:`up` first)."""
        self._welcome_back()
        live = self.live_indices()
        return [i for i in live if i not in self._coming_back] or live

    def up(self) -> int:
        """How many actors are handed units as up."""
        self._welcome_back()
        return len(self.actors) - len(self._coming_back) - len(self._retired)

    def coming_back(self) -> list[int]:
        """The indices of the actors that died and have not answered since."""
        self._welcome_back()
        return list(self._coming_back)

    def _welcome_back(self) -> None:
        if not self._coming_back:
            return
        refs = [ref for ref, _ in self._coming_back.values()]
        answered, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        now = time.monotonic()
        for index, (ref, since) in list(self._coming_back.items()):
            if ref in answered:
                try:
                    ray.get(ref)
                    del self._coming_back[index]
                    continue
                except Exception:  # it died again meanwhile: ask again
                    ref = self.actors[index].info.remote()
            if now - since > RECOVERY_S:  # replaced: a new actor's calls wait for its start
                ray.kill(self.actors[index])
                self.actors[index] = self._make()
                del self._coming_back[index]
                continue
            self._coming_back[index] = (ref, since)

    def restart(self, index: int) -> None:
        """Kill actor ``index`` for Ray to restart (one stuck in a call cannot be cancelled;
        the calls queued behind it fail over and are retried)."""
        ray.kill(self.actors[index], no_restart=False)

    def close(self) -> None:
        for index in self.live_indices():
            ray.kill(self.actors[index])


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
