"""Every use tagcap makes of Ray's private modules, in one place.

Ray offers no option for either thing done here, so each reaches into ``ray._private``:

* :func:`loopback_only`: the embedded Ray listens on every interface on Linux unless Ray's
  ``ENABLE_RAY_CLUSTER`` constant is off, even with the node address pinned to loopback.
* :func:`token_auth_on`: the embedded Ray keeps Ray's token authentication, said
  explicitly, so Ray does not print its notice about that default on every run; Ray caches
  its configuration when imported, so the setting is also made in that cache.
* :func:`without_idle_head_services`: the embedded Ray starts without its API server and
  autoscaler monitor, by replacing two steps of Ray's ``Node`` class while ``ray.init``
  runs (why: docs/design/lean-embedded-ray.md).

:func:`missing` lists what of this the installed Ray lacks; ``tests/test_ray_private.py``
fails on any of it, so an upgrade of Ray that moves them is seen at once. At run time a
missing step is skipped (Ray then starts as it always does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

# Ray's head-node start-up steps that the embedded Ray skips (methods of its Node class).
IDLE_HEAD_SERVICES = ("start_api_server", "start_monitor")


def missing() -> list[str]:
    """What tagcap uses of Ray's private modules that the installed Ray does not have."""
    from ray._private import node as ray_node
    from ray._private import ray_constants

    gaps = [f"ray._private.node.Node.{name}" for name in IDLE_HEAD_SERVICES if not hasattr(ray_node.Node, name)]
    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        gaps.append("ray._private.ray_constants.ENABLE_RAY_CLUSTER")
    from ray import _raylet

    if not hasattr(getattr(_raylet, "Config", None), "initialize"):
        gaps.append("ray._raylet.Config.initialize")
    return gaps


def token_auth_on() -> None:
    """Token authentication for the Ray this process starts next, unless ``RAY_AUTH_MODE``
    already says otherwise: set for the processes ``ray.init`` starts and, as Ray itself
    does when it turns the default on, in this process's cached configuration."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray import _raylet

    initialize = getattr(getattr(_raylet, "Config", None), "initialize", None)
    if initialize is not None:
        initialize("")


def loopback_only() -> None:
    """Make the Ray that this process starts next listen on loopback only. Ray reads the
    setting into a constant when first imported, which has happened by now: both are set,
    the variable for the processes ``ray.init`` starts and the constant for this one."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


@contextmanager
def without_idle_head_services() -> Iterator[None]:
    """While Ray starts an embedded node: no API server and no autoscaler monitor. Ray's
    ``Node`` class is as it was once the block ends."""
    from ray._private import node as ray_node

    saved = {name: getattr(ray_node.Node, name, None) for name in IDLE_HEAD_SERVICES}
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
