"""The advanced settings of a caption run, in one typed place.

``Tuning`` is the ``tuning:`` mapping of a run's YAML configuration (and ``--tuning
KEY=VALUE`` on the command line). It travels with the run's settings to every process
that obeys it: the driver, each decode task, each captioner actor and each shard writer,
on whichever node they run, so a joined cluster's workers use the same values as the
driver. No setting is read from the environment. None of them changes an output byte, so
none is part of the run's identity. What each is for, and the measurement behind its
default, is in docs/tuning.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# How a GPU actor's threads wait for the GPU: CUDA's cudaDeviceSchedule* modes.
CUDA_SYNC_MODES = ("auto", "block", "spin", "yield")
# How a unit's PCM reaches the GPU: its own pages pinned in place, a pageable copy, or a
# copy through a pinned buffer filled by a few threads.
H2D_STAGING_MODES = ("register", "pageable", "pinned")


@dataclass(frozen=True)
class Tuning:
    """Settings that change how fast a run goes, never what it writes."""

    # Driver: the share of Ray's object store that units in the air may fill.
    store_fraction: float = 0.8
    # Driver: whether a decoded unit's pages are mapped into its captioner actor while it
    # waits for its call; None: where the actor has a GPU.
    map_ahead: bool | None = None
    # Driver: start Ray's API server and autoscaler monitor with the embedded Ray.
    ray_head_services: bool = False
    # Driver: the embedded Ray's limit on idle worker processes (its
    # num_workers_soft_limit); None: the node's CPUs + 8.
    idle_workers: int | None = None
    # Captioner actor: how its threads wait for the GPU.
    cuda_sync: str = "block"
    # Captioner actor: how a unit's PCM is copied to the GPU.
    h2d_staging: str = "register"
    # Driver: decode units on a pool of actors, one per decode slot (pipeline.decode_actors);
    # false: a Ray task per unit.
    decode_actors: bool = True
    # Decode task: keep memory a unit frees for the next unit (glibc's mallopt).
    retain_freed_memory: bool = True
    # Driver: a node gets one shard writer per this many CPUs (and at least one), each
    # running up to writes_per_writer writes at once on threads.
    cpus_per_writer: int = 4
    writes_per_writer: int = 4
    # Shard writer: hand each this many MB of a tar to the disk as it is written (0: all
    # of it at the fsync that publishes the tar).
    writeback_mb: float = 64.0
    # Driver: how often (seconds) the run is fitted to the cluster's CPUs, nodes joining
    # (writers, decode actors) or lost (decode actors; every second while an actor is
    # coming back).
    cluster_check_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 < self.store_fraction <= 1.0:
            raise ValueError(f"tuning.store_fraction must be in (0, 1], got {self.store_fraction!r}")
        if self.cuda_sync not in CUDA_SYNC_MODES:
            raise ValueError(f"tuning.cuda_sync must be one of {list(CUDA_SYNC_MODES)}, got {self.cuda_sync!r}")
        if self.h2d_staging not in H2D_STAGING_MODES:
            raise ValueError(f"tuning.h2d_staging must be one of {list(H2D_STAGING_MODES)}, got {self.h2d_staging!r}")
        if self.cpus_per_writer < 1 or self.writes_per_writer < 1:
            raise ValueError("tuning: cpus_per_writer and writes_per_writer must be >= 1")
        if self.idle_workers is not None and self.idle_workers < 0:
            raise ValueError(f"tuning.idle_workers must be >= 0 or none, got {self.idle_workers!r}")
        if self.writeback_mb < 0:
            raise ValueError(f"tuning.writeback_mb must be >= 0, got {self.writeback_mb!r}")
        if self.cluster_check_s <= 0:
            raise ValueError(f"tuning.cluster_check_s must be > 0, got {self.cluster_check_s!r}")

    @property
    def writeback_bytes(self) -> int:
        return int(self.writeback_mb * 2**20)

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None) -> Tuning:
        """A ``Tuning`` from the YAML's ``tuning:`` mapping (keys with dashes or
        underscores; values as YAML typed them, or as the strings ``--tuning`` gives)."""
        if values is None:
            return cls()
        if not isinstance(values, dict):
            raise ValueError(f"tuning: expected a mapping of settings, got {type(values).__name__}")
        types = {f.name: f.type for f in fields(cls)}
        out: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in types:
                raise ValueError(f"unknown tuning setting {raw_key!r} (known: {', '.join(sorted(types))})")
            out[key] = _coerce(key, str(types[key]), value)
        return cls(**out)

    def updated(self, assignments: list[str]) -> Tuning:
        """This tuning with ``KEY=VALUE`` assignments (``--tuning``) applied on top."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--tuning {item!r}: expected KEY=VALUE")
            values[key.strip().replace("-", "_")] = value.strip()
        return Tuning.from_mapping(values)


def _coerce(key: str, annotation: str, value: Any) -> Any:
    """A setting's value as its field's type; strings (from ``--tuning``) parsed."""
    if value is None or (isinstance(value, str) and value.lower() in ("", "none", "auto") and "None" in annotation):
        if "None" in annotation:
            return None
        raise ValueError(f"tuning.{key} cannot be empty")
    try:
        if annotation.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        return str(value).strip().lower()
    except ValueError:
        raise ValueError(f"tuning.{key}: {value!r} is not a {annotation.split(' ')[0]}") from None
