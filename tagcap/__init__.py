"""tagcap: tag-guided audio captioning at cluster scale.

The code lives in three subpackages that mirror the repository layout:
``tagcap.schemas`` (data contracts), ``tagcap.workers`` (code that runs inside Ray tasks,
actors and DataLoader workers, never importing Ray) and ``tagcap.pipeline`` (the driver:
CLI, planning, Ray scheduling, commit and resume).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tagcap")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
