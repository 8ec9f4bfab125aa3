"""The readahead of torch's and CUDA's libraries into the page cache."""

import os
import subprocess
import sys

from tagcap.schemas.tuning import Tuning
from tagcap.workers import library_readahead


def test_every_byte_of_every_readable_file_is_read_and_the_rest_skipped(tmp_path):
    sizes = {"a.so": 3 * (8 << 20) + 17, "b.so": 1, "c.so.1": 0}
    paths = []
    for name, size in sizes.items():
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        paths.append(str(path))
    missing = str(tmp_path / "gone.so")
    folder = tmp_path / "folder.so"
    folder.mkdir()
    readahead = library_readahead.start([missing, *paths, str(folder)], threads=3)
    assert readahead.wait(timeout_s=60) == sum(sizes.values())
    assert all(not thread.is_alive() and thread.daemon for thread in readahead.threads)


def test_the_libraries_are_found_without_importing_torch():
    probe = (
        "import sys; from tagcap.workers.library_readahead import library_files; files = library_files(); "
        "print('torch' in sys.modules, any('libtorch' in f for f in files), "
        "all(f.count('.so') for f in files), len(files) == len(set(files)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True", "True"]


def test_the_readahead_is_on_by_default_and_can_be_turned_off():
    assert Tuning().library_readahead is True
    assert Tuning().updated(["library-readahead=false"]).library_readahead is False
