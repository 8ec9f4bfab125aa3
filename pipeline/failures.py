"""Failure handling: what a failed attempt of a unit says, and which actors it must wait for
before the unit is retried. Pure functions of the exception Ray raised (tested without a
running Ray).

A unit's chain calls actors of several pools: the captioner (``caption``), the stages after
it (``rewrite``, ``filter``) and the shard writers (``writer``). An actor that died is named
by its id in Ray's error; the driver then waits for that actor alone (Ray restarts it), so a
retry does not queue behind a healthy pool's calls.
"""

from __future__ import annotations

from collections.abc import Mapping

from ray.exceptions import ActorUnavailableError, ActorUnschedulableError, RayActorError, RayTaskError

WRITER = "writer"
_ACTOR_TROUBLE = (RayActorError, ActorUnavailableError, ActorUnschedulableError, TimeoutError)
_DIED = {"caption": "captioner actor died", WRITER: "shard writer died", "decode": "decode actor died"}


def _pool_of(actor_id: str | None, pools: Mapping[str, frozenset[str]]) -> str | None:
    return next((name for name, ids in pools.items() if actor_id in ids), None)


def describe_error(exc: BaseException, pools: Mapping[str, frozenset[str]] | None = None) -> str:
    """A failed attempt's reason, one line. ``pools``: each pool's actor ids (hex), to say
    which kind of actor died."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    if isinstance(exc, RayActorError):
        actor_id = getattr(exc, "actor_id", None)
        pool = _pool_of(actor_id, pools or {}) if actor_id is not None else None
        return _DIED.get(pool or "caption", f"{pool} actor died")
    return f"{type(exc).__name__}: {exc}"


def pools_to_recover(
    exc: BaseException, pools: Mapping[str, frozenset[str]], writing: bool, stuck: str | None = None
) -> set[str]:
    """Which pools' actors of this unit a failed attempt must wait for: the one its error
    names; every pool where the error names none; none for a task's own error. Only a
    writer is bound to a node, so an actor that cannot be scheduled is a writer. A unit that
    timed out: its writer where its write had gone out, else the model stage it was stuck in
    (``stuck``; the captioner where unknown)."""
    trouble = exc.cause if isinstance(exc, RayTaskError) and isinstance(exc.cause, _ACTOR_TROUBLE) else exc
    if not isinstance(trouble, _ACTOR_TROUBLE):
        return set()
    if isinstance(trouble, ActorUnschedulableError):
        return {WRITER}
    if isinstance(trouble, TimeoutError):
        return {WRITER} if writing else {stuck or "caption"}
    actor_id = getattr(trouble, "actor_id", None)
    pool = _pool_of(actor_id, pools) if actor_id is not None else None
    return {pool} if pool is not None else set(pools)
