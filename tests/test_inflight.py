"""How many work units are in flight: by default enough ahead of the captioners to keep
every decode slot fed (more while they start), never more than half the object store
holds, units being written included."""

import json
from pathlib import Path

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.executor import InflightLimits, inflight_limits
from tagcap.pipeline.sample import write_sample
from tagcap.schemas.config import CaptionConfig

GB = 1 << 30


def test_twice_the_decode_slots_and_actors_where_memory_allows():
    # 16 CPUs, a GPU actor and write tasks reserving none: 16 decode slots; half the store
    # holds 40 units of 170 MB (at three times their size), all of them while actors start.
    assert inflight_limits(16, 40 * GB, 1, 0.0, 1.0, 170 << 20) == InflightLimits(2 * (16 + 1), 40)
    # An actor holding a CPU, write tasks holding CPUs (one kept for them): 14 slots.
    assert inflight_limits(16, 40 * GB, 1, 1.0, 1.0, 170 << 20, write_cpus=0.25) == InflightLimits(30, 40)
    # Sizes unknown: CPUs decide, and no more while actors start (memory cannot be bounded).
    assert inflight_limits(16, 40 * GB, 1, 1.0, 1.0, None, write_cpus=0.25) == InflightLimits(30, 30)
    assert inflight_limits(16, 40 * GB, 1, 1.0, 0.5, None, write_cpus=0.25) == InflightLimits(58, 58)
    assert inflight_limits(2, 1 * GB, 1, 1.0, 1.0, 1 << 20) == InflightLimits(4, 170)  # a laptop: one slot


def test_capped_by_half_the_object_store():
    # 256 MB units hold about 768 MB each in flight: 4 GB of store takes 2 of them.
    assert inflight_limits(16, 4 * GB, 1, 1.0, 1.0, 256 << 20) == InflightLimits(2, 2)
    assert inflight_limits(64, 8 * GB, 1, 1.0, 1.0, 256 << 20) == InflightLimits(5, 5)
    # Never fewer than one unit per actor plus one, however small the store.
    assert inflight_limits(16, 1 * GB, 4, 1.0, 1.0, 1 * GB) == InflightLimits(5, 5)


def test_units_go_on_decoding_while_the_captioner_starts(ray_local, tmp_path):
    """Two CPUs: the template actor holds one, one decode slot, so 4 units once captions
    flow; while the actor takes 2 s to start, all 10 units are handed out at once (each
    shard's stats say when its unit was: ``finished_at - seconds``)."""
    sample = write_sample(str(tmp_path / "in"), shards=10, clips_per_shard=1, seconds=1.0)
    out = tmp_path / "out"
    config = CaptionConfig(
        input=[sample.shards],
        segments=[sample.segments],
        labels=sample.labels,
        output=str(out),
        progress=False,
        captioner="tests.plugins:SlowStartTemplate",
        captioner_options={"start_s": 2.0},
    )
    assert run_caption(config) == 0
    stats = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.stats.json"))]
    assert len(stats) == 10
    submitted = [s["finished_at"] - s["seconds"] for s in stats]
    assert max(submitted) - min(submitted) < 1.0, submitted
    # The actor's start is in every unit's time: none was handed out after it.
    assert min(s["seconds"] for s in stats) >= 2.0
