"""The tag-guided captioner: generation agrees with a plain reference; checkpoints load
without unpickling."""

import hashlib
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tagcap.workers.captioners.blat import BlatCaptioner
from tagcap.workers.models.beam_search import GraphCache
from tagcap.workers.models.captioner import TagGuidedCaptioner
from tagcap.workers.models.checkpoint import load_captioner, save_captioner
from tagcap.workers.models.checkpoint_files import read_weights, weights_sha256
from tagcap.workers.models.configs import CaptionerConfig
from tagcap.workers.models.vocab import BOS, EOS, PAD, TagVocabulary, Vocabulary, tokenize
from tagcap.workers.storage import Storage

TINY = {
    "clip_seconds": 0.5,
    "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "n_mels": 32, "f_max": 8000},
    "encoder": {"channels": [8, 16], "n_mels": 32, "dropout": 0.0},
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 4,
    "d_ff": 64,
    "dropout": 0.0,
    "max_words": 7,
    "max_prefix_tags": 3,
}


def tiny_model(fusion: str, vocab_size: int = 40, n_tags: int = 6, seed: int = 0) -> TagGuidedCaptioner:
    torch.manual_seed(seed)
    cfg = CaptionerConfig.from_dict({**TINY, "tag_fusion": fusion, "vocab_size": vocab_size, "n_tags": n_tags})
    model = TagGuidedCaptioner(cfg).eval()
    # Random weights give near-uniform next-word distributions; sharpen them so that beams
    # diverge and finish at different lengths, as a trained model's do.
    with torch.no_grad():
        model.out.weight.mul_(8.0)
        model.out.bias[EOS] += 5.0
    return model


@torch.no_grad()
def reference_beam_search(model, wave, tags, beam_size, max_words, min_words=1):
    """One clip at a time, no cache: every step re-runs the decoder over the whole
    sequence, with a plain list of hypotheses."""
    memory = model.encode(wave[None])
    cross = model._cross_kv(memory)
    multi_hot, prefix_ids = model.tag_inputs([tags], wave.device)
    tag_add = model._tag_add(multi_hot)
    hyps = [([BOS], 0.0, False)]
    for step in range(max_words + 1):
        candidates = []
        for tokens, score, done in hyps:
            if done:
                candidates.append((tokens, score, True))
                continue
            x = model._embed_tokens(torch.tensor([tokens]), model.cfg.prefix_len, tag_add)
            mask = torch.ones(1, len(tokens), dtype=torch.bool)
            if model.cfg.prefix_len:
                px, pmask = model._prefix(prefix_ids)
                x, mask = torch.cat([px, x], 1), torch.cat([pmask, mask], 1)
            h, _ = model._run_layers(x, cross, mask)
            logp = F.log_softmax(model.out(h[0, -1]).float(), -1)
            for w in range(logp.shape[0]):
                if w in (PAD, BOS) or (step == max_words and w != EOS) or (step < min_words and w == EOS):
                    continue
                candidates.append(([*tokens, w], score + float(logp[w]), w == EOS))
        candidates.sort(key=lambda c: -c[1])
        hyps = candidates[:beam_size]
        if all(d for _, _, d in hyps):
            break
    return [([t for t in toks[1:] if t != EOS], s) for toks, s, _ in hyps]


@pytest.mark.parametrize("fusion", ["add", "prefix", "none"])
@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_beam_search_matches_one_clip_reference(fusion, beam_size):
    model = tiny_model(fusion)
    torch.manual_seed(1)
    waves = torch.randn(5, model.clip_samples) * 0.3
    tags = [[0, 1], [2], [], [5, 4, 3, 2], [1]]
    out = model.generate(waves, tags, beam_size=beam_size)
    lengths = set()
    for i in range(len(tags)):
        ref = reference_beam_search(model, waves[i], tags[i], beam_size, model.cfg.max_words)
        assert out.tokens[i] == [r[0] for r in ref]
        assert np.allclose(out.scores[i], [r[1] for r in ref], atol=1e-4)
        lengths.update(len(t) for t in out.tokens[i])
    if beam_size > 1:
        assert len(lengths) > 1  # hypotheses of different lengths were compared


@pytest.mark.parametrize("fusion", ["add", "prefix"])
def test_padding_a_batch_to_its_graph_bucket_changes_nothing(fusion):
    """The GPU path rounds a batch up to a bucket of rows (so that one captured graph
    serves units that lost a few clips); the empty rows must not change the real ones."""
    model = tiny_model(fusion)
    torch.manual_seed(2)
    waves = torch.randn(5, model.clip_samples) * 0.3
    tags = [[0, 1], [2], [], [5, 4, 3, 2], [1]]
    plain = model.generate(waves, tags, beam_size=3)
    padded = model.generate(waves, tags, beam_size=3, graphs=GraphCache(bucket=4))  # 5 -> 8 rows
    assert padded.tokens == plain.tokens
    assert len(padded.scores) == 5 and np.allclose(padded.scores, plain.scores, atol=1e-5)


