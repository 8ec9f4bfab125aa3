from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Ray workers and subprocess drivers import test plugins (tests.plugins) from the repo root.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/data/{'/'.join(parts)}, which is not present here")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the in-process tests: 2 CPUs, a small object store."""
    import ray

    ray.init(
        num_cpus=2,
        object_store_memory=150 * 1024 * 1024,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_input(tmp_path_factory):
    from tagcap.pipeline.sample import write_sample

    return write_sample(str(tmp_path_factory.mktemp("sample")), shards=4, clips_per_shard=6, seconds=4.0)
