"""The settings a decode task makes to its worker process, checked in fresh processes."""

import subprocess
import sys

import pytest

# A unit-sized block (above glibc's 32 MB mapping limit) freed, then the process's resident
# memory: kept where freed memory is retained, handed back to the kernel where it is not.
_PROBE = """
import numpy as np
from tagcap.workers.process_settings import retain_freed_memory

def resident_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20

import sys
wanted = sys.argv[1] == "1"
print(retain_freed_memory(wanted), retain_freed_memory(wanted))
before = resident_mb()
block = np.ones(300 * 2**20, np.uint8)
del block
print(round(resident_mb() - before))
"""


def _probe(wanted: bool) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, "1" if wanted else "0"], capture_output=True, text=True, check=True
    )
    flags, kept_mb = out.stdout.split("\n")[:2]
    return flags, int(kept_mb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_unit_memory_stays_for_the_next_unit_unless_turned_off():
    flags, kept_mb = _probe(True)
    assert flags == "True True"
    assert kept_mb >= 280  # the 300 MB block's pages are still the process's
    flags, kept_mb = _probe(False)
    assert flags == "False False"
    assert kept_mb < 50  # unmapped on free, as glibc does by default
