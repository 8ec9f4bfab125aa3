"""The decode stage on a pool of actors (the default; ``tuning.decode_actors``): the same
shards as a decode task per unit gives, a decode actor killed mid-unit survived, and a
regeneration through it."""

from __future__ import annotations

import re
import signal
import threading
import time

import psutil
import pytest

from tagcap.pipeline.admission import UNDECODED_PER_SLOT
from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.decode_actors import DecodePool
from tagcap.pipeline.sample import write_sample
from tagcap.schemas.config import CaptionConfig
from tests.helpers import check_output, sample_config, tar_digests

TASKS = {"decode_actors": False}
REWRITER = "tests.plugins:TagRewriter"


@pytest.fixture(scope="module")
def long_sample(tmp_path_factory):
    """Units that take a while to decode (48 clips of 10 s each), so that one can be killed in the act."""
    return write_sample(str(tmp_path_factory.mktemp("long-sample")), shards=3, clips_per_shard=48, seconds=10.0)


def test_decode_actors_write_the_same_shards_as_decode_tasks(ray_local, sample_input, tmp_path):
    assert run_caption(sample_config(sample_input, tmp_path / "tasks", tuning=TASKS)) == 0
    assert run_caption(sample_config(sample_input, tmp_path / "actors")) == 0
    assert tar_digests(str(tmp_path / "actors")) == tar_digests(str(tmp_path / "tasks"))
    check_output(str(tmp_path / "actors"), expected_inputs=24)
    # The pool goes with the run (Ray frees a killed actor's CPUs within moments): later
    # runs in this Ray find every CPU free.
    deadline = time.monotonic() + 10
    while ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, f"CPUs still held: {ray_local.available_resources()}"
        time.sleep(0.05)


def _kill_first_decoding_actor(found: list[int], stop: threading.Event) -> None:
    """SIGKILL the first process seen decoding a unit in a decode actor (Ray titles it so)."""
    while not stop.is_set() and not found:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if "ray::DecodeActor.prepare" in " ".join(proc.info["cmdline"] or []):
                proc.send_signal(signal.SIGKILL)
                found.append(proc.info["pid"])
                return
        time.sleep(0.005)


def test_a_decode_actor_killed_mid_unit_comes_back_and_the_shards_are_unchanged(
    ray_local, long_sample, tmp_path, capsys
):
    assert run_caption(sample_config(long_sample, tmp_path / "ref")) == 0
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_decoding_actor, args=(killed, stop), daemon=True)
    killer.start()
    try:
        status = run_caption(sample_config(long_sample, tmp_path / "out", max_attempts=2))
    finally:
        stop.set()
        killer.join()
    assert killed, "no decode actor was seen decoding"
    assert status == 0
    # The killed unit's attempt, and the one queued behind it on that actor where there was one.
    retries = int(re.findall(r"shards: .*, (\d+) retries", capsys.readouterr().err)[-1])
    assert 1 <= retries <= UNDECODED_PER_SLOT
    out = check_output(str(tmp_path / "out"), expected_inputs=3 * 48)
    assert tar_digests(str(tmp_path / "out")) == tar_digests(str(tmp_path / "ref"))
    assert out.manifest["status"] == "complete"


def test_a_regeneration_reads_its_source_through_decode_actors(ray_local, sample_input, tmp_path):
    source = str(tmp_path / "source")
    assert run_caption(sample_config(sample_input, source)) == 0

    def regenerate(out: str, tuning: dict) -> int:
        config = CaptionConfig(
            input=[],
            segments=[],
            labels="",
            output=out,
            from_corpus=source,
            rewrite=REWRITER,
            progress=False,
            tuning=tuning,
        )
        return run_caption(config)

    assert regenerate(str(tmp_path / "tasks"), TASKS) == 0
    assert regenerate(str(tmp_path / "actors"), {}) == 0
    assert tar_digests(str(tmp_path / "actors")) == tar_digests(str(tmp_path / "tasks"))
    check_output(str(tmp_path / "actors"), expected_inputs=24)