def _reference_tag_inputs(tag_indices, n_tags, width):
    """The tag inputs built a row at a time, as the model did before building them in one
    scatter."""
    multi_hot = torch.zeros(len(tag_indices), n_tags)
    prefix = torch.full((len(tag_indices), width), n_tags, dtype=torch.long)
    for row, idx in enumerate(tag_indices):
        if idx:
            multi_hot[row, idx] = 1.0
        if idx[:width]:
            prefix[row, : len(idx[:width])] = torch.tensor(idx[:width])
    return multi_hot / multi_hot.sum(dim=1, keepdim=True).clamp(min=1.0), prefix


@pytest.mark.parametrize("width", [0, 2, 8])
def test_tag_inputs_match_the_rows_built_one_at_a_time(width):
    rng = np.random.default_rng(width)
    # Empty rows, repeated tags, rows longer than the prefix.
    rows = [[int(t) for t in rng.integers(0, 30, rng.integers(0, 12))] for _ in range(64)] + [[], [3, 3, 3]]
    cfg = CaptionerConfig.from_dict(
        {**TINY, "tag_fusion": "prefix", "n_tags": 30, "max_prefix_tags": width, "vocab_size": 40}
    )
    multi_hot, prefix = TagGuidedCaptioner(cfg).tag_inputs(rows, torch.device("cpu"))
    want_hot, want_prefix = _reference_tag_inputs(rows, 30, cfg.prefix_len)
    assert multi_hot.dtype == torch.float32 and torch.equal(multi_hot, want_hot)
    assert prefix.dtype == torch.long and torch.equal(prefix, want_prefix)
    with pytest.raises(IndexError):
        TagGuidedCaptioner(cfg).tag_inputs([[30]], torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the tags' copy to a GPU")
def test_tag_inputs_reach_the_gpu_as_built_on_the_cpu():
    model = tiny_model("prefix")
    rows = [[0, 2], [], [5, 1, 3, 4], [3]] * 64
    on_cpu = model.tag_inputs(rows, torch.device("cpu"))
    on_gpu = model.tag_inputs(rows, torch.device("cuda"))
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


def test_tags_change_what_is_generated():
    model = tiny_model("add")
    wave = torch.randn(1, model.clip_samples) * 0.3
    a = model.generate(wave, [[0]], beam_size=3).tokens
    b = model.generate(wave, [[3]], beam_size=3).tokens
    assert a != b


def test_checkpoint_round_trip_never_unpickles(tmp_path, monkeypatch):
    vocab = Vocabulary.build(["a dog barks", "a cat meows loudly"])
    tags = TagVocabulary(["/m/0bt9lr", "/m/01yrx"], ["Dog", "Cat"])
    model = tiny_model("prefix", vocab_size=len(vocab), n_tags=len(tags))
    sha = save_captioner(str(tmp_path / "ckpt"), model, vocab, tags, Storage())
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
        "tags.json",
        "vocab.json",
    ]

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_captioner(str(tmp_path / "ckpt"), Storage())
    assert loaded.sha256 == sha and loaded.captioner_id == f"blat-{sha[:16]}"
    wave = torch.randn(2, model.clip_samples) * 0.3
    assert loaded.model.generate(wave, [[0], [1]]).tokens == model.generate(wave, [[0], [1]]).tokens
    assert not loaded.model.training
    # The weights read on another thread while the model is built (as the BLAT captioner's
    # actor does): the same model, the same digest; a read that failed fails the load.
    with ThreadPoolExecutor(1) as pool:
        ahead = load_captioner(
            str(tmp_path / "ckpt"), Storage(), "cpu", pool.submit(read_weights, str(tmp_path / "ckpt"), Storage())
        )
        missing = pool.submit(read_weights, str(tmp_path / "nowhere"), Storage())
        with pytest.raises(FileNotFoundError):
            load_captioner(str(tmp_path / "ckpt"), Storage(), "cpu", missing)
    assert ahead.sha256 == sha
    for name, tensor in model.state_dict().items():
        assert torch.equal(ahead.model.state_dict()[name], tensor), name


def test_vocabulary():
    vocab = Vocabulary.build(["A dog barks!", "a dog, then a cat"], min_count=1)
    assert tokenize("A dog's bark, LOUD.") == ["a", "dog's", "bark", "loud"]
    ids = vocab.encode("a dog meows", max_len=20)
    assert ids[0] == BOS and ids[-1] == EOS
    assert vocab.decode(ids) == "a dog <unk>"
    assert Vocabulary.from_json(vocab.to_json()).words == vocab.words


def test_the_drivers_digest_reads_the_weights_in_chunks_and_names_a_missing_file(tmp_path):
    vocab = Vocabulary.build(["a dog barks"], min_count=1)
    tags = TagVocabulary(["/m/a"], ["A"])
    folder = str(tmp_path / "ckpt")
    sha = save_captioner(folder, tiny_model("prefix", vocab_size=len(vocab), n_tags=len(tags)), vocab, tags, Storage())
    weights = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    assert len(weights) > 3 * 1000  # several chunks of 1000 bytes
    assert weights_sha256(folder, Storage(), chunk=1000) == sha == hashlib.sha256(weights).hexdigest()
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="checkpoint incomplete or missing"):
        BlatCaptioner.describe(folder, {})
