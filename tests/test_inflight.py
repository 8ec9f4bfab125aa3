"""The default number of work units in flight: enough to keep every decode slot fed, never
more than half the object store holds."""

from tagcap.pipeline.executor import inflight_limit

GB = 1 << 30


def test_twice_the_decode_slots_and_actors_where_memory_allows():
    # 16 CPUs, one GPU actor holding one, one kept for writes: 14 decode slots.
    assert inflight_limit(16, 40 * GB, 1, 1.0, 1.0, 170 << 20) == 2 * (14 + 1)
    assert inflight_limit(16, 40 * GB, 1, 1.0, 1.0, None) == 30  # sizes unknown: CPUs decide
    assert inflight_limit(16, 40 * GB, 1, 1.0, 0.5, None) == 2 * (28 + 1)  # half a CPU a decode
    assert inflight_limit(2, 1 * GB, 1, 1.0, 1.0, 1 << 20) == 4  # a laptop: one decode slot


def test_capped_by_half_the_object_store():
    # 256 MB units hold about 768 MB each in flight: 4 GB of store takes 2 of them.
    assert inflight_limit(16, 4 * GB, 1, 1.0, 1.0, 256 << 20) == 2
    assert inflight_limit(64, 8 * GB, 1, 1.0, 1.0, 256 << 20) == 5
    # Never fewer than one unit per actor plus one, however small the store.
    assert inflight_limit(16, 1 * GB, 4, 1.0, 1.0, 1 * GB) == 5
