"""``--captioner blat:...`` end to end: template-caption the sample, train a tiny captioner
on those shards, then caption the sample and the ESC-50 clips with it."""

import json
import os

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.esc50 import pack_esc50
from tagcap.schemas.audioset import LabelMap
from tagcap.schemas.config import CaptionConfig
from tagcap.workers.captioners import describe
from tests.conftest import shared_data
from tests.helpers import check_output, execution_settings, tar_digests


def _config(sample, out, ckpt, **kw):
    return CaptionConfig(
        input=[sample.shards],
        segments=[sample.segments],
        labels=sample.labels,
        output=str(out),
        captioner=f"blat:{ckpt}",
        captioner_options={"candidates": 3},
        progress=False,
        batch_size=4,
        **kw,
    )


def test_blat_captions_the_sample_deterministically_and_resumes(tiny_checkpoint, sample_input, tmp_path):
    info = describe(f"blat:{tiny_checkpoint}")
    assert info.captioner_id.startswith("blat-") and len(info.checkpoint_sha256) == 64
    out = tmp_path / "a"
    assert run_caption(_config(sample_input, out, tiny_checkpoint)) == 0
    o = check_output(str(out), expected_inputs=24)
    assert len(o.samples) == 24 and not o.error_rows
    meta = json.loads(o.samples[0]["json"])["caption_meta"]
    assert meta["captioner"] == info.captioner_id and meta["checkpoint_sha256"] == info.checkpoint_sha256
    assert len(meta["candidates"]) == 3 and meta["candidates"][0] == json.loads(o.samples[0]["json"])["text"][0]
    assert meta["logprob"] < 0 and meta["params"]["beam_size"] == 3
    # determinism: another run, other batch size and actor count
    again = tmp_path / "b"
    assert run_caption(_config(sample_input, again, tiny_checkpoint, actors=2)) == 0
    assert tar_digests(str(again)) == tar_digests(str(out))
    # resume: a shard lost its commit marker
    (out / "000002.stats.json").unlink()
    assert run_caption(_config(sample_input, out, tiny_checkpoint)) == 0
    assert tar_digests(str(again)) == tar_digests(str(out))


def test_blat_on_esc50(tiny_checkpoint, tmp_path):
    labels_path = shared_data("audioset", "class_labels_indices.csv")
    labels = LabelMap.parse(labels_path.read_text())
    pattern, segments = pack_esc50(str(shared_data("esc50")), labels, str(tmp_path / "in"), clips_per_shard=100)
    cfg = CaptionConfig(
        input=[pattern],
        segments=[segments],
        labels=str(labels_path),
        output=str(tmp_path / "out"),
        captioner=f"blat:{tiny_checkpoint}",
        progress=False,
        batch_size=50,
    )
    assert run_caption(cfg) == 0
    o = check_output(str(tmp_path / "out"), expected_inputs=400)
    assert len(o.samples) == 400 and not o.error_rows
    texts = {json.loads(s["json"])["text"][0] for s in o.samples}
    assert all(t and t.strip() for t in texts)


def test_an_actor_refuses_a_checkpoint_other_than_the_runs(tiny_checkpoint, tmp_path, capsys):
    """The driver records the captioner id (the weights' sha256) in the manifest; an actor
    that loads other weights (the checkpoint replaced after the run started) must not
    caption under that id."""
    import shutil

    import torch

    from tagcap.pipeline.stage_actors import CaptionActor
    from tagcap.workers.captioners.blat import BlatCaptioner
    from tagcap.workers.models.checkpoint import load_captioner, save_captioner
    from tagcap.workers.storage import Storage

    def settings(target, captioner_id):
        return execution_settings(f"blat:{target}", captioner_id=captioner_id)

    recorded = BlatCaptioner.describe(str(tiny_checkpoint), {}).captioner_id
    assert CaptionActor(settings(str(tiny_checkpoint), recorded)).info().captioner_id == recorded
    # The actor accounts for its start in its log, once it can caption.
    assert f"tagcap: captioner {recorded} ready in " in capsys.readouterr().err
    replaced = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, replaced)
    ckpt = load_captioner(str(replaced), Storage())
    with torch.no_grad():
        ckpt.model.out.bias.add_(1.0)  # other weights, same shape
    save_captioner(str(replaced), ckpt.model, ckpt.vocab, ckpt.tags, Storage())
    try:
        CaptionActor(settings(str(replaced), recorded))
    except RuntimeError as exc:
        assert recorded in str(exc) and "blat-" in str(exc)
    else:
        raise AssertionError("an actor captioned with weights the run did not record")


def test_the_driver_describes_a_blat_run_without_importing_torch(tiny_checkpoint, sample_input, tmp_path):
    """torch costs a driver seconds of start and hundreds of MB; only actors need it (the
    ``hf:`` and ``alm:`` captioners' and the ``lm:`` rewriter's modules are checked alongside:
    their descriptions need no torch either)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from tagcap.pipeline import executor\n"
        "from tagcap.pipeline.caption import prepare_run\n"
        "from tagcap.schemas.config import CaptionConfig\n"
        "from tagcap.workers import captioners\n"
        f"cfg = CaptionConfig(input=[{sample_input.shards!r}], segments=[{sample_input.segments!r}], "
        f"labels={sample_input.labels!r}, output={str(tmp_path / 'out')!r}, captioner='blat:{tiny_checkpoint}')\n"
        "prep = prepare_run(cfg)\n"
        "assert prep.info.captioner_id.startswith('blat-') and len(prep.plan.units) > 0\n"
        "assert captioners.resolve(cfg.captioner)[0].concurrent_calls == 2\n"
        "assert captioners.resolve('hf:/nowhere')[0].name == 'hf'\n"
        "assert captioners.resolve('alm:/nowhere')[0].name == 'alm'\n"
        "from tagcap.workers.stages import stage_class\n"
        "assert stage_class('rewrite', 'lm:/nowhere')[0].name == 'lm'\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio', 'transformers')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_call_trace_records_each_call_in_phases(tiny_checkpoint, tmp_path, monkeypatch):
    """With a call trace folder (``--call-trace``) every caption call appends one line
    of its phases, from two threads at once as the actor runs them; unset, nothing."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from tagcap.schemas.work import ModelBatch
    from tagcap.workers import call_trace
    from tagcap.workers.captioners import build

    captioner = build(f"blat:{tiny_checkpoint}", {})
    pcm = (np.random.default_rng(0).standard_normal((3, captioner.info.sample_rate)) * 3000).astype(np.int16)
    batch = ModelBatch(pcm, captioner.info.sample_rate, [["x"]] * 3, [["/m/09x0r"]] * 3, ["a", "b", "c"])
    captioner(batch)
    assert call_trace.FOLDER == "" and not list(tmp_path.iterdir())

    monkeypatch.setattr(call_trace, "FOLDER", "")
    call_trace.enable(str(tmp_path))
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: captioner(batch), range(4)))
    calls = call_trace.read(str(tmp_path))
    assert len(calls) == 4 and {c["clips"] for c in calls} == {3}
    assert {c["pid"] for c in calls} == {os.getpid()}
    for call in calls:
        names = [name for name, _ in call["phases"]]
        assert names == ["to_gpu", "encode", "tag_inputs", "search_inputs", "search", "results"]
        assert all(seconds >= 0 for _, seconds in call["phases"])
    assert [c["began"] for c in calls] == sorted(c["began"] for c in calls)
