"""Starting and joining Ray.

Without an address tagcap starts an embedded local Ray that listens on loopback only, with
no dashboard unless asked (``--dashboard``, then on 127.0.0.1 too). With ``--ray-address`` it
joins an existing cluster (tagcap must be installed on its nodes, as the deploy/ images do).
Wherever a dashboard runs, its address is printed on stderr, so a long job can be watched.

The embedded Ray starts without the two head processes that a single fixed-size node has no
use for unless its dashboard is asked for (:func:`_without_idle_head_services`): the API
server (which Ray 2.60 starts, and waits on, even with ``include_dashboard=False``) and the
autoscaler monitor (which takes Ray's full one-second grace period to stop).
``TAGCAP_RAY_HEAD_SERVICES=1`` starts them as Ray does.

A cluster tagcap joins should be started with the same worker limit
(``RAY_num_workers_soft_limit``, see :func:`worker_soft_limit`; the deploy/ files set it).

``TAGCAP_RAY_TIMELINE=PATH`` writes Ray's task timeline (Chrome trace JSON: every task and
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
from ray._private import ray_constants


def worker_soft_limit(cpus: int) -> int:
    """Idle worker processes Ray keeps alive. Its default (one per CPU) is below what a
    caption run holds at once: a decode task on every free CPU, the captioner actors and
    the shard writers. Above the limit Ray kills idle workers within a second and starts
    new ones for the next tasks, each paying the import of torch again: on two CPUs and
    small units that churn made a run of 100 units take 42 s instead of 7."""
    return cpus + 8


# Ray's head-node start-up steps that the embedded Ray skips (methods of its Node class).
_IDLE_HEAD_SERVICES = ("start_api_server", "start_monitor")


@contextmanager
def _without_idle_head_services() -> Iterator[None]:
    """While Ray starts an embedded node: no API server and no autoscaler monitor.

    The API server is a Python process serving the dashboard, the job and state APIs and,
    without the dashboard, only usage statistics; ``ray.init`` waits until it has
    registered. The monitor scales a cluster that here has one fixed node, and at shutdown
    ignores SIGTERM until Ray's one-second grace period kills it. Without them the session
    opened in 2.15 s instead of 3.88 s and closed in 0.37 s instead of 1.41 s on the 2-core
    machine (medians of 5, ``benchmarks/ray_start_bench.py``), and a 61,440-clip run's Ray
    start and stop took a second less each on the GPU host (benchmarks/RESULTS.md).

    They are skipped by replacing those two steps of Ray's private ``Node`` class for the
    duration of ``ray.init`` (Ray has no option for it). Where a Ray release lacks either
    method, nothing is replaced and Ray starts as it always does."""
    from ray._private import node as ray_node

    saved = {name: getattr(ray_node.Node, name, None) for name in _IDLE_HEAD_SERVICES}
    if any(method is None for method in saved.values()):
        yield
        return
    for name in saved:
        setattr(ray_node.Node, name, _skipped_service)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(ray_node.Node, name, method)


def _skipped_service(self: object, *args: object, **kwargs: object) -> None:
    return None


def _head_services_wanted(dashboard: bool) -> bool:
    return dashboard or os.environ.get("TAGCAP_RAY_HEAD_SERVICES", "") == "1"


@contextmanager
def ray_session(
    address: str | None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    dashboard: bool = False,
) -> Iterator[None]:
    if ray.is_initialized():
        # Already connected (a test fixture, or a user's own session): use it, leave it up.
        yield
        return
    if address:
        context = ray.init(address=address, log_to_driver=False)
    else:
        # Ray listened on every interface on Linux unless this is off, even with the node
        # address pinned to loopback (measured with Ray 2.60). Ray reads it into a
        # constant when first imported, which has happened by now: set both, the variable
        # for the processes ray.init starts and the constant for this one. Only here, for
        # the embedded Ray: a driver joining a real cluster must be reachable from it.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        cpus = num_cpus or os.cpu_count() or 1
        lean = contextlib.nullcontext() if _head_services_wanted(dashboard) else _without_idle_head_services()
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
        timeline = os.environ.get("TAGCAP_RAY_TIMELINE")
        if timeline:
            started = time.perf_counter()
            ray.timeline(filename=timeline)
            # Said, so that a benchmark can tell its own instrumentation from the run.
            print(f"tagcap: Ray timeline written in {time.perf_counter() - started:.2f} s", file=sys.stderr)
        ray.shutdown()
