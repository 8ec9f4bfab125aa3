"""How many work units are in flight: by default enough ahead of the captioners to keep
every decode slot fed (more while they start), at most two per decode slot not yet decoded,
never more than 80% of the object store holds (``STORE_FRACTION``), units being written
included."""

import json
from pathlib import Path

import pytest

from tagcap.pipeline.admission import decode_slots, inflight_limits, limits_for
from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.executor import _inflight_limits
from tagcap.pipeline.sample import write_sample
from tagcap.schemas.tuning import Tuning
from tests.helpers import execution_settings, sample_config

GB = 1 << 30


def test_twice_the_decode_slots_and_actors_ahead_where_memory_allows():
    # 16 CPUs, a GPU actor and shard writers reserving none: 16 decode slots, 34 units ahead.
    limits = inflight_limits(16, 40 * GB, 1, 0.0, 1.0, 170 << 20)
    assert limits.ahead == 2 * (16 + 1)
    # An actor holding a CPU, two writers holding a quarter each: 14 slots.
    assert inflight_limits(16, 40 * GB, 1, 1.0, 1.0, 170 << 20, writers_cpus=0.5).ahead == 30
    assert inflight_limits(16, 40 * GB, 1, 1.0, 0.5, None, writers_cpus=0.5).ahead == 60  # half a CPU each
    assert inflight_limits(2, 1 * GB, 1, 1.0, 1.0, 1 << 20).ahead == 4  # a laptop: one decode slot


def test_at_most_two_units_per_decode_slot_wait_to_be_decoded():
    # A decode task no CPU can take yet is queued in Ray, which starts worker processes for
    # its queue: two per slot keeps one queued behind each running one, and no more.
    limits = inflight_limits(16, 40 * GB, 1, 0.0, 1.0, 170 << 20)
    assert decode_slots(16, 1, 0.0, 1.0, 0.0) == 16 and limits.decoding == 32
    assert limits.admits(31, 0, flowing=False, decoding=31)
    assert not limits.admits(31, 0, flowing=False, decoding=32)
    # Decoded units go on filling the memory budget while the actors start.
    assert limits.admits(63, 0, flowing=False, decoding=0) and not limits.admits(64, 0, flowing=False, decoding=0)
    assert inflight_limits(2, 1 * GB, 1, 1.0, 1.0, 1 << 20).decoding == 2  # a laptop: one slot
    # The slots they were sized for (a run's decode actors), given a fixed limit or not.
    assert limits.slots == 16 and inflight_limits(2, 1 * GB, 1, 1.0, 1.0, 1 << 20).slots == 1
    assert limits_for(8, {"CPU": 16.0}, 1, 0.0, 1.0, None, 4.0, 0.8).slots == 12
    assert inflight_limits(16, 40 * GB, 1, 1.0, 1.0, None, writers_cpus=0.5).decoding == 28


def test_memory_counts_a_unit_ahead_three_times_and_a_writing_one_once():
    # 80% of 40 GB is 192.75 units of 170 MB: 64 ahead at three times their size.
    limits = inflight_limits(16, 40 * GB, 1, 0.0, 1.0, 170 << 20)
    # While the actors start, as many ahead as memory takes, more than the 34 of later.
    assert limits.admits(63, 0, flowing=False) and not limits.admits(64, 0, flowing=False)
    # Once captions flow: 34 ahead, whatever is being written...
    assert limits.admits(33, 0, flowing=True) and not limits.admits(34, 0, flowing=True)
    # ...as long as memory allows: 34 ahead and 90 writing fill it, or 1 ahead and 189 writing.
    assert limits.admits(33, 90, flowing=True) and not limits.admits(33, 91, flowing=True)
    assert limits.admits(0, 189, flowing=True) and not limits.admits(0, 190, flowing=True)
    # Half the store, as before 2026-12-01's fourth session: 40 ahead while starting.
    half = inflight_limits(16, 40 * GB, 1, 0.0, 1.0, 170 << 20, store_fraction=0.5)
    assert half.admits(39, 0, flowing=False) and not half.admits(40, 0, flowing=False)


def test_the_units_decoded_while_the_captioner_started_do_not_hold_decoding_back():
    # 60 units decoded while the actor started, 34 allowed ahead later: held to 34, every
    # decode slot would stand idle until the captioner had taken 27 of them.
    limits = inflight_limits(16, 40 * GB, 1, 0.0, 1.0, 170 << 20)
    assert not limits.admits(59, 0, flowing=True)
    after = limits.once_flowing(60)
    assert after.ahead == 60
    assert after.admits(59, 0, flowing=True) and not after.admits(60, 0, flowing=True)
    # Memory still bounds the units in the air (192.75 units' bytes: 60 ahead and 12 writing)
    # and the decode queue its length.
    assert after.admits(59, 12, flowing=True) and not after.admits(59, 13, flowing=True)
    assert not after.admits(40, 0, flowing=True, decoding=32)
    # A start with fewer ahead than the limit leaves it as it was.
    assert limits.once_flowing(10) == limits


