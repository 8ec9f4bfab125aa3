"""The embedded Ray: which head processes it starts, and that it still runs work."""

import json
import subprocess
import sys

import pytest

from tests.helpers import cli_env

# Runs in a fresh process (the test session's own Ray is already up): opens the embedded
# session, runs a task, lists the Ray processes it started, then checks that Ray's Node
# class is as it was.
_SESSION = """
import json, psutil, ray
from ray._private import node as ray_node
from tagcap.pipeline.ray_runtime import ray_session

import sys
before = {name: getattr(ray_node.Node, name) for name in ("start_api_server", "start_monitor")}
with ray_session(None, num_cpus=1, object_store_memory=80 * 1024 * 1024, head_services=sys.argv[1] == "1"):
    ran = ray.get(ray.remote(lambda: 41).remote()) + 1
    commands = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
restored = all(getattr(ray_node.Node, name) is method for name, method in before.items())
print(json.dumps({"ran": ran, "commands": commands, "restored": restored}))
"""


def _session(head_services: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _SESSION, head_services], capture_output=True, text=True, env=cli_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _started(commands: list[str], script: str) -> bool:
    return any(script in command for command in commands)


@pytest.mark.parametrize("head_services", ["0", "1"])
def test_embedded_ray_starts_the_head_services_only_when_asked(head_services):
    got = _session(head_services)
    assert got["ran"] == 42 and got["restored"]
    assert _started(got["commands"], "gcs_server") and _started(got["commands"], "raylet")
    wanted = head_services == "1"
    assert _started(got["commands"], "autoscaler/_private/monitor.py") is wanted, got["commands"]
    assert _started(got["commands"], "dashboard/dashboard.py") is wanted, got["commands"]
