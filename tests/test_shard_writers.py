"""The run's shard writers: a fixed pool of actors (one per 8 CPUs of a node, at least one)
that writes every unit's shard, each unit on a writer of the node that holds its payload."""

import glob
import json
import textwrap
import time

import psutil
import webdataset as wds

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.sample import write_sample
from tagcap.pipeline.shard_writers import writers_per_node
from tests.helpers import (
    SLOW_TEMPLATE,
    check_output,
    run_on_two_nodes,
    sample_config,
    slow_caption_config,
    start_caption,
    tar_digests,
)


def test_one_writer_per_four_cpus_of_a_node_by_default_and_at_least_one():
    assert [writers_per_node(c) for c in (1, 2, 4, 12, 16, 64)] == [1, 1, 1, 3, 4, 16]
    assert [writers_per_node(c, cpus_per_writer=8) for c in (1, 12, 16)] == [1, 2, 2]


# Runs as a client of the two-node cluster (a process of its own: the test session has an
# embedded Ray of its own). Each unit's payload is made by a task placed on one node, so it
# lies in that node's object store; the pool must write it there.
_CLIENT = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from tagcap.pipeline.shard_writers import WriterPool
    from tagcap.schemas.layout import OutputLayout
    from tagcap.schemas.work import CaptionedUnit, CaptionResult, PackedBytes, SampleMeta, UnitPayload, WorkUnit
    from tagcap.workers.storage import Storage
    from tagcap.workers.writer import ProvenanceInfo

    address, out = sys.argv[1], sys.argv[2]
    ray.init(address=address, log_to_driver=False)
    while ray.cluster_resources().get("CPU", 0) < 4:  # both nodes in the scheduler's view
        time.sleep(0.1)

    @ray.remote(num_cpus=0)
    def payload(shard: str, clips: int) -> UnitPayload:
        rng = np.random.default_rng(int(shard))
        # 300 kB a clip: above Ray's inline limit, so the payload lives in the node's store.
        audio = [rng.bytes(300_000) for _ in range(clips)]
        samples = [
            SampleMeta(f"Y{shard}{i:08d}_0", f"{i}.flac", f"{shard}{i:08d}", 0, 10_000, ("/m/a",), ("A",), "flac")
            for i in range(clips)
        ]
        unit = WorkUnit(int(shard), shard, "tar", (f"in/{shard}.tar",))
        return UnitPayload(unit, samples, PackedBytes.pack(audio), [], clips)

    pool = WriterPool(OutputLayout(out), Storage({}), ProvenanceInfo("test", None, {}, "0"), 0.0).start()
    asked = [w.node for w in pool.writers]
    placed = [ray.get(w.handle.node.remote()) for w in pool.writers]
    nodes = sorted(set(asked))
    report = {"nodes": nodes, "asked": asked, "placed": placed, "units": []}
    for i in range(6):
        shard, node = f"{i:06d}", nodes[i % len(nodes)]
        ref = payload.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(shard, 3)
        ray.wait([ref], fetch_local=False)
        # Ray reports where an object lies a moment after the task that made it returned; a
        # run's payload waits for its captions far longer than that.
        deadline = time.time() + 30
        while not ray.experimental.get_object_locations([ref])[ref]["node_ids"] and time.time() < deadline:
            time.sleep(0.05)
        captions = ray.put(CaptionedUnit([CaptionResult(f"clip {j}") for j in range(3)], time.time(), time.time()))
        write, index = pool.submit(ref, captions, time.time())
        stats = ray.get(write)
        pool.finished(index)
        report["units"].append({"made_on": node, "written_by": pool.writers[index].node, "written": stats.written})
    pool.close()
    print(json.dumps(report))
    """
)


def test_each_unit_is_written_on_the_node_that_holds_its_payload(tmp_path):
    """Two nodes on one machine (the second on 127.0.0.2), each with an object store."""
    out = tmp_path / "out"
    client = run_on_two_nodes(_CLIENT, str(out))
    assert client.returncode == 0, client.stderr[-3000:]
    report = json.loads(client.stdout.strip().splitlines()[-1])
    # Two nodes of 2 CPUs: a writer on each, placed where it was meant to run.
    assert len(report["nodes"]) == 2 and sorted(report["asked"]) == report["nodes"]
    assert report["placed"] == report["asked"]
    units = report["units"]
    assert len(units) == 6 and {u["made_on"] for u in units} == set(report["nodes"])
    assert all(u["written_by"] == u["made_on"] and u["written"] == 3 for u in units)
    # And the shards are whole: three samples each, audio and captions, read back.
    for i in range(6):
        samples = list(wds.WebDataset(str(out / f"{i:06d}.tar"), shardshuffle=False))
        assert [s["json"] for s in samples] and len(samples) == 3
        assert all(len(s["flac"]) == 300_000 for s in samples)


def test_a_writer_killed_mid_run_comes_back_and_the_shards_are_unchanged(ray_local, tmp_path):
    """SIGKILL to the run's one shard writer once shards are being committed: Ray restarts
    it, any write it had is its unit's failed attempt (retried), and the run ends with the
    bytes of an undisturbed one."""
    sample = write_sample(str(tmp_path / "in"), shards=8, clips_per_shard=2, seconds=1.0, seed=11)
    reference = tmp_path / "reference"
    assert run_caption(sample_config(sample, reference, captioner=SLOW_TEMPLATE, captioner_options={"sleep": 0})) == 0
    out = tmp_path / "out"
    config, env = slow_caption_config(tmp_path, out, sample, sleep=0.4)
    proc = start_caption(config, env)
    try:
        deadline = time.time() + 120
        while not glob.glob(str(out / "*.stats.json")) and time.time() < deadline:
            time.sleep(0.05)
        writers = [
            p for p in psutil.Process(proc.pid).children(recursive=True) if "ShardWriter" in " ".join(p.cmdline())
        ]
        assert len(writers) == 1, writers  # two CPUs: one writer
        writers[0].kill()
        committed_at_kill = len(glob.glob(str(out / "*.stats.json")))
        code = proc.wait(timeout=240)
        assert code == 0, proc.stderr.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert committed_at_kill < 8  # the run was still writing when its writer went
    assert tar_digests(str(out)) == tar_digests(str(reference))
    check_output(str(out), expected_inputs=16)


def test_a_failed_attempt_waits_for_the_actor_its_error_names():
    """Failure handling without a running Ray: which pool's actor a failed attempt waits for."""
    from ray.exceptions import ActorUnavailableError, ActorUnschedulableError, RayTaskError

    from tagcap.pipeline.failures import describe_error, pools_to_recover

    writer_id, captioner_id, rewriter_id = bytes(range(16)), bytes(range(16, 32)), bytes(range(32, 48))
    pools = {
        "caption": frozenset({captioner_id.hex()}),
        "rewrite": frozenset({rewriter_id.hex()}),
        "writer": frozenset({writer_id.hex()}),
    }
    writer_died = ActorUnavailableError("gone", actor_id=writer_id)
    captioner_died = ActorUnavailableError("gone", actor_id=captioner_id)
    rewriter_died = ActorUnavailableError("gone", actor_id=rewriter_id)
    assert pools_to_recover(writer_died, pools, writing=False) == {"writer"}
    assert pools_to_recover(captioner_died, pools, writing=False) == {"caption"}
    assert pools_to_recover(rewriter_died, pools, writing=False) == {"rewrite"}
    assert pools_to_recover(ActorUnschedulableError("node gone"), pools, writing=False) == {"writer"}
    assert pools_to_recover(ActorUnavailableError("gone", actor_id=None), pools, writing=False) == set(pools)
    # A timed-out unit: its writer where its write had gone out, else the stage it was stuck in.
    assert pools_to_recover(TimeoutError("late"), pools, writing=True) == {"writer"}
    assert pools_to_recover(TimeoutError("late"), pools, writing=False) == {"caption"}
    assert pools_to_recover(TimeoutError("late"), pools, writing=False, stuck="rewrite") == {"rewrite"}
    # A task's own error is no actor's trouble; one wrapping an actor's is.
    assert pools_to_recover(ValueError("bad clip"), pools, writing=False) == set()
    wrapped = RayTaskError("write_shard", "trace", captioner_died, type(captioner_died))
    assert pools_to_recover(wrapped, pools, writing=False) == {"caption"}
    assert describe_error(writer_died, pools) == "shard writer died"
    assert describe_error(captioner_died, pools) == "captioner actor died"
    assert describe_error(rewriter_died, pools) == "rewrite actor died"