def test_sizes_unknown_or_max_inflight_count_every_unit_alike():
    limits = inflight_limits(16, 40 * GB, 1, 1.0, 1.0, None, writers_cpus=0.5)
    assert limits.ahead == 30
    assert limits.admits(29, 0, flowing=False) and not limits.admits(30, 0, flowing=False)
    assert limits.admits(14, 15, flowing=True) and not limits.admits(15, 15, flowing=True)


def test_capped_by_the_object_store():
    # 256 MB units hold about 768 MB each ahead: 80% of 4 GB takes 4 of them.
    assert inflight_limits(16, 4 * GB, 1, 1.0, 1.0, 256 << 20).ahead == 4
    assert inflight_limits(64, 8 * GB, 1, 1.0, 1.0, 256 << 20).ahead == 8
    # Never fewer than one unit per actor plus one, however small the store.
    tiny = inflight_limits(16, 1 * GB, 4, 1.0, 1.0, 1 * GB)
    assert tiny.ahead == 5 and tiny.admits(4, 0, flowing=True) and not tiny.admits(5, 0, flowing=True)


def test_units_go_on_decoding_while_the_captioner_starts(ray_local, tmp_path):
    """Two CPUs: the template actor holds one, one decode slot, so 4 units once captions
    flow; while the actor takes 3 s to start, all 10 units are handed out as fast as the
    decode slot takes them (two at a time waiting to be decoded), not held back until the
    actor is up (each shard's stats say when its unit was: ``finished_at - seconds``). The
    first two wait for the decode worker's start (up to about a second on two busy cores,
    beside the actor's and the shard writer's), the rest follow within milliseconds."""
    sample = write_sample(str(tmp_path / "in"), shards=10, clips_per_shard=1, seconds=1.0)
    out = tmp_path / "out"
    config = sample_config(sample, out, captioner="tests.plugins:SlowStartTemplate", captioner_options={"start_s": 3.0})
    assert run_caption(config) == 0
    stats = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.stats.json"))]
    assert len(stats) == 10
    submitted = [s["finished_at"] - s["seconds"] for s in stats]
    assert max(submitted) - min(submitted) < 2.0, submitted
    # The actor's start is in every unit's time: none was handed out after it.
    assert min(s["seconds"] for s in stats) >= 3.0 - (max(submitted) - min(submitted))


def test_store_fraction_from_the_tuning(ray_local):
    """tuning.store_fraction scales the memory budget of a run (the test cluster's 150 MB
    store, 10 MB units: 80% by default is 12 units' input bytes, a tenth 1.5) and a bad value
    says so."""
    default = _inflight_limits(execution_settings("template", unit_bytes=10 << 20), 1, 1.0)
    tenth_settings = execution_settings("template", unit_bytes=10 << 20, tuning=Tuning(store_fraction=0.1))
    tenth = _inflight_limits(tenth_settings, 1, 1.0)
    assert default.budget == pytest.approx(0.8 * 150 / 10, rel=0.05)
    # The budget never falls below the floor of units in the air (one per actor, plus one).
    assert tenth.budget == max(0.1 * 150 / 10, 3.0 * tenth.ahead) and tenth.ahead == 2
    with pytest.raises(ValueError, match=r"tuning.store_fraction must be in \(0, 1\]"):
        Tuning(store_fraction=1.5)


def test_actor_cpus_leave_one_decode_task_and_the_writers_room():
    from tagcap.pipeline.admission import actor_cpus

    # Room for all: each pool keeps what it asked.
    assert actor_cpus(16, 1.0, 0.0, {"caption": (1, 1.0), "rewrite": (2, 1.0)}) == {"caption": 1.0, "rewrite": 1.0}
    # Two CPUs, three CPU actors: the one CPU a decode task leaves is shared alike.
    shared = actor_cpus(2, 1.0, 0.0, {"caption": (1, 1.0), "rewrite": (1, 1.0), "filter": (1, 1.0)})
    assert shared == {"caption": 0.3333, "rewrite": 0.3333, "filter": 0.3333}
    with pytest.raises(ValueError, match="too few for decode tasks"):
        actor_cpus(1, 1.0, 0.25, {"caption": (1, 1.0)})
