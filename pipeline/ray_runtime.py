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

A cluster tagcap joins should be started with the same worker limit
(``RAY_num_workers_soft_limit``, see :func:`worker_soft_limit`; the deploy/ files set it).

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


def worker_soft_limit(cpus: int) -> int:
    """Idle worker processes Ray keeps alive. Its default (one per CPU) is below what a
    caption run holds at once: a decode task on every free CPU, the captioner actors and
    the shard writers. Above the limit Ray kills idle workers within a second and starts
    new ones for the next tasks, each paying the import of torch again: on two CPUs and
    small units that churn made a run of 100 units take 42 s instead of 7."""
    return cpus + 8


@contextmanager
def ray_session(
    address: str | None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    dashboard: bool = False,
    head_services: bool = False,
    timeline: str | None = None,
) -> Iterator[None]:
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
        cpus = num_cpus or os.cpu_count() or 1
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
                _system_config={"num_workers_soft_limit": worker_soft_limit(cpus)},
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
