"""The run's advanced settings: one typed place, read from no environment, carried with the
run's settings to every worker, on whichever node it runs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tagcap.pipeline.cli import build_parser, caption_config
from tagcap.schemas.config import CaptionConfig
from tagcap.schemas.tuning import Tuning
from tests.helpers import ROOT, run_on_two_nodes


def test_defaults_parse_and_errors():
    assert Tuning() == Tuning.from_mapping(None) == Tuning.from_mapping({})
    tuning = Tuning.from_mapping({"store-fraction": 0.5, "map_ahead": "1", "cuda_sync": "Spin", "writeback_mb": "0"})
    assert tuning == Tuning(store_fraction=0.5, map_ahead=True, cuda_sync="spin", writeback_mb=0.0)
    assert tuning.writeback_bytes == 0 and Tuning().writeback_bytes == 64 * 2**20
    assert Tuning(map_ahead=True).updated(["map_ahead=none"]).map_ahead is None
    assert Tuning().updated(["retain_freed_memory=off", "h2d_staging=pinned"]) == Tuning(
        retain_freed_memory=False, h2d_staging="pinned"
    )
    with pytest.raises(ValueError, match="unknown tuning setting 'store'"):
        Tuning.from_mapping({"store": 1})
    with pytest.raises(ValueError, match=r"tuning\.retain_freed_memory: 'perhaps' is not a bool"):
        Tuning.from_mapping({"retain_freed_memory": "perhaps"})
    with pytest.raises(ValueError, match="tuning: expected a mapping"):
        Tuning.from_mapping(["store_fraction"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="h2d_staging must be one of"):
        Tuning(h2d_staging="0")
    assert Tuning().idle_workers is None and Tuning().updated(["idle_workers=3"]).idle_workers == 3
    assert Tuning(idle_workers=3).updated(["idle-workers=none"]).idle_workers is None
    with pytest.raises(ValueError, match="idle_workers must be >= 0 or none"):
        Tuning.from_mapping({"idle_workers": -1})


def test_the_idle_worker_limit_reaches_the_embedded_ray_and_none_is_its_cpus_plus_8():
    """``tuning.idle_workers`` becomes the embedded Ray's num_workers_soft_limit, read back
    from the started node's system config; none gives the node's CPUs + 8."""
    script = """
import json, ray
from tagcap.pipeline.ray_runtime import ray_session
seen = []
for limit in (3, None):
    with ray_session(None, num_cpus=1, object_store_memory=80 * 2**20, idle_workers=limit):
        seen.append(ray._private.worker.global_worker.node._config.get("num_workers_soft_limit"))
print(json.dumps(seen))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [3, 9]


def test_yaml_tuning_and_flags_merge_flags_winning(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"tuning": {"store_fraction": 0.5, "writeback_mb": 8}}))
    args = ["caption", "--config", str(path), "--input", "a.tar", "--segments", "s.csv", "--labels", "l.csv"]
    args += ["--output", str(tmp_path / "out"), "--tuning", "writeback_mb=0", "--ray-timeline", "t.json"]
    config = caption_config(build_parser().parse_args(args))
    assert config.tuning == Tuning(store_fraction=0.5, writeback_mb=0.0)
    assert config.ray_timeline == "t.json" and config.call_trace is None
    # No tuning setting changes an output byte: none is part of the run's identity.
    plain = CaptionConfig(input=["a.tar"], segments=["s.csv"], labels="l.csv", output="o")
    tuned = CaptionConfig(input=["a.tar"], segments=["s.csv"], labels="l.csv", output="o", tuning={"cuda_sync": "spin"})
    assert plain.identity_fields() == tuned.identity_fields()


def test_no_tagcap_environment_variable_is_read_by_the_package():
    """Every setting reaches a worker with the run's settings; none from an environment
    that a joined cluster's workers do not share."""
    readers = re.compile(r"""(environ|getenv)[^\n]*["']TAGCAP_|["']TAGCAP_\w*["']""")
    found = []
    for folder in ("schemas", "workers", "pipeline", "tagcap"):
        for path in sorted((Path(ROOT) / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if readers.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


# Runs as a driver joined to the two-node cluster: the run's settings made from the command
# line as `tagcap caption` makes them, then a decode task and a captioner actor on the node
# with CPUs (the head has none), each reporting what its process applied.
_CLIENT = """
import json, sys
import ray
from tagcap.pipeline.caption import decode_spec, execution_settings, prepare_run
from tagcap.pipeline.cli import build_parser, caption_config
from tagcap.pipeline.stage_actors import caption_actor_class
from tagcap.workers import process_settings
from tagcap.workers.prepare import prepare_unit

address, *argv = sys.argv[1:]
config = caption_config(build_parser().parse_args(["caption", *argv]))
prep = prepare_run(config)
ray.init(address=address, log_to_driver=False)
head = ray.get_runtime_context().get_node_id()

@ray.remote(num_cpus=1)
def decode(unit, spec, segments, labels, storage):
    batch, payload = prepare_unit(unit, spec, segments, labels, storage)
    return ray.get_runtime_context().get_node_id(), process_settings.freed_memory_retained(), len(payload.samples)

spec = decode_spec(config, prep.info)
node, retained, samples = ray.get(decode.remote(prep.plan.units[0], spec, prep.segments, prep.labels, prep.storage))
settings = execution_settings(prep)
actor = caption_actor_class(settings, 1.0).remote(settings)
applied = ray.get(actor.settings_in_effect.remote())
print(json.dumps({"head": head, "node": node, "retained": retained, "samples": samples, "actor": applied}))
"""


def test_a_worker_on_the_second_node_obeys_the_drivers_tuning(sample_input, tmp_path):
    trace = tmp_path / "trace"
    argv = ["--input", sample_input.shards, "--segments", sample_input.segments, "--labels", sample_input.labels]
    argv += ["--output", str(tmp_path / "out"), "--tuning", "retain_freed_memory=false"]
    argv += ["--call-trace", str(trace)]
    client = run_on_two_nodes(_CLIENT, *argv, head_cpus=0)
    assert client.returncode == 0, client.stderr[-3000:]
    report = json.loads(client.stdout.strip().splitlines()[-1])
    # The decode task ran on the second node and kept to the changed value (the default
    # retains freed memory); it decoded the unit's clips.
    assert report["node"] != report["head"] and report["samples"] > 0
    assert report["retained"] is False
    # The captioner actor (there too: the head has no CPU) has the run's call trace folder.
    assert report["actor"] == {"call_trace": str(trace)} and trace.is_dir()
