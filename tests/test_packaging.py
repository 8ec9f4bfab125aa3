"""A non-editable install (a wheel, the Docker image) holds every package of the tree."""

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_source_package_is_in_the_wheel_list():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        tool = tomllib.load(fh)["tool"]["setuptools"]
    listed = set(tool["packages"])
    dirs = tool["package-dir"]
    found = set()
    for top, name in (("pipeline", "tagcap.pipeline"), ("workers", "tagcap.workers"), ("schemas", "tagcap.schemas")):
        for here, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                rel = os.path.relpath(here, os.path.join(ROOT, top))
                pkg = name if rel == "." else f"{name}.{rel.replace(os.sep, '.')}"
                found.add(pkg)
                assert dirs.get(pkg) == os.path.relpath(here, ROOT).replace(os.sep, "/"), pkg
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
