"""A unit's pages of Ray's object store mapped into a process ahead of use, its contents
unchanged (``workers.store_pages``)."""

import sys
import time

import numpy as np
import pytest

from tagcap.workers.store_pages import PAGE, map_pages

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def _mapped_bytes(address: int) -> int:
    """What this process has mapped (its Rss) of the mapping that holds ``address``."""
    with open("/proc/self/smaps") as fh:
        lines = fh.read().splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0]
        if "-" in head and not line.startswith(("Rss", "Size")):
            try:
                lo, hi = (int(x, 16) for x in head.split("-"))
            except ValueError:
                continue
            if lo <= address < hi:
                rss = next(row for row in lines[i + 1 :] if row.startswith("Rss:"))
                return int(rss.split()[1]) * 1024
    raise AssertionError("address not mapped")


@pytest.mark.parametrize("offset", [0, 1, PAGE - 1])
@pytest.mark.parametrize("pages", [1, 3])
def test_map_pages_counts_every_page_an_array_spans(offset, pages):
    buffer = np.zeros(8 * PAGE, dtype=np.uint8)
    start = (-buffer.ctypes.data) % PAGE + offset  # ``offset`` bytes past a page boundary
    array = buffer[start : start + pages * PAGE - 7]
    spanned = (array.ctypes.data + array.nbytes - 1) // PAGE - array.ctypes.data // PAGE + 1
    assert map_pages(array) == spanned
    assert map_pages(array[:0]) == 0
    with pytest.raises(ValueError, match="contiguous"):
        map_pages(buffer[::2])


@linux_only
def test_map_pages_maps_what_another_process_put_in_rays_object_store(ray_local):
    """An array a Ray task wrote lies in the store's shared mapping of this process, mostly
    not mapped here yet; map_pages maps all of it and leaves it as it was."""
    ray = ray_local

    @ray.remote
    def fill(n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int16)

    array = ray.get(fill.remote(256 * PAGE))
    before = _mapped_bytes(array.ctypes.data)
    assert before < array.nbytes // 2
    assert map_pages(array.reshape(64, -1)) >= array.nbytes // PAGE
    assert _mapped_bytes(array.ctypes.data) >= array.nbytes
    assert np.array_equal(array, np.arange(256 * PAGE, dtype=np.int16))


def test_the_caption_actor_maps_a_unit_beside_its_caption_calls(ray_local):
    """The actor class a run makes: with its one caption thread busy in a slow call,
    map_input still runs (its own concurrency group) and touches every page of the unit;
    the captions are those of a call without it."""
    from tagcap.pipeline.stage_actors import caption_actor_class
    from tagcap.schemas.work import ModelBatch
    from tests.helpers import SLOW_TEMPLATE, execution_settings

    ray = ray_local
    from tagcap.schemas.tuning import Tuning

    settings = execution_settings(SLOW_TEMPLATE, captioner_config={"sleep": 3.0}, tuning=Tuning(map_ahead=True))
    assert settings.maps_ahead and settings.actor_threads == 1
    assert not execution_settings("template").maps_ahead  # by default only beside a GPU
    actor = caption_actor_class(settings, 0.5).remote(settings)
    try:
        ray.get(actor.info.remote())  # started
        pcm = np.zeros((4, 16000), dtype=np.int16)
        batch = ModelBatch(pcm, 16000, [["Speech"]] * 4, [["/m/09x0r"]] * 4, [f"k{i}" for i in range(4)])
        ref = ray.put(batch)
        slow = actor.caption.remote(ref)
        time.sleep(0.5)  # the caption call holds the actor's only caption thread
        mapped = actor.map_input.remote(ref)
        ready, _ = ray.wait([mapped], timeout=2.0)
        assert ready == [mapped], "map_input waited for the caption call"
        assert ray.get(mapped) >= pcm.nbytes // PAGE
        assert ray.wait([slow], timeout=0)[0] == []  # the caption call was still running
        before = ray.get(slow)
        after = ray.get(actor.caption.remote(ref))
        assert [r.text for r in after.results] == [r.text for r in before.results]
        assert after.results[0].text.startswith("The sound of ")
    finally:
        ray.kill(actor)
