"""Admission: which work units may go into the air, and what CPUs each pool of actors
reserves. Plain arithmetic on the cluster's resources, without Ray (tested without it).

A unit is *ahead* (submitted, its last model stage not yet returned) or *writing* (only its
write left). :class:`InflightLimits` says whether one more may go; :func:`inflight_limits`
sizes them to the CPUs and the object store; :func:`actor_cpus` shares the CPUs that decode
tasks and writers leave among the stages' actors. Why each rule: docs/design/inflight-policy.md
and docs/design/store-fraction.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tagcap.schemas.tuning import Tuning


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

    ``slots``: the decode tasks that can run at once, which the limits were sized for (a
    run's pool of decode actors has that many). Of the units ahead, at most ``decoding``
    (two per slot) may not be decoded yet. Decoded units still wait in the store up to the
    budget. Why each rule: docs/design/inflight-policy.md."""

    ahead: int
    budget: float
    ahead_cost: float = 1.0
    writing_cost: float = 1.0
    slots: int = 1

    @property
    def decoding(self) -> int:
        """Units ahead that may not be decoded yet: one running and one queued per slot."""
        return UNDECODED_PER_SLOT * self.slots

    def admits(self, ahead: int, writing: int, flowing: bool, decoding: int = 0) -> bool:
        """Whether one more unit may go: ``ahead`` and ``writing`` are in the air now,
        ``decoding`` of those ahead not decoded yet; ``flowing``: a caption call has returned."""
        if flowing and ahead >= self.ahead:
            return False
        if decoding >= self.decoding:
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
    slots = decode_slots(cpus, n_actors, actor_cpus, decode_cpus, writers_cpus)
    ahead = 2 * (slots + n_actors)
    floor = n_actors + 1
    if not unit_bytes or store_bytes <= 0:
        return InflightLimits(max(floor, ahead), float(max(floor, ahead)), slots=slots)
    budget = store_fraction * store_bytes / unit_bytes  # in units of one unit's input bytes
    ahead = max(floor, min(ahead, int(budget / 3)))
    return InflightLimits(
        ahead,
        max(budget, 3.0 * ahead),
        ahead_cost=3.0,
        writing_cost=1.0,
        slots=slots,
    )


def decode_slots(cpus: float, n_actors: int, actor_cpus: float, decode_cpus: float, writers_cpus: float) -> int:
    """Decode tasks that can run at once: the CPUs the captioner actors and the shard
    writers (``writers_cpus`` in all) leave."""
    return max(1, int(max(cpus - n_actors * actor_cpus - writers_cpus, 1.0) / decode_cpus))


def limits_for(
    max_inflight: int | None,
    resources: dict[str, float],
    n_actors: int,
    actor_cpus: float,
    decode_cpus: float,
    unit_bytes: int | None,
    other_cpus: float,
    store_fraction: float,
) -> InflightLimits:
    """The run's limits from the cluster's ``resources`` (``CPU``, ``object_store_memory``):
    ``max_inflight`` units in the air, writing or not, where it is given (decoding at two per
    slot), else :func:`inflight_limits`. ``other_cpus``: what the writers and the stages
    after the captioner reserve."""
    cpus = float(resources.get("CPU", 1.0))
    if max_inflight:
        slots = decode_slots(cpus, n_actors, actor_cpus, decode_cpus, other_cpus)
        return InflightLimits(max_inflight, float(max_inflight), slots=slots)
    return inflight_limits(
        cpus,
        float(resources.get("object_store_memory", 0.0)),
        n_actors,
        actor_cpus,
        decode_cpus,
        unit_bytes,
        other_cpus,
        store_fraction,
    )


def actor_cpus(
    total: float, decode_cpus: float, writers_cpus: float, wanted: dict[str, tuple[int, float]]
) -> dict[str, float]:
    """CPUs to reserve per actor of each pool (``wanted``: pool -> (actors, CPUs each)),
    scaled down alike where they would not leave one decode task and the writers room: with
    every CPU held by actors, the chain waits for input that cannot be decoded. A ValueError
    where nothing is left for the actors at all."""
    spare = total - decode_cpus - writers_cpus
    asked = sum(n * cpus for n, cpus in wanted.values())
    if asked <= spare:
        return {name: cpus for name, (_, cpus) in wanted.items()}
    if spare <= 0:
        actors = sum(n for n, cpus in wanted.values() if cpus > 0)
        raise ValueError(
            f"the cluster has {total:g} CPUs: too few for decode tasks ({decode_cpus:g} CPU) beside {actors} actors"
        )
    scale = spare / asked
    return {name: round(cpus * scale, 4) for name, (_, cpus) in wanted.items()}


def gpu_shortfall(wanted: dict[str, tuple[int, float]], node_gpus: list[float]) -> str | None:
    """Why the pools' actors (``wanted``: pool -> (actors, GPUs each)) cannot all be placed
    on nodes with ``node_gpus`` GPUs each, or None where they may be. Only what no placement
    gets round: an actor that asks more GPUs than any one node has, and the pools together
    asking more than the whole cluster has. Ray holds such an actor pending until a node
    that fits joins, which on a cluster that cannot grow (the embedded Ray) is forever."""
    most, total = max(node_gpus, default=0.0), sum(node_gpus)
    cluster = f"{len(node_gpus)} node(s), {total:g} GPU(s) in all"
    for name, (_, gpus) in wanted.items():
        if gpus > most:
            return f"the {name} actors ask for {gpus:g} GPU each, but no node has that many ({cluster})"
    asked = sum(n * gpus for n, gpus in wanted.values())
    if asked > total + 1e-9:
        parts = ", ".join(f"{n} {name} x {gpus:g}" for name, (n, gpus) in wanted.items() if gpus > 0)
        return f"the actors ask for {asked:g} GPUs ({parts}), but the cluster has fewer ({cluster})"
    return None
