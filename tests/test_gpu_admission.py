"""Actors that ask for GPUs the cluster does not have: an error at once on the embedded Ray
(which cannot grow), a warning and a wait on a joined cluster (which an autoscaler may
grow), never a silent hang."""

from __future__ import annotations

import subprocess
import tempfile
import time

from tagcap.pipeline.admission import gpu_shortfall
from tests.helpers import caption_args, check_output, cli_env, tagcap_cmd


def test_what_no_placement_gets_round():
    assert gpu_shortfall({"captioner": (1, 0.0)}, [0.0]) is None
    assert gpu_shortfall({"captioner": (2, 0.5), "filter": (1, 1.0)}, [1.0, 1.0]) is None
    assert gpu_shortfall({"captioner": (1, 2.0)}, [1.0, 1.0]) == (
        "the captioner actors ask for 2 GPU each, but no node has that many (2 node(s), 2 GPU(s) in all)"
    )
    assert "no node has that many (1 node(s), 0 GPU(s) in all)" in gpu_shortfall({"captioner": (1, 1.0)}, [0.0])
    assert gpu_shortfall({"captioner": (2, 1.0), "rewrite": (1, 0.5)}, [2.0]) == (
        "the actors ask for 2.5 GPUs (2 captioner x 1, 1 rewrite x 0.5), but the cluster has fewer "
        "(1 node(s), 2 GPU(s) in all)"
    )


def test_the_embedded_ray_without_gpus_fails_at_once_and_loses_nothing(sample_input, tmp_path):
    out = tmp_path / "out"
    args = caption_args(sample_input, str(out), "--captioner", "template")
    proc = subprocess.run(
        tagcap_cmd(*args, "--gpus-per-actor", "1"), capture_output=True, text=True, env=cli_env(), timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: the captioner actors ask for 1 GPU each, but no node has that many" in proc.stderr
    assert "--gpus-per-actor" in proc.stderr
    # The same job without the GPU finishes in the same output.
    done = subprocess.run(tagcap_cmd(*args), capture_output=True, text=True, env=cli_env(), timeout=180)
    assert done.returncode == 0, done.stderr
    check_output(str(out), expected_inputs=24)


def test_a_joined_cluster_waits_for_a_gpu_node_to_join(sample_input, tmp_path):
    """The head has no GPU: the run says it waits, and goes on once a node with one joins
    (as an autoscaler would add it)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    out = tmp_path / "out"
    args = caption_args(sample_input, str(out), "--captioner", "template", "--gpus-per-actor", "1")
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            tagcap_cmd(*args, "--ray-address", cluster.address), stderr=err, stdout=subprocess.DEVNULL, env=cli_env()
        )
        try:
            deadline = time.time() + 90
            while "waiting for the cluster to add them" not in _read(err) and time.time() < deadline:
                assert proc.poll() is None, _read(err)
                time.sleep(0.2)
            assert "warning: the captioner actors ask for 1 GPU each" in _read(err)
            assert not list(out.glob("*.tar"))  # nothing could be captioned yet
            # A GPU node as Ray sees one (its resource; the template captioner needs no device).
            cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.2")
            assert proc.wait(timeout=180) == 0, _read(err)[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
            cluster.shutdown()
    check_output(str(out), expected_inputs=24)


def _read(fh) -> str:
    fh.seek(0)
    return fh.read()