def test_units_go_to_the_decode_actor_with_the_fewest_queued(ray_local):
    pool = DecodePool(3, decode_cpus=0.1)
    try:
        picks = [pool.take() for _ in range(6)]
        assert sorted(picks[:3]) == [0, 1, 2] and sorted(picks[3:]) == [0, 1, 2]
        pool.finished(1)
        pool.finished(1)
        assert pool.take() == 1  # the only one with fewer than two queued
        assert len({ray_local.get(actor.info.remote()) for actor in pool.actors}) == 3  # a process each
    finally:
        pool.close()


def test_a_decode_actor_that_died_gets_no_units_until_it_answers_again(ray_local):
    pool = DecodePool(2, decode_cpus=0.1)
    try:
        before = ray_local.get(pool[0].info.remote())
        ray_local.kill(pool[0], no_restart=False)
        with pytest.raises(ray_local.exceptions.RayActorError):  # a call after the kill fails: it died
            while ray_local.get(pool[0].info.remote()) == before:
                time.sleep(0.01)
        pool.recover(0)
        # Until actor 0 answers again, every unit goes to actor 1, however many it has queued.
        # (take() may itself be the first to see it back: once back, it stays up.)
        while True:
            taken = pool.take()
            if pool.up() == 2:
                break
            assert taken == 1
            time.sleep(0.01)
        assert ray_local.get(pool[0].info.remote()) != before  # restarted: a new process
        assert pool.take() == 0  # back, and the least queued
    finally:
        pool.close()


def test_an_actor_that_does_not_come_back_is_replaced_without_the_driver_waiting(ray_local, monkeypatch):
    """An actor Ray cannot restart (here: killed for good) is left out, and once it has not
    answered within the recovery time, a new actor takes its place and is handed units;
    recover() and take() return at once meanwhile."""
    from tagcap.pipeline import actor_pools

    monkeypatch.setattr(actor_pools, "RECOVERY_S", 1.0)
    pool = DecodePool(2, decode_cpus=0.1)
    try:
        lost = pool[0]
        ray_local.kill(lost, no_restart=True)
        began = time.monotonic()
        pool.recover(0)
        assert pool.take() == 1 and pool.up() == 1
        assert time.monotonic() - began < 0.5  # nothing waited for the lost actor
        while pool.up() < 2:  # replaced after RECOVERY_S, and up at once
            assert time.monotonic() - began < 60, "the lost actor was never replaced"
            time.sleep(0.05)
        assert pool[0] is not lost and time.monotonic() - began >= 1.0
        assert pool.take() == 0  # the new one, the least queued
        assert ray_local.get(pool[0].info.remote()) != ray_local.get(pool[1].info.remote())
    finally:
        pool.close()


def test_the_pool_shrinks_by_its_lost_and_idle_actors_never_a_busy_one(ray_local):
    """What a run does when a node is lost and the cluster has fewer CPUs: the actor coming
    back goes first, then idle ones; one with a unit queued stays; at least one is left."""
    pool = DecodePool(3, decode_cpus=0.1)
    try:
        idle = pool[2]
        ray_local.kill(pool[0], no_restart=True)
        pool.recover(0)
        assert pool.take() == 1  # queued on actor 1: busy
        assert pool.shrink_to(1) == 1
        assert pool.live_indices() == [1] and pool.up() == 1 and pool.coming_back() == []
        with pytest.raises(ray_local.exceptions.RayActorError):  # ended for good, its CPU freed
            ray_local.get(idle.info.remote(), timeout=30)
        pool.recover(2)  # a retired actor is not waited for
        assert pool.coming_back() == [] and pool.take() == 1
        pool.finished(1)
        pool.finished(1)
        assert pool.shrink_to(0) == 1  # never below one
    finally:
        pool.close()
