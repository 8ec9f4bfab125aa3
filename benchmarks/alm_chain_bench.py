"""The audio-language chain on one GPU: ``tagcap caption --captioner alm:`` with a
Qwen2-Audio-7B-shaped captioner and ``--rewrite lm:`` with a Mistral-7B-shaped rewriter
(both their published architectures with random weights; every answer is exactly
``--tokens`` tokens, so runs compare), against the loop AudioSetCaps runs: one clip at a
time through the same two models.

    python benchmarks/alm_chain_bench.py --work /tmp/tagcap-alm --clips 1024 --tokens 32

Reported: clips/s end to end for tagcap (caption and rewrite sharing the GPU, half each) and
for the one-clip loop; each stage alone (the captioner with no rewrite; the rewriter over the
captioned corpus through ``tagcap regenerate``, which reads no audio), its generated tokens/s
and the GPU memory its process held at most; and which stage limits the chain.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import make_corpus, write_results

# The published architectures (config.json of Qwen/Qwen2-Audio-7B and mistralai/Mistral-7B-v0.1).
QWEN2_AUDIO_7B = {
    "audio_config": {
        "num_mel_bins": 128,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "d_model": 1280,
        "max_source_positions": 1500,
    },
    "text_config": {
        "model_type": "qwen2",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 156032,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
    },
    "audio_token_index": 151646,
}
QWEN_SPECIALS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
}
MISTRAL_7B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "sliding_window": 4096,
}
MISTRAL_SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2}
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% endif %}"
)
MISTRAL_CHAT = (
    "<s>{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}</s>{% endif %}{% endfor %}"
)


def _word_tokenizer(vocab_size: int, specials: dict[str, int], eos: str, pad: str):
    """A word-level tokenizer with a token for every id of the model's vocabulary (random
    weights generate any of them) and the model's special tokens at their ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    by_id = {i: f"w{i}" for i in range(vocab_size)}
    by_id.update({i: name for name, i in specials.items()})
    tok = Tokenizer(models.WordLevel({name: i for i, name in by_id.items()}, unk_token=by_id[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=by_id[0])
    fast.add_special_tokens({"additional_special_tokens": [n for n in specials if n not in (eos, pad)]})
    return fast


def _fixed_length(model: Any, tokenizer: Any, tokens: int) -> None:
    config = model.generation_config
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config.min_new_tokens = tokens  # every answer exactly --tokens long


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ``--tiny``: the same two architectures at toy size, to try the benchmark on a CPU.
_TOY = {
    "num_hidden_layers": 1,
    "encoder_layers": 1,
    "hidden_size": 64,
    "d_model": 64,
    "intermediate_size": 128,
    "encoder_ffn_dim": 128,
    "num_attention_heads": 4,
    "encoder_attention_heads": 4,
    "num_key_value_heads": 2,
}


def _shrunk(config: dict[str, Any]) -> dict[str, Any]:
    return {k: (_shrunk(v) if isinstance(v, dict) else _TOY.get(k, v)) for k, v in config.items()}


def _random_model(folder: str, make: Any, tokenizer: Any, processor: Any, tokens: int) -> None:
    """``make()`` built on the GPU in bf16 with random weights, saved with its tokenizer or
    processor (once: a folder marked DONE is kept)."""
    import torch

    if os.path.exists(os.path.join(folder, "DONE")):
        return
    with torch.device(_device()):
        torch.set_default_dtype(torch.bfloat16)
        model = make()
        torch.set_default_dtype(torch.float32)
    _fixed_length(model, tokenizer, tokens)
    model.save_pretrained(folder)
    (processor or tokenizer).save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    open(os.path.join(folder, "DONE"), "w").close()


def build_models(work: str, tokens: int, tiny: bool = False) -> tuple[str, str]:
    """Both model folders, with random weights (each ~15-17 GB; ``tiny``: toy size)."""
    import transformers

    qwen, mistral_config = (_shrunk(QWEN2_AUDIO_7B), _shrunk(MISTRAL_7B)) if tiny else (QWEN2_AUDIO_7B, MISTRAL_7B)
    alm, lm = os.path.join(work, "qwen2-audio-7b"), os.path.join(work, "mistral-7b")
    tok = _word_tokenizer(156032, QWEN_SPECIALS, "<|im_end|>", "<|endoftext|>")
    features = transformers.WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=30)
    processor = transformers.Qwen2AudioProcessor(feature_extractor=features, tokenizer=tok, chat_template=CHAT)
    config = transformers.Qwen2AudioConfig(**qwen)
    _random_model(alm, lambda: transformers.Qwen2AudioForConditionalGeneration(config), tok, processor, tokens)
    tok = _word_tokenizer(32000, MISTRAL_SPECIALS, "</s>", "<unk>")
    tok.chat_template = MISTRAL_CHAT
    mistral = transformers.MistralConfig(**mistral_config)
    _random_model(lm, lambda: transformers.MistralForCausalLM(mistral), tok, None, tokens)
    return alm, lm


class GpuMemory:
    """The most GPU memory each process held while this runs (nvidia-smi every 0.5 s)."""

    def __init__(self):
        self.peak_mb: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                ).stdout
            except FileNotFoundError:  # no GPU here
                return
            for line in out.strip().splitlines():
                pid, used = (x.strip() for x in line.split(","))
                self.peak_mb[int(pid)] = max(self.peak_mb.get(int(pid), 0.0), float(used))
            self._stop.wait(0.5)

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _tagcap(args: list[str], config: dict[str, Any], work: str, name: str) -> dict[str, Any]:
    path = os.path.join(work, f"{name}.yaml")
    with open(path, "w") as fh:
        json.dump(config, fh)  # YAML reads JSON
    cmd = [sys.executable, "-m", "tagcap", *args, "--config", path, "--no-progress"]
    with GpuMemory() as memory:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    print(proc.stderr[-3000:], file=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed: {proc.returncode}")
    peaks = sorted(memory.peak_mb.values(), reverse=True)
    return {"wall_s": round(wall, 2), "gpu_peak_mb_by_process": peaks, **_steady(config["output"])}


def _steady(out: str) -> dict[str, Any]:
    """The rate once the actors are up: the clips of every shard but the first committed,
    over the time from the first commit to the last."""
    import glob

    stats = [json.loads(pathlib.Path(p).read_text()) for p in glob.glob(os.path.join(out, "*.stats.json"))]
    stats.sort(key=lambda s: s["finished_at"])
    if len(stats) < 2:
        return {}
    span = stats[-1]["finished_at"] - stats[0]["finished_at"]
    clips = sum(s["samples_in"] for s in stats[1:])
    return {"steady_clips_per_s": round(clips / span, 2) if span > 0 else None, "shards": len(stats)}


def one_clip_loop(alm: str, lm: str, corpus: Any, n: int, tokens: int, prompt: str, instruction: str) -> dict[str, Any]:
    """AudioSetCaps' loop: each clip decoded and resampled on the CPU, asked, then rewritten,
    one at a time, the two models resident on the GPU."""
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio.functional as taf
    import transformers

    from common import iter_clips

    device = _device()
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    processor = transformers.AutoProcessor.from_pretrained(alm, local_files_only=True)
    captioner = (
        transformers.Qwen2AudioForConditionalGeneration.from_pretrained(alm, local_files_only=True, dtype=dtype)
        .to(device)
        .eval()
    )
    tok = transformers.AutoTokenizer.from_pretrained(lm, local_files_only=True)
    rewriter = transformers.MistralForCausalLM.from_pretrained(lm, local_files_only=True, dtype=dtype)
    rewriter = rewriter.to(device).eval()
    clips = iter_clips(corpus.tars)
    times = []
    with torch.no_grad():
        for i in range(n + 2):  # the first two warm up
            t0 = time.perf_counter()
            _, flac = next(clips)
            wave, rate = sf.read(io.BytesIO(flac), dtype="float32")
            wave = taf.resample(torch.from_numpy(np.ascontiguousarray(wave)), rate, 16000).numpy()
            text = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": prompt}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            inputs = processor(text=[text], audio=[wave], sampling_rate=16000, return_tensors="pt")
            inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}
            out = captioner.generate(**inputs, max_new_tokens=tokens, do_sample=False)
            answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            chat = tok.apply_chat_template(
                [{"role": "user", "content": instruction.format(tags="a, b", answers=answer, max_words=25)}],
                add_generation_prompt=True,
                tokenize=False,
            )
            ids = tok(chat, return_tensors="pt", add_special_tokens=False).to(device)
            rewriter.generate(**ids, max_new_tokens=tokens, do_sample=False)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    del captioner, rewriter
    torch.cuda.empty_cache()
    return {"clips": n, "seconds": round(sum(times), 2), "clips_per_s": round(n / sum(times), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/tagcap-alm")
    ap.add_argument("--clips", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=32, help="tokens every answer and rewrite has")
    ap.add_argument("--batch", type=int, default=64, help="clips per captioner call (the actor's batch)")
    ap.add_argument("--loop-clips", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="toy-size models, to try this on a CPU")
    ap.add_argument("--runs", default="alone,loop", help="which of: alone (each stage alone), loop (the one-clip loop)")
    ap.add_argument("--chains", default="one", help="chain runs in order, comma-separated: one | audiosetcaps")
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", default="alm-chain")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    t0 = time.perf_counter()
    alm, lm = build_models(args.work, args.tokens, args.tiny)
    gpu = 1.0 if _device() == "cuda" else 0.0
    built = time.perf_counter() - t0
    per_shard = min(args.batch, args.clips)  # a unit per caption call: many commits to time the steady state by
    corpus = make_corpus(
        os.path.join(args.work, "corpus"), shards=max(1, args.clips // per_shard), clips_per_shard=per_shard
    )
    from tagcap.workers.captioners.alm import DEFAULT_PROMPT
    from tagcap.workers.stages.lm import DEFAULT_INSTRUCTION

    gen = {"max_new_tokens": args.tokens}
    base = {
        "input": [corpus.pattern],
        "segments": [corpus.segments],
        "labels": corpus.labels,
        "captioner": f"alm:{alm}",
        "captioner_options": gen,
        "batch_size": args.batch,
        "audio": "none",
    }
    figures: dict[str, Any] = {
        "clips": corpus.clips,
        "tokens": args.tokens,
        "batch": args.batch,
        "build_s": round(built, 1),
    }
    caption_only = os.path.join(args.work, "out-caption")
    regen = os.path.join(args.work, "out-regen")
    n = corpus.clips

    def rates(run: dict[str, Any], generated_per_clip: int) -> dict[str, Any]:
        run["clips_per_s"] = round(n / run["wall_s"], 2)  # wall clock, Ray start and model loads included
        rate = run.get("steady_clips_per_s") or run["clips_per_s"]
        run["generated_tokens_per_s"] = round(rate * args.tokens * generated_per_clip)
        return run

    if "alone" in args.runs:
        for out in (caption_only, regen):
            subprocess.run(["rm", "-rf", out], check=True)
        # The first run on this start also pays the page cache's first read of the weights.
        run = _tagcap(["caption"], {**base, "output": caption_only, "gpus_per_actor": gpu}, args.work, "caption")
        figures["caption_alone"] = rates(run, 1)
        rewrite = {"rewrite": f"lm:{lm}", "rewrite_options": {**gen, "batch_rows": args.batch}}
        run = _tagcap(
            ["regenerate", caption_only],
            {"output": regen, **rewrite, "stages": {"rewrite": {"gpus_per_actor": gpu}}},
            args.work,
            "regenerate",
        )
        figures["rewrite_alone"] = rates(run, 1)
        figures["limiting_stage"] = min(
            ("caption", "rewrite"), key=lambda s: figures[f"{s}_alone"].get("steady_clips_per_s") or 0
        )
    # The chain, both models on the one GPU (half each), once per name in --chains: "one" asks
    # one prompt, "audiosetcaps" the three chained questions (three answers of --tokens each).
    chains: dict[str, list[dict[str, Any]]] = {}
    for i, kind in enumerate(c for c in args.chains.split(",") if c):
        out = os.path.join(args.work, f"out-chain-{i}")
        subprocess.run(["rm", "-rf", out], check=True)
        options = {**gen, **({"prompt_chain": "audiosetcaps"} if kind == "audiosetcaps" else {})}
        config = {
            **base,
            "captioner_options": options,
            "output": out,
            "gpus_per_actor": gpu / 2,
            "rewrite": f"lm:{lm}",
            "rewrite_options": {**gen, "batch_rows": args.batch},
            "stages": {"rewrite": {"gpus_per_actor": gpu / 2}},
        }
        run = rates(_tagcap(["caption"], config, args.work, f"chain-{i}"), 4 if kind == "audiosetcaps" else 2)
        run["order_on_this_start"] = i
        chains.setdefault(kind, []).append(run)
        subprocess.run(["rm", "-rf", out], check=True)
    for kind, runs in chains.items():
        figures[f"chain_{kind}"] = {
            "runs": runs,
            "median_steady_clips_per_s": statistics.median(r.get("steady_clips_per_s") or 0 for r in runs),
            "median_wall_clips_per_s": statistics.median(r["clips_per_s"] for r in runs),
        }
    if "loop" in args.runs:
        figures["one_clip_loop"] = one_clip_loop(
            alm, lm, corpus, args.loop_clips, args.tokens, DEFAULT_PROMPT, DEFAULT_INSTRUCTION
        )
        if "chain_one" in figures:
            loop = figures["one_clip_loop"]["clips_per_s"]
            figures["speedup_over_loop_wall"] = round(figures["chain_one"]["median_wall_clips_per_s"] / loop, 1)
            figures["speedup_over_loop_steady"] = round(figures["chain_one"]["median_steady_clips_per_s"] / loop, 1)
    print(json.dumps(figures, indent=1))
    write_results(args.results, args.name, figures)


if __name__ == "__main__":
    main()
