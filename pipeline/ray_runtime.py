"""Starting and joining Ray.

Without an address tagcap starts an embedded local Ray that listens on loopback only, with
no dashboard unless asked (``--dashboard``, then on 127.0.0.1 too). With ``--ray-address`` it
joins an existing cluster (tagcap must be installed on its nodes, as the deploy/ images do).
Wherever a dashboard runs, its address is printed on stderr, so a long job can be watched.

The embedded Ray starts without the two head processes that a single fixed-size node has no
use for unless its dashboard is asked for (``pipeline.ray_private``): the API server (which
Ray 2.60 starts, and waits on, even with ``include_dashboard=False``) and the autoscaler
monitor (which takes Ray's full one-second grace period to stop). ``tuning.ray_head_services``
starts them as Ray does. Its token authentication stays on: where ``RAY_AUTH_MODE`` is not
set, the embedded Ray is started with it set to ``token`` (Ray's default for a new local
cluster), which also keeps Ray from printing its notice about that default on every run.

The embedded Ray keeps up to :func:`idle_worker_limit` idle worker processes (Ray's
``num_workers_soft_limit``; ``tuning.idle_workers`` overrides it). A cluster tagcap joins
keeps whatever its nodes were started with (``RAY_num_workers_soft_limit``); the deploy/
files set the same limit.

``timeline`` (``--ray-timeline PATH``) writes Ray's task timeline (Chrome trace JSON: every task and
actor call with its worker, start and end) to PATH when the session ends: what the
benchmarks use to see which stage a run waits on. The captioner actors are killed at the end
of a run, so their last calls (on a short run, all of them) may be missing from it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from tagcap.pipeline import ray_private


def idle_worker_limit(cpus: int) -> int:
    """Idle worker processes a node's Ray keeps: its CPUs + 8. Ray's own limit, one per
    CPU, is below what a caption run holds at once (a decode task on every CPU, the
    captioner actors, the shard writers), and above it Ray kills idle workers within a
    second and starts new ones, each importing tagcap and torch again."""
    return cpus + 8


@contextmanager
def ray_session(
    address: str | None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    dashboard: bool = False,
    head_services: bool = False,
    timeline: str | None = None,
    idle_workers: int | None = None,
) -> Iterator[None]:
    """Ray for the body of the ``with``: the cluster at ``address``, or a new embedded Ray
    of ``num_cpus`` (default: the machine's). ``idle_workers`` is the embedded Ray's limit
    on idle worker processes (None: :func:`idle_worker_limit` of its CPUs); a joined
    cluster keeps its nodes' setting.
    Where Ray is already initialized it is used as it is and left up."""
    if ray.is_initialized():
        # Already connected (a test fixture, or a user's own session): use it, leave it up.
        yield
        return
    if address:
        context = ray.init(address=address, log_to_driver=False)
    else:
        # Only here, for the embedded Ray: a driver joining a real cluster must be
        # reachable from it.
        ray_private.loopback_only()
        # Token authentication on, said explicitly: Ray's default for a new local cluster,
        # without its notice about that default on every run.
        ray_private.token_auth_on()
        limit = idle_worker_limit(num_cpus or os.cpu_count() or 1) if idle_workers is None else idle_workers
        lean = contextlib.nullcontext() if dashboard or head_services else ray_private.without_idle_head_services()
        with lean:
            context = ray.init(
                address="local",  # a new embedded instance even where a `ray start` cluster runs
                num_cpus=num_cpus,
                object_store_memory=object_store_memory,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
                _system_config={"num_workers_soft_limit": limit},
            )
    if context.dashboard_url:
        print(f"Ray dashboard: http://{context.dashboard_url}", file=sys.stderr)
    try:
        yield
    finally:
        if timeline:
            started = time.perf_counter()
            ray.timeline(filename=timeline)
            # Said, so that a benchmark can tell its own instrumentation from the run.
            print(f"tagcap: Ray timeline written in {time.perf_counter() - started:.2f} s", file=sys.stderr)
        ray.shutdown()
