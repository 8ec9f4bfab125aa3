"""What tagcap uses of Ray's private modules is all there in the installed Ray: an upgrade
of Ray that moves any of it fails here, loudly, and not as a slower or louder embedded Ray."""

import ray

from tagcap.pipeline import ray_private


def test_the_installed_ray_has_everything_tagcap_patches():
    assert ray_private.missing() == [], f"Ray {ray.__version__} lacks what tagcap patches"


def test_private_ray_is_used_from_one_module_only():
    from pathlib import Path

    from tests.helpers import ROOT

    users = sorted(
        str(path.relative_to(ROOT))
        for folder in ("schemas", "workers", "pipeline", "tagcap")
        for path in (Path(ROOT) / folder).rglob("*.py")
        if "ray._private" in path.read_text() or "ray import _raylet" in path.read_text()
    )
    assert users == ["pipeline/ray_private.py"]
