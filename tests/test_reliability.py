"""SPEC §5 under faults: concurrent runs, loopback-only Ray, unwritable output, hostile input."""

import contextlib
import glob
import ipaddress
import os
import signal
import subprocess
import tarfile
import time

import psutil
import pytest

from tagcap.pipeline.lock import OutputLease, OutputLocked
from tagcap.pipeline.sample import write_sample
from tagcap.schemas.layout import OutputLayout
from tagcap.workers.storage import Storage
from tests.helpers import check_output, cli_env, slow_caption_config, start_caption, tagcap_cmd, tar_digests


def _wait_for(predicate, timeout=90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def slow_sample(tmp_path_factory):
    return write_sample(str(tmp_path_factory.mktemp("slow")), shards=6, clips_per_shard=2, seconds=1.0, seed=3)


def test_second_run_on_the_same_output_refuses_until_the_first_is_gone(slow_sample, tmp_path):
    out = tmp_path / "out"
    config, env = slow_caption_config(tmp_path, out, slow_sample)
    first = start_caption(config, env)
    try:
        assert _wait_for(lambda: (out / ".lock").exists())
        second = subprocess.run(
            tagcap_cmd("caption", "--config", str(config)), env=env, capture_output=True, text=True, timeout=120
        )
        assert second.returncode == 2
        assert "output is in use by another run" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)  # a dead run ...
        first.wait(timeout=30)
    assert (out / ".lock").exists()
    third = subprocess.run(
        tagcap_cmd("caption", "--config", str(config)), env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr  # ... does not hold the output forever
    assert not (out / ".lock").exists()
    check_output(str(out), expected_inputs=12)


def test_a_stale_lease_from_another_host_is_taken_over(tmp_path):
    layout = OutputLayout(str(tmp_path))
    storage = Storage()
    holder = OutputLease(layout, storage, ttl_s=60)
    holder.info.host = "elsewhere"
    holder.acquire()
    with pytest.raises(OutputLocked):
        OutputLease(layout, storage, ttl_s=60).acquire()
    holder._stop.set()
    holder.info.heartbeat -= 3600  # its machine vanished an hour ago
    holder._write(exclusive=False)
    taker = OutputLease(layout, storage, ttl_s=60)
    taker.acquire()
    taker.release()
    assert not (tmp_path / ".lock").exists()


def _loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def test_embedded_ray_listens_on_loopback_only(slow_sample, tmp_path):
    out = tmp_path / "out"
    config, env = slow_caption_config(tmp_path, out, slow_sample, sleep=1.0)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # tagcap must pin loopback by itself
    proc = start_caption(config, env)
    try:
        assert _wait_for(lambda: len(glob.glob(str(out / "*.stats.json"))) >= 1)
        driver = psutil.Process(proc.pid)
        family = [driver, *driver.children(recursive=True)]
        # Ray's helper processes are re-parented: find them by session instead.
        sid = os.getsid(proc.pid)
        family += [p for p in psutil.process_iter() if _sid(p) == sid and p not in family]
        listening = []
        for p in family:
            try:
                conns = p.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            listening += [(p.name(), c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
        assert len(listening) >= 3  # gcs, raylet, object manager at least
        assert all(_loopback(ip) for _, ip, _ in listening), listening
        # token authentication stays on: no process of the run turns it off, and the
        # cluster's token exists
        for p in family:
            with contextlib.suppress(psutil.Error):
                assert p.environ().get("RAY_AUTH_MODE", "token") != "disabled", p.name()
        token = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        assert os.path.exists(token)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _sid(p):
    try:
        return os.getsid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _mount_tmpfs(path, options):
    path.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")


def test_read_only_output_fails_at_once(slow_sample, tmp_path):
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=1m")
    try:
        proc = subprocess.run(
            tagcap_cmd(
                "caption",
                "--input",
                slow_sample.shards,
                "--segments",
                slow_sample.segments,
                "--labels",
                slow_sample.labels,
                "--output",
                str(ro / "out"),
                "--no-progress",
            ),
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "is not writable" in lines[0] and "Read-only file system" in lines[0]
        assert not os.listdir(ro)
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_full_disk_publishes_nothing_partial(ray_local, tmp_path):
    from tagcap.pipeline.caption import run_caption
    from tagcap.schemas.config import CaptionConfig

    sample = write_sample(str(tmp_path / "in"), shards=3, clips_per_shard=4, seconds=10.0, seed=5)
    small = tmp_path / "small"
    _mount_tmpfs(small, "size=600k")  # room for the manifest, not for a shard
    try:
        cfg = CaptionConfig(
            input=[sample.shards],
            segments=[sample.segments],
            labels=sample.labels,
            output=str(small / "out"),
            progress=False,
            max_attempts=2,
        )
        assert run_caption(cfg) == 1
        out = small / "out"
        for path in glob.glob(str(out / "*.tar")):
            with tarfile.open(path) as tar:  # any tar under a final name is whole
                tar.getmembers()
        manifest = __import__("json").loads((out / "manifest.json").read_text())
        assert manifest["status"] == "incomplete" and manifest["failed_shards"]
        assert all("No space left on device" in r for r in manifest["failed_shards"].values())
        assert not glob.glob(str(out / ".tmp" / "*"))  # spooled partial tars removed
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _reference_run(sample, tmp_path):
    """The sample captioned by an undisturbed run (the template captioner, not slowed): the
    bytes a disturbed run must match. Returns its output folder."""
    from tagcap.pipeline.caption import run_caption
    from tests.helpers import SLOW_TEMPLATE, sample_config

    ref = tmp_path / "ref"
    assert run_caption(sample_config(sample, ref, captioner=SLOW_TEMPLATE, captioner_options={"sleep": 0})) == 0
    return ref


def _loopback_cluster(head_cpus: int):
    """A ``ray.cluster_utils.Cluster`` whose head is on 127.0.0.1 (nodes a test adds go on
    127.0.0.2, so that a driver attaches to the head), not connected to this process."""
    from ray.cluster_utils import Cluster

    return Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": head_cpus, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )


def _exit_status(proc, timeout: float):
    """The process's exit status, or None where it ran past ``timeout`` (then killed, so
    that what it said is there to read)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def test_worker_node_removed_mid_run(ray_local, slow_sample, tmp_path):
    """A two-node cluster on one machine (the worker node on 127.0.0.2, so the driver
    attaches to the head) loses its worker node mid-run: the job finishes on the head with
    the bytes of an undisturbed run."""
    ref = _reference_run(slow_sample, tmp_path)
    cluster = _loopback_cluster(head_cpus=2)
    worker = cluster.add_node(num_cpus=2, node_ip_address="127.0.0.2")
    try:
        out = tmp_path / "out"
        config, env = slow_caption_config(tmp_path, out, slow_sample, sleep=0.7)
        # Two units in flight: the run must still be going when the node goes away.
        extra = ("--ray-address", cluster.address, "--unit-timeout-s", "60", "--max-inflight", "2")
        proc = start_caption(config, env, *extra)
        assert _wait_for(lambda: len(glob.glob(str(out / "*.stats.json"))) >= 1, timeout=120)
        cluster.remove_node(worker)
        # Mid-run: the job was still going, with shards left, once the node was gone (how
        # many were done by then depends on how fast the machine ran the rest meanwhile).
        removed_at = len(glob.glob(str(out / "*.stats.json")))
        still_running = proc.poll() is None
        status = _exit_status(proc, timeout=240)
        assert status == 0, proc.stderr.read().decode()[-6000:]
        assert still_running and removed_at < 12, removed_at
        assert tar_digests(str(out)) == tar_digests(str(ref))
        check_output(str(out), expected_inputs=12)
    finally:
        cluster.shutdown()


def _actors_under(node, name: str) -> int:
    """Processes of actor class ``name`` that a node of a ``ray.cluster_utils.Cluster`` runs
    (its raylet's children, named ``ray::NAME``)."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    found = 0
    for child in raylet.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found += f"ray::{name}" in " ".join(child.cmdline())
    return found


def test_a_node_that_joins_mid_run_decodes_and_writes_too(ray_local, slow_sample, tmp_path, monkeypatch):
    """A run on a one-node cluster (2 CPUs: its captioner and one decode actor) that gains a
    node mid-run adds decode actors and a shard writer on it, and writes the bytes of an
    undisturbed run."""
    ref = _reference_run(slow_sample, tmp_path)
    # The cluster's processes (not the driver's) run the captioner: they take the slowdown.
    monkeypatch.setenv("SLOW_TEMPLATE_SLEEP", "1.5")
    cluster = _loopback_cluster(head_cpus=2)
    try:
        out = tmp_path / "out"
        config, env = slow_caption_config(tmp_path, out, slow_sample, sleep=1.5)
        proc = start_caption(config, env, "--ray-address", cluster.address, "--tuning", "cluster_check_s=0.5")
        assert _wait_for(lambda: len(glob.glob(str(out / "*.stats.json"))) >= 1, timeout=120)
        joined = cluster.add_node(num_cpus=2, node_ip_address="127.0.0.2")
        # Its two CPUs decode: two decode actors there (nothing else of the run's needs a
        # CPU), and it gets a shard writer of its own.
        grew = _wait_for(
            lambda: _actors_under(joined, "DecodeActor") == 2 and _actors_under(joined, "ShardWriter") == 1, timeout=60
        )
        still_running = proc.poll() is None
        status = _exit_status(proc, timeout=180)
        assert status == 0, proc.stderr.read().decode()[-6000:]
        assert grew and still_running, proc.stderr.read().decode()[-6000:]
        assert tar_digests(str(out)) == tar_digests(str(ref))
        check_output(str(out), expected_inputs=12)
    finally:
        cluster.shutdown()


def test_a_run_on_a_cluster_without_cpus_waits_for_a_node_to_join(ray_local, slow_sample, tmp_path):
    """A head started with no CPUs (its workers yet to join, as an autoscaler's): the run
    says it waits, and once a node with CPUs joins, it runs there to the end."""
    ref = _reference_run(slow_sample, tmp_path)
    cluster = _loopback_cluster(head_cpus=0)
    try:
        out = tmp_path / "out"
        config, env = slow_caption_config(tmp_path, out, slow_sample, sleep=0)
        proc = start_caption(config, env, "--ray-address", cluster.address)
        said = b""
        deadline = time.time() + 60
        while b"waiting for one to join" not in said and time.time() < deadline and proc.poll() is None:
            said += proc.stderr.read1(4096)
        assert b"no node with CPUs yet" in said, said.decode()[-3000:]
        assert proc.poll() is None and not glob.glob(str(out / "*.tar"))
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.2")
        status = _exit_status(proc, timeout=180)
        assert status == 0, (said + proc.stderr.read()).decode()[-6000:]
        assert tar_digests(str(out)) == tar_digests(str(ref))
        check_output(str(out), expected_inputs=12)
    finally:
        cluster.shutdown()
