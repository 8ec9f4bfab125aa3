"""Captioning throughput: the two ceilings, the first-try baseline, and tagcap end to end.

    python benchmarks/caption_bench.py --work /tmp/bench --clips 20480 all

* ``ceiling``: the BLAT-size captioner (full CNN14, 2-layer d=256 decoder, beam 3, at
  most 20 words) in a tight loop on batches already decoded, (a) model input already on
  the GPU at 32 kHz, (b) 16-bit 48 kHz PCM from host memory, resampled on the GPU (what
  the captioner actor does), and the levers: float32 vs bf16, batch size.
* ``decode``: every core decoding 10 s 48 kHz FLAC from the corpus's tars, (a) as
  tagcap's decode tasks do (decode, check, crop, 16-bit PCM), (b) also resampling to
  32 kHz on the CPU.
* ``baseline``: one process, a torch DataLoader with a worker per core decoding and
  resampling, the same model on the GPU: what a user writes first.
* ``host_input``: a unit's PCM from shared memory to the GPU (pageable, or through a
  pinned buffer filled by 1-8 threads), and the captioner fed from host PCM with 1 and 2
  calls at once, as its actor runs it.
* ``host_input_busy``: the captioner fed from host PCM alone and beside a decode process
  per core (nice 10), round by round.
* ``host_input_fresh``: the captioner fed from host PCM on one unit's pages again and again
  against units whose pages the process maps for the first time (as a run's actor does).
* ``e2e``: ``tagcap caption --captioner blat:...`` on the embedded Ray with every core and
  the GPU; peak private memory of the driver and of each kind of worker. Its rate leaves
  out the time Ray takes to write the timeline the benchmark asks for.
* ``e2e_levers``: the default run against runs with one lever changed (``--levers``, of
  ``LEVERS``), interleaved round by round after one warm-up run. ``full`` is the default
  of the code that ran (see the run's commit in docs/performance.md).
* ``e2e_long``: one ``e2e`` run over the corpus ``--long-times`` over (hard-linked tars), and
  one per lever of ``--long-levers``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (
    BASE_SITE,
    DECODE_SPEC,
    MODEL_RATE,
    RATE,
    RAY_IDLE_FLAGS,
    TreeUsage,
    base_code_commit,
    base_code_env,
    blat_checkpoint,
    evict_from_page_cache,
    iter_clips,
    machine,
    make_corpus,
    repeat_corpus,
    site_first_env,
    write_results,
)
from tagcap.schemas.records import ShardStats, median_stage_seconds
from tagcap.schemas.work import ModelBatch
from tagcap.workers import call_trace
from tagcap.workers.audio import _read_soundfile, decode_clip, fit_length, read_mono, resample, to_pcm16
from tagcap.workers.model_input import model_waveforms
from tagcap.workers.models.beam_search import GraphCache
from tagcap.workers.models.checkpoint import load_captioner
from tagcap.workers.process_settings import retain_freed_memory
from tagcap.workers.storage import Storage
from tagcap.workers.store_pages import map_pages
from timeline import summarize_calls, summarize_timeline

SPEC = DECODE_SPEC


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- GPU ceiling ----------------------------------------------------------------------------
def ceiling(ckpt_dir: str, batches: list[int], repeats: int, iters: int) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_captioner(ckpt_dir, Storage(), device)
    model = ckpt.model
    rng = np.random.default_rng(0)
    tags = [[int(t) for t in rng.choice(ckpt.tags.__len__(), rng.integers(1, 5), replace=False)] for _ in range(4096)]
    out: dict[str, Any] = {"variants": []}

    def run(batch: int, on_gpu: bool, bf16: bool, graphs: GraphCache | None) -> float:
        pcm = (rng.standard_normal((batch, RATE * 10)) * 3000).astype(np.int16)
        wave = model_waveforms(pcm, RATE, MODEL_RATE, MODEL_RATE * 10, device)
        rows = tags[:batch]

        def once() -> None:
            x = wave if on_gpu else model_waveforms(pcm, RATE, MODEL_RATE, MODEL_RATE * 10, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                model.generate(x, rows, beam_size=3, max_words=20, min_words=1, graphs=graphs)

        once()
        _sync()
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(iters):
                once()
            _sync()
            rates.append(batch * iters / (time.perf_counter() - start))
        return statistics.median(rates)

    graphs = GraphCache() if device.type == "cuda" else None
    for batch in batches:
        variants = [(True, True, graphs), (True, True, None), (False, True, graphs)]
        if batch == batches[-1]:
            variants.append((True, False, graphs))
        for on_gpu, bf16, graph in variants:
            rate = run(batch, on_gpu, bf16, graph)
            row = {
                "batch": batch,
                "input": "gpu_32k_float" if on_gpu else "host_48k_pcm16",
                "bf16": bf16,
                "cuda_graphs": graph is not None,
            }
            out["variants"].append({**row, "clips_per_s": round(rate, 1)})
            print("ceiling", row, f"{rate:.0f} clips/s", flush=True)
    # The graphed search must say what the eager one says (same kernels, same order).
    pcm = (rng.standard_normal((batches[0], RATE * 10)) * 3000).astype(np.int16)
    wave = model_waveforms(pcm, RATE, MODEL_RATE, MODEL_RATE * 10, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        eager = model.generate(wave, tags[: batches[0]], beam_size=3, max_words=20)
        graphed = model.generate(wave, tags[: batches[0]], beam_size=3, max_words=20, graphs=graphs)
    out["cuda_graphs_same_tokens"] = eager.tokens == graphed.tokens
    out["cuda_graphs_max_score_diff"] = float(np.abs(np.array(eager.scores) - np.array(graphed.scores)).max())
    print("graphs agree with eager:", out["cuda_graphs_same_tokens"], out["cuda_graphs_max_score_diff"], flush=True)
    chosen = [v for v in out["variants"] if v["bf16"] and v["cuda_graphs"] == (graphs is not None)]
    best_gpu = max(v["clips_per_s"] for v in chosen if v["input"] == "gpu_32k_float")
    best_host = max(v["clips_per_s"] for v in chosen if v["input"] == "host_48k_pcm16")
    # Give the GPU back before tagcap's own actor needs it (the float32 variant alone keeps
    # tens of GB in PyTorch's cache).
    model = ckpt = None  # drop the references; the closure above is done
    gc.collect()
    torch.cuda.empty_cache()
    out["caption_gpu_ceiling_clips_per_s"] = best_gpu
    out["caption_gpu_ceiling_from_host_pcm_clips_per_s"] = best_host
    # How long the captions ran: a random model rarely says <eos>, so every beam runs the
    # full 20 words, the slowest case a trained model can reach.
    return out


# -- host input: the captioner actor's copy of a unit's PCM to the GPU ----------------------
def _shared_pcm(batch: int) -> np.ndarray:
    """A unit's 16-bit PCM in shared memory, as a caption call gets it from Ray's object
    store (pageable, mapped from /dev/shm)."""
    rng = np.random.default_rng(1)
    fd, path = tempfile.mkstemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    pcm = np.memmap(path, dtype=np.int16, mode="w+", shape=(batch, RATE * 10))
    pcm[:] = (rng.standard_normal((batch, RATE * 10)) * 3000).astype(np.int16)
    os.unlink(path)  # the mapping stays valid
    return pcm


def _captioner_and_unit(ckpt_dir: str, pcm: np.ndarray) -> tuple[Any, ModelBatch]:
    """The BLAT-size captioner, warmed up for the batch, and a unit of ``pcm`` (48 kHz
    int16, one row per clip) with 1-4 of its tags per clip."""
    from tagcap.workers.captioners import build

    batch = pcm.shape[0]
    captioner = build(f"blat:{ckpt_dir}", {})
    captioner.warm_up(batch)
    rng = np.random.default_rng(2)
    known = list(captioner.runtime.ckpt.tags.index)
    rows = [[str(m) for m in rng.choice(known, rng.integers(1, 5), replace=False)] for _ in range(batch)]
    return captioner, ModelBatch(pcm, RATE, [["x"]] * batch, rows, [f"k{i}" for i in range(batch)])


def host_input(ckpt_dir: str, batch: int, repeats: int, calls: int) -> dict[str, Any]:
    """(a) The copy alone: a unit's PCM (batch x 10 s x 48 kHz, int16) from shared memory to
    the GPU, pageable vs through the pinned buffer filled by 1, 2, 4 or 8 threads vs its own
    pages pinned in place; (b) the BLAT captioner as its actor runs it (host PCM in,
    captions out) with 1 and 2 calls at once, for each way of copying."""
    from tagcap.workers import model_input

    if not torch.cuda.is_available():
        return {}
    device = torch.device("cuda")
    pcm = _shared_pcm(batch)
    out: dict[str, Any] = {"host_copy_mb": round(pcm.nbytes / 2**20, 1)}
    reference = model_waveforms(pcm, RATE, MODEL_RATE, MODEL_RATE * 10, device)

    staging_default, threads_default = model_input.STAGING, model_input.COPY_THREADS

    def use(staging: str, threads: int) -> None:
        model_input.STAGING, model_input.COPY_THREADS = staging, threads
        model_input._copy_pool.cache_clear()  # a pool of the new size

    def copy_ms(staging: str, threads: int) -> float:
        use(staging, threads)
        got = model_waveforms(pcm, RATE, MODEL_RATE, MODEL_RATE * 10, device)  # warm: pinned buffer, pool
        if not torch.equal(got, reference):
            raise AssertionError("the staged copy changed the model input")
        times = []
        for _ in range(max(5, repeats)):
            _sync()
            start = time.perf_counter()
            model_waveforms(pcm, RATE, MODEL_RATE, MODEL_RATE * 10, device)
            _sync()
            times.append(1000 * (time.perf_counter() - start))
        return round(statistics.median(times), 2)

    out["host_copy_pageable_ms"] = copy_ms("pageable", 1)
    for threads in (1, 2, 4, 8):
        out[f"host_copy_pinned_{threads}threads_ms"] = copy_ms("pinned", threads)
    out["host_copy_registered_ms"] = copy_ms("register", 1)
    print("host copy", {k: v for k, v in out.items() if k.startswith("host_copy")}, flush=True)

    captioner, unit = _captioner_and_unit(ckpt_dir, pcm)

    def rate(staging: str, threads: int) -> float:
        use(staging, threads_default)
        captioner(unit)  # warm
        results = []
        for _ in range(repeats):
            _sync()
            start = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda _: [captioner(unit) for _ in range(calls)], range(threads)))
            _sync()
            results.append(batch * calls * threads / (time.perf_counter() - start))
        return round(statistics.median(results), 1)

    for staging, name in (("pageable", "pageable"), ("pinned", "pinned"), ("register", "registered")):
        for threads in (1, 2):
            key = f"actor_host_{name}_{threads}calls_clips_per_s"
            out[key] = rate(staging, threads)
            print("actor from host PCM", key, out[key], flush=True)
    use(staging_default, threads_default)
    captioner = None
    gc.collect()
    torch.cuda.empty_cache()
    return out


def _decode_forever(tars: list[str], stop: Any, started: Any) -> None:
    """A decode task's work, over and over, at its niceness, until ``stop`` is set."""
    os.nice(10)
    retain_freed_memory()
    started.put(os.getpid())
    while not stop.is_set():
        for path in tars:
            _decode_tar((path, "pcm16"))
            if stop.is_set():
                return


def captioner_beside_decoding(
    ckpt_dir: str, tars: list[str], batch: int, repeats: int, calls: int, busy: int
) -> dict[str, Any]:
    """The captioner fed from host PCM as its actor is (pages pinned in place, 1 and 2 calls
    at once), alone and with ``busy`` processes decoding the corpus at nice 10 beside it, as
    a run's decode tasks do, round by round: whether the CPU it shares explains its lower
    rate in a run (2,150-2,260 clips/s in the seventh session's runs, 2,834 alone)."""
    import multiprocessing

    if not torch.cuda.is_available():
        return {}
    pcm = _shared_pcm(batch)
    captioner, unit = _captioner_and_unit(ckpt_dir, pcm)
    captioner(unit)  # warm

    def rate(threads: int) -> float:
        _sync()
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: [captioner(unit) for _ in range(calls)], range(threads)))
        _sync()
        return batch * calls * threads / (time.perf_counter() - start)

    runs: dict[str, list[float]] = {}
    traces: dict[str, list[dict[str, Any]]] = {}
    context = multiprocessing.get_context("spawn")
    for _ in range(repeats):
        for beside in ("alone", "decoding"):
            stop, started, workers = context.Event(), context.Queue(), []
            if beside == "decoding":
                workers = [
                    context.Process(target=_decode_forever, args=(tars[i::busy], stop, started)) for i in range(busy)
                ]
                for w in workers:
                    w.start()
                for _ in workers:  # every worker past its imports, decoding
                    started.get(timeout=120)
            try:
                for threads in (1, 2):
                    # The call trace of the run's actor, to compare phase by phase with a run's.
                    folder = tempfile.mkdtemp(prefix="calls-")
                    call_trace.enable(folder)
                    runs.setdefault(f"actor_host_{beside}_{threads}calls_clips_per_s", []).append(rate(threads))
                    call_trace.enable(None)
                    traces.setdefault(f"actor_host_{beside}_{threads}calls", []).append(
                        summarize_calls(call_trace.read(folder))
                    )
                    shutil.rmtree(folder, ignore_errors=True)
            finally:
                stop.set()
                for w in workers:
                    w.join(timeout=60)
                    if w.is_alive():
                        w.kill()
    for key, summaries in traces.items():
        print("captioner beside decoding", key, "caption calls", json.dumps(summaries), flush=True)
    return {
        "busy_decoders": busy,
        **_medians_and_runs(runs, "captioner beside decoding"),
        **{f"{key}_caption_calls": summaries for key, summaries in traces.items()},
    }


def _medians_and_runs(runs: dict[str, list[float]], label: str) -> dict[str, Any]:
    """Per figure, its median and (``<figure>_runs``) every round's value, printed too."""
    out: dict[str, Any] = {}
    for key, values in runs.items():
        out[key] = round(statistics.median(values), 1)
        out[f"{key}_runs"] = [round(v, 1) for v in values]
        print(label, key, out[key], out[f"{key}_runs"], flush=True)
    return out


def captioner_on_fresh_pages(ckpt_dir: str, batch: int, repeats: int, units: int = 12) -> dict[str, Any]:
    """The captioner fed from host PCM, 2 calls at once (and 3), on one unit's pages again and again
    (as ``host_input`` measures it) against units whose pages this process maps for the
    first time, as a run's actor maps each unit a decode task wrote into Ray's object store:
    whether faulting in and pinning fresh pages explains the captioner's lower rate in a
    run; and fresh units mapped ahead first (``workers.store_pages.map_pages``, timed apart).
    Also the copy alone (``model_waveforms``) on each."""
    if not torch.cuda.is_available():
        return {}
    device = torch.device("cuda")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    rng = np.random.default_rng(3)
    block = (rng.standard_normal((batch, RATE * 10)) * 3000).astype(np.int16).tobytes()
    paths = []
    for i in range(units):  # written through a file descriptor: in memory, mapped by nobody
        fd, path = tempfile.mkstemp(dir=shm, prefix=f"tagcap-fresh-{i}-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(block)
        paths.append(path)
    pcm = _shared_pcm(batch)
    captioner, unit = _captioner_and_unit(ckpt_dir, pcm)
    captioner(unit)  # warm

    def fresh_units() -> list[ModelBatch]:
        return [
            ModelBatch(np.memmap(p, dtype=np.int16, mode="r+", shape=pcm.shape), RATE, unit.tags, unit.mids, unit.keys)
            for p in paths
        ]

    def rate(of: list[ModelBatch], threads: int = 2) -> float:
        _sync()
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(captioner, of))
        _sync()
        return batch * len(of) / (time.perf_counter() - start)

    def copy_ms(of: list[ModelBatch]) -> float:
        times = []
        for u in of:
            _sync()
            start = time.perf_counter()
            model_waveforms(u.waveforms, RATE, MODEL_RATE, MODEL_RATE * 10, device)
            _sync()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def mapped_units() -> list[ModelBatch]:
        """Fresh units, each mapped ahead as the actor's map_input does, timed per unit."""
        units = fresh_units()
        start = time.perf_counter()
        for u in units:
            map_pages(u.waveforms)
        runs.setdefault("map_ahead_ms", []).append((time.perf_counter() - start) * 1e3 / len(units))
        return units

    runs: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            runs.setdefault("mapped_ahead_copy_ms", []).append(copy_ms(mapped_units()))
            runs.setdefault("actor_host_mapped_ahead_2calls_clips_per_s", []).append(rate(mapped_units()))
            runs.setdefault("fresh_pages_copy_ms", []).append(copy_ms(fresh_units()))
            runs.setdefault("same_pages_copy_ms", []).append(copy_ms([unit] * units))
            runs.setdefault("actor_host_fresh_pages_2calls_clips_per_s", []).append(rate(fresh_units()))
            runs.setdefault("actor_host_fresh_pages_3calls_clips_per_s", []).append(rate(fresh_units(), 3))
            runs.setdefault("actor_host_same_pages_2calls_clips_per_s", []).append(rate([unit] * units))
    finally:
        for path in paths:
            os.unlink(path)
    return _medians_and_runs(runs, "captioner on fresh pages")


# -- decode ceiling -------------------------------------------------------------------------
def _decode_pcm(blob: bytes, pcm16: bool = True) -> int:
    """tagcap's decode task per clip: straight to int16 (``pcm16``), or the earlier path
    through float32."""
    clip = decode_clip(blob, SPEC, pcm16=pcm16)
    pcm = to_pcm16(fit_length(clip.samples, SPEC.clip_samples * clip.sample_rate // MODEL_RATE))
    return pcm.shape[0]


def _decode_pcm_soundfile(blob: bytes) -> int:
    """The int16 path with libsndfile for every clip (tagcap's decoder before dr_flac)."""
    samples, rate = _read_soundfile(blob, True, SPEC)
    return to_pcm16(fit_length(samples, SPEC.clip_samples * rate // MODEL_RATE)).shape[0]


def _decode_float_pcm(blob: bytes) -> int:
    return _decode_pcm(blob, pcm16=False)


def _decode_resample(blob: bytes) -> int:
    torch.set_num_threads(1)
    clip = decode_clip(blob, SPEC)
    return fit_length(resample(clip.samples, clip.sample_rate, MODEL_RATE), SPEC.clip_samples).shape[0]


def _decode_tar(job: tuple[str, str]) -> int:
    """Every clip of one tar (read from the page cache by the worker itself) through one of
    the per-clip functions above: the blobs never cross a pipe, whose one feeding process
    capped the figure at about 1 GB/s of FLAC (the ceiling of runs before 2026-12-01's
    fourth session)."""
    path, fn = job
    decode_one = _DECODERS[fn]
    return sum(decode_one(blob) > 0 for _, blob in iter_clips([path]))


_DECODERS = {
    "pcm16": _decode_pcm,
    "pcm16_soundfile": _decode_pcm_soundfile,
    "float_pcm16": _decode_float_pcm,
    "cpu_resample": _decode_resample,
}


def decode(
    tars: list[str], clips: int, repeats: int, workers: int, decoders: tuple[str, ...] = tuple(_DECODERS)
) -> dict[str, Any]:
    """Decode-only ceiling: ``workers`` processes (one per core), each decoding whole tars,
    with the settings a decode task makes (freed memory kept), for at least ``clips`` clips
    and at least four tars per worker (so that the last tars do not leave cores idle long);
    ``decoders``: of ``_DECODERS`` (the ceiling is ``pcm16``'s rate)."""
    per_tar = sum(1 for _ in iter_clips(tars[:1]))
    chosen = tars[: max(4 * workers, -(-clips // per_tar))]
    n = per_tar * len(chosen)
    out: dict[str, Any] = {"decode_clips": n, "decode_workers": workers}
    with ProcessPoolExecutor(workers, initializer=retain_freed_memory) as pool:
        list(pool.map(_decode_tar, [(path, "cpu_resample") for path in chosen[:workers]]))  # warm every worker
        for name in decoders:
            rates = []
            for _ in range(repeats):
                start = time.perf_counter()
                done = sum(pool.map(_decode_tar, [(path, name) for path in chosen]))
                rates.append(done / (time.perf_counter() - start))
            out[f"decode_{name}_clips_per_s"] = round(statistics.median(rates), 1)
            print("decode", name, out[f"decode_{name}_clips_per_s"], flush=True)
    out["decode_ceiling_clips_per_s"] = out["decode_pcm16_clips_per_s"]
    return out


# -- baseline -------------------------------------------------------------------------------
class _TarClips(torch.utils.data.IterableDataset):
    """The loader a user writes first: each worker takes every n-th tar, decodes with
    soundfile and resamples with torchaudio on its CPU (``fast_decoder``: decodes with
    tagcap's FLAC decoder instead, to tell the decoder's share of the difference)."""

    def __init__(self, tars: list[str], fast_decoder: bool = False):
        self.tars = tars
        self.fast_decoder = fast_decoder

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        torch.set_num_threads(1)
        for path in self.tars[wid::n]:
            with tarfile.open(path) as tar:
                for member in tar:
                    if not member.name.endswith(".flac"):
                        continue
                    fh = tar.extractfile(member)
                    assert fh is not None
                    if self.fast_decoder:
                        data, rate = read_mono(fh.read(), pcm16=False)
                    else:
                        data, rate = sf.read(io.BytesIO(fh.read()), dtype="float32")
                    wave = fit_length(resample(data, rate, MODEL_RATE), MODEL_RATE * 10)
                    yield torch.from_numpy(wave), member.name.split(".")[0]


def baseline(
    ckpt_dir: str, tars: list[str], segments: str, workers: int, batch: int, repeats: int, fast_decoder: bool = False
) -> dict[str, Any]:
    from tagcap.schemas.audioset import SegmentTable, parse_segments
    from tagcap.schemas.keys import parse_clip_name

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = load_captioner(ckpt_dir, Storage(), device)
    with open(segments) as fh:
        table = SegmentTable(parse_segments(fh.read())[0])
    # The same model code as tagcap's actor, CUDA graphs included: the comparison is of
    # the pipelines around it.
    graphs = GraphCache() if device.type == "cuda" else None
    rates = []
    for r in range(repeats):
        loader = torch.utils.data.DataLoader(
            _TarClips(tars, fast_decoder), batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda"
        )
        n = 0
        captions = []
        start = time.perf_counter()
        for wave, keys in loader:
            ids = [parse_clip_name(k).ytid for k in keys]
            found = table.lookup(ids)
            tag_idx = [ckpt.tags.indices(found[y][0].mids) for y in ids]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                gen = ckpt.model.generate(
                    wave.to(device, non_blocking=True), tag_idx, beam_size=3, max_words=20, graphs=graphs
                )
            captions.extend(ckpt.vocab.decode(h[0]) for h in gen.tokens)
            n += len(keys)
        rates.append(n / (time.perf_counter() - start))
        print(f"baseline{'_fast_decoder' * fast_decoder} run {r}: {n} clips, {rates[-1]:.0f} clips/s", flush=True)
    name = "baseline_fast_decoder" if fast_decoder else "baseline"
    return {f"{name}_clips_per_s": round(statistics.median(rates), 1), f"{name}_runs": [round(x, 1) for x in rates]}


# -- end to end -----------------------------------------------------------------------------
def run_e2e(
    ckpt_dir: str,
    corpus: Any,
    work: str,
    repeats: int,
    batch: int,
    actors: int,
    gpus_per_actor: float,
    tag: str,
    extra: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
    instrument: bool = True,
) -> dict[str, Any]:
    """``repeats`` runs of ``tagcap caption`` over ``corpus``, each in a fresh process.
    ``instrument``: with Ray's timeline and the captioner's call trace (the steady state,
    the calls' phases); they cost the run's Ray stop about 2 s, only the dump of which is
    taken out of the rate. Without (``--plain``): the run as a user runs it, its rate the
    wall clock's."""
    rates: list[float] = []
    dumps: list[float] = []
    phases: list[dict[str, float]] = []
    timelines: list[dict[str, Any]] = []
    peaks: list[dict[str, int]] = []
    cores: list[dict[str, float]] = []
    processes: list[dict[str, int]] = []
    stages: list[dict[str, float]] = []
    calls: list[dict[str, Any]] = []
    for r in range(repeats):
        out = os.path.join(work, f"out-{tag}-{r}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "tagcap",
            "caption",
            "--input",
            corpus.pattern,
            "--segments",
            corpus.segments,
            "--labels",
            corpus.labels,
            "--output",
            out,
            "--captioner",
            f"blat:{ckpt_dir}",
            "--batch-size",
            str(batch),
            "--actors",
            str(actors),
            "--no-progress",
        ]
        cmd += extra  # after --actors above: a lever's own count wins, its actors sharing the GPUs
        if "--actors" in extra:
            gpus_per_actor = gpus_per_actor * actors / int(extra[extra.index("--actors") + 1])
        if torch.cuda.is_available():
            cmd += ["--gpus-per-actor", str(gpus_per_actor)]
        timeline = os.path.join(work, f"timeline-{tag}-{r}.json")
        trace = os.path.join(work, f"calls-{tag}-{r}")
        shutil.rmtree(trace, ignore_errors=True)
        if os.path.exists(timeline):
            os.remove(timeline)
        if instrument:
            os.makedirs(trace)
            cmd += ["--ray-timeline", timeline, "--call-trace", trace]
        env = {**os.environ, **(extra_env or {})}
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        with TreeUsage(proc.pid) as usage:
            _stdout, stderr = proc.communicate()
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"tagcap caption failed ({proc.returncode}): {stderr[-3000:]}")
        stats = []
        for name in os.listdir(out):
            if name.endswith(".stats.json"):
                with open(os.path.join(out, name)) as fh:
                    stats.append(json.load(fh))
        written = sum(s["written"] for s in stats)
        if written != corpus.clips:
            raise RuntimeError(f"{written} of {corpus.clips} clips written")
        stages.append(_stage_medians(stats))
        print(f"e2e {tag} run {r}: median seconds per unit by stage {json.dumps(stages[-1])}", flush=True)
        # The timeline this benchmark asks for is its own instrumentation, not the run's work.
        dump = re.search(r"Ray timeline written in ([\d.]+) s", stderr)
        dumps.append(float(dump.group(1)) if dump else 0.0)
        phases.append(
            {k: float(v) for k, v in re.findall(r"(plan|Ray start|units|Ray stop|finish) ([\d.]+) s", stderr)}
        )
        rates.append(corpus.clips / (wall - dumps[-1]))
        timelines.append(summarize_timeline(timeline) if os.path.exists(timeline) else {})
        print(f"e2e {tag} run {r}: timeline {json.dumps(timelines[-1])}", flush=True)
        peaks.append(usage.peak)
        # Cores each role kept busy over the run's wall-clock: where the CPU went.
        cores.append({k: round(v / wall, 2) for k, v in sorted(usage.cpu_s.items())})
        cores[-1]["machine"] = round(usage.machine_busy_cores, 2)
        processes.append(usage.processes)
        print(f"e2e {tag} run {r}: busy cores by role {json.dumps(cores[-1])}", flush=True)
        print(f"e2e {tag} run {r}: processes by role {json.dumps(processes[-1])}", flush=True)
        print(
            f"e2e {tag} run {r}: {corpus.clips} clips in {wall:.1f} s ({dumps[-1]:.1f} s of it the timeline dump) "
            f"= {rates[-1]:.0f} clips/s; {phases[-1]}",
            flush=True,
        )
        print(f"e2e {tag} run {r}: {_actor_start_lines()}", flush=True)
        calls.append(summarize_calls(call_trace.read(trace)) if instrument else {})
        print(f"e2e {tag} run {r}: caption calls {json.dumps(calls[-1])}", flush=True)
        print(stderr[-1500:], flush=True)
        shutil.rmtree(out, ignore_errors=True)
    peak = {role: max(p.get(role, 0) for p in peaks) for role in set().union(*peaks)}
    return {
        f"e2e_{tag}_clips_per_s": round(statistics.median(rates), 1),
        f"e2e_{tag}_runs": [round(x, 1) for x in rates],
        f"e2e_{tag}_timeline_dump_s": dumps,
        f"e2e_{tag}_phases_s": phases,
        f"e2e_{tag}_stage_seconds": stages,
        f"e2e_{tag}_caption_calls": calls,
        # Clips over the span from the first task's start to the last task's end: the run
        # without process start, Ray start and model load, with its fill and drain.
        f"e2e_{tag}_task_span_clips_per_s": round(
            statistics.median(corpus.clips / t["span_s"] for t in timelines if t.get("span_s")), 1
        )
        if any(t.get("span_s") for t in timelines)
        else None,
        # Once the pipeline flows (see timeline._steady_state): what a long job approaches.
        f"e2e_{tag}_steady_clips_per_s": round(
            statistics.median(
                t["steady_units_per_s"] * corpus.clips / corpus.shards for t in timelines if t.get("steady_units_per_s")
            ),
            1,
        )
        if any(t.get("steady_units_per_s") for t in timelines)
        else None,
        f"e2e_{tag}_timeline": timelines[0],
        f"e2e_{tag}_busy_cores_by_role": cores,
        f"e2e_{tag}_processes_by_role": processes,
        f"e2e_{tag}_peak_private_mb": {k: round(v / 2**20, 1) for k, v in sorted(peak.items())},
        f"e2e_{tag}_clips": corpus.clips,
        f"e2e_{tag}_flac_decoder": _flac_decoder({**os.environ, **(extra_env or {})}),
    }


def _flac_decoder(env: dict[str, str]) -> str:
    """Where the run's processes import dr_flac (miniaudio) from: which build decoded."""
    probe = "import miniaudio; print(miniaudio.__file__)"
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd="/", capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip()[-200:]


def _stage_medians(stats: list[dict[str, Any]]) -> dict[str, float]:
    """Per stage of a unit (ShardStats.stage_seconds), the median over the run's units."""
    medians = median_stage_seconds(ShardStats.from_dict(s) for s in stats)
    return {stage: round(seconds, 3) for stage, seconds in medians.items()}


def _actor_start_lines() -> list[str]:
    """The captioner actors' own account of their start (in the embedded Ray's worker
    logs: tagcap's driver does not forward worker output)."""
    logs = "/tmp/ray/session_latest/logs"
    lines = []
    for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
        if name.endswith(".err"):
            with open(os.path.join(logs, name), errors="replace") as fh:
                lines += [line.strip() for line in fh if "tagcap: captioner" in line]
    return lines


def disk_write(work: str, gb: int = 4) -> dict[str, Any]:
    """Sequential write with fsync, as tagcap publishes shards: the output disk's ceiling."""
    path = os.path.join(work, "disk-probe")
    block = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8).tobytes()
    start = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(gb * 16):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - start
    os.remove(path)
    print(f"disk write {gb / seconds:.2f} GB/s", flush=True)
    return {"disk_write_gb_per_s": round(gb * (1 << 30) / 1e9 / seconds, 3)}


COLD_INPUT = "cold_input"
# The default run without Ray's timeline and the call trace (see run_e2e): a user's run.
PLAIN = "plain"

# Levers of the end-to-end run, each the default with one thing changed (flags, and the
# environment only for Ray's own settings and the base_code lever): the ablations that
# reproduce the figures of docs/design/. Levers tried and not adopted are listed, with their
# figures, in docs/performance-history.md.
LEVERS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "full": ((), {}),
    "no_writeback": (("--tuning", "writeback_mb=0"), {}),
    "pageable_h2d": (("--tuning", "h2d_staging=pageable"), {}),
    "half_store": (("--tuning", "store_fraction=0.5"), {}),
    "no_retain": (("--tuning", "retain_freed_memory=false"), {}),
    # The GPU actor and each writer reserving CPUs (fewer decode slots).
    "old_resources": (("--cpus-per-actor", "1", "--write-cpus", "0.25"), {}),
    # One fixed in-flight limit, units being written counted against it.
    "no_start_allowance": (("--max-inflight", "34"), {}),
    "cuda_auto_sync": (("--tuning", "cuda_sync=auto"), {}),
    "head_services": (("--tuning", "ray_head_services=true"), {}),
    "no_map_ahead": (("--tuning", "map_ahead=false"), {}),
    "nice0": (("--decode-niceness", "0"), {}),
    # Ray's own idle-worker limit (one per CPU) in place of tagcap's CPUs + 8.
    "ray_idle": (RAY_IDLE_FLAGS, {}),
    # No worker processes started for the driver when it connects (Ray starts one per CPU
    # and ray.init waits for them): workers start as tasks and actors ask for them.
    "no_prestart": ((), {"RAY_prestart_worker_first_driver": "0"}),
    # The decode stage as a Ray task per unit (the default until decode actors).
    "decode_tasks": (("--tuning", "decode_actors=false"), {}),
    # Two captioner actors sharing the one GPU, each with its own process (its own GIL and
    # CUDA graphs), in place of one actor's two call threads.
    "2actors": (("--actors", "2"), {}),
    # Decode actors of 0.8 CPU each (20 on 16 cores, in place of 16): where decoding limits
    # and its actors leave cores idle while they read or hand a unit over.
    "decode20": (("--decode-cpus", "0.8"), {}),
    # Three calls at once in the one captioner actor, in place of the captioner's two.
    "threads3": (("--actor-threads", "3"), {}),
    # The writer pool: a writer per 4 CPUs (4 on 16), or 8 writes at once in each.
    "writers4": (("--tuning", "cpus_per_writer=4"), {}),
    "writes8": (("--tuning", "writes_per_writer=8"), {}),
    # The input read from the disk, not the page cache (each run's input evicted from it
    # first): what a corpus larger than memory sees. The same run otherwise.
    COLD_INPUT: ((), {}),
    PLAIN: ((), {}),
    # dr_flac (miniaudio) built from source for a CPU level, ahead of PyPI's SSE2-only wheel
    # on every process's path (gpu_suite.sh installs .whl/flac-<level>/ there).
    "flac_v2": ((), site_first_env("/tmp/site-flac-v2")),
    "flac_v3": ((), site_first_env("/tmp/site-flac-v3")),
    # The code of an earlier commit, the same run otherwise: a tagcap installed under
    # BASE_SITE (gpu_suite.sh puts .whl/base/tagcap-*.whl there) ahead of this one on the
    # path of the run and of every Ray process it starts.
    "base_code": ((), base_code_env()),
}


def _medians_of_runs(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per lever, the medians of its runs' rates with every run's value beside them, the
    first run's timeline and every run's phases."""
    figures: dict[str, Any] = {}
    for tag, results in runs.items():
        for kind in ("clips_per_s", "task_span_clips_per_s", "steady_clips_per_s"):
            values = [r[f"e2e_{tag}_{kind}"] for r in results if r.get(f"e2e_{tag}_{kind}")]
            figures[f"e2e_{tag}_{kind}"] = round(statistics.median(values), 1) if values else None
            figures[f"e2e_{tag}_{kind}_runs"] = values
        figures[f"e2e_{tag}_timeline"] = results[0][f"e2e_{tag}_timeline"]
        figures[f"e2e_{tag}_phases_s"] = [p for r in results for p in r[f"e2e_{tag}_phases_s"]]
        for key in ("busy_cores_by_role", "processes_by_role", "stage_seconds", "caption_calls"):
            if f"e2e_{tag}_{key}" in results[0]:
                figures[f"e2e_{tag}_{key}"] = [c for r in results for c in r[f"e2e_{tag}_{key}"]]
        figures[f"e2e_{tag}_flac_decoder"] = results[0].get(f"e2e_{tag}_flac_decoder")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "what",
        nargs="+",
        choices=[
            *(
                "corpus",
                "ceiling",
                "host_input",
                "host_input_busy",
                "host_input_fresh",
                "decode",
                "baseline",
                "baseline_fast_decoder",
                "disk",
                "memory",
                "all",
            ),
            *(
                "e2e",
                "e2e_full",
                "e2e_none",
                "e2e_inflight",
                "e2e_scaling",
                "e2e_levers",
                "e2e_long",
            ),
        ],
    )
    ap.add_argument("--work", default="/tmp/tagcap-bench")
    ap.add_argument("--clips", type=int, default=20480)
    ap.add_argument("--clips-per-shard", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", default="caption")
    ap.add_argument("--inflight", type=int, help="units in flight for e2e_inflight (default 2 x (CPUs + 1))")
    ap.add_argument("--levers", default="full,no_writeback,pageable_h2d", help=f"for e2e_levers: of {sorted(LEVERS)}")
    ap.add_argument("--long-times", type=int, default=3, help="for e2e_long: the corpus this many times over")
    ap.add_argument("--long-levers", default="full", help="for e2e_long: of the levers, each run once a round")
    ap.add_argument("--long-repeats", type=int, default=1, help="for e2e_long: rounds of its levers")
    ap.add_argument("--decoders", default=",".join(_DECODERS), help="for decode: which decoders, comma-separated")
    ap.add_argument("--tiny", action="store_true", help="a tiny model: to check the script on a CPU")
    ap.add_argument(
        "--plain", action="store_true", help="end-to-end runs without Ray's timeline and the call trace, as a user runs"
    )
    args = ap.parse_args()
    e2e = functools.partial(run_e2e, instrument=not args.plain)
    uses_base = "base_code" in {*args.levers.split(","), *args.long_levers.split(",")}
    if uses_base and not os.path.isdir(os.path.join(BASE_SITE, "tagcap")):
        ap.error(f"the base_code lever needs an earlier tagcap installed under {BASE_SITE}")
    what = set(args.what)
    if "all" in what:
        what = {"ceiling", "decode", "baseline", "e2e", "memory"}
    cpus = os.cpu_count() or 1
    shards = max(1, args.clips // args.clips_per_shard)
    corpus = make_corpus(os.path.join(args.work, "corpus"), shards, args.clips_per_shard)
    ckpt = blat_checkpoint(os.path.join(args.work, "blat-tiny" if args.tiny else "blat"), tiny=args.tiny)
    figures: dict[str, Any] = {
        "clips": corpus.clips,
        "input_bytes": corpus.bytes,
        "batch": args.batch,
        "model": "tiny" if args.tiny else "blat",
        "e2e_instrumented": not args.plain,
    }
    if uses_base:
        figures["base_code_commit"] = base_code_commit()
    print(machine(), f"corpus {corpus.clips} clips, {corpus.bytes / 1e9:.2f} GB", flush=True)
    if "ceiling" in what:
        figures.update(ceiling(ckpt, sorted({128, args.batch, 2 * args.batch}), args.repeats, 4))
    if "host_input" in what:
        figures.update(host_input(ckpt, args.batch, args.repeats, 8))
    if "host_input_busy" in what:
        figures.update(captioner_beside_decoding(ckpt, corpus.tars, args.batch, args.repeats, 8, cpus))
    if "host_input_fresh" in what:
        figures.update(captioner_on_fresh_pages(ckpt, args.batch, args.repeats))
    if "decode" in what:
        figures.update(
            decode(corpus.tars, min(corpus.clips, 4096), args.repeats, cpus, tuple(args.decoders.split(",")))
        )
    if "e2e_inflight" in what:
        # Lever: more units in flight (decoding goes on while the captioner actor starts).
        # Run before the default: the first run on a fresh machine is the slowest, so this
        # order favours the default.
        inflight = ("--max-inflight", str(args.inflight or 2 * (cpus + 1)))
        figures.update(e2e(ckpt, corpus, args.work, 1, args.batch, 1, 1.0, "inflight", inflight))
        figures["e2e_inflight_units"] = int(inflight[1])
    if "e2e" in what or "e2e_full" in what:
        figures.update(e2e(ckpt, corpus, args.work, args.repeats, args.batch, 1, 1.0, "full"))
        figures["caption_e2e_clips_per_s"] = figures["e2e_full_clips_per_s"]
    if "e2e" in what:
        # Lever: one call at a time in the captioner actor (no copy/compute overlap).
        figures.update(e2e(ckpt, corpus, args.work, 1, args.batch, 1, 1.0, "one_thread", ("--actor-threads", "1")))
        if torch.cuda.is_available():  # issue 5 on one GPU: two actors sharing it
            figures.update(e2e(ckpt, corpus, args.work, 1, args.batch, 2, 0.5, "2actors_half_gpu"))
    if "e2e_levers" in what:
        # This session's levers, each run off alone against the default, interleaved round
        # by round so that a drift of the machine spreads over all of them.
        chosen = {tag: LEVERS[tag] for tag in args.levers.split(",")}
        runs: dict[str, list[dict[str, Any]]] = {tag: [] for tag in chosen}
        # The first run on a fresh machine is the slowest (cold caches): one run to discard.
        figures.update(e2e(ckpt, corpus, args.work, 1, args.batch, 1, 1.0, "warmup"))
        for _ in range(args.repeats):
            for tag, (flags, env) in chosen.items():
                if tag == COLD_INPUT:
                    evict_from_page_cache(corpus.tars)
                plain = args.plain or tag == PLAIN
                runs[tag].append(
                    e2e(ckpt, corpus, args.work, 1, args.batch, 1, 1.0, tag, flags, env, instrument=not plain)
                )
        figures.update(_medians_of_runs(runs))
        figures["caption_e2e_clips_per_s"] = figures["e2e_full_clips_per_s"]
    if "e2e_long" in what:
        # The same run over the corpus several times over: a start of 7-9 s (Ray, the
        # captioner) spread over more clips, closer to what a corpus-sized job sees.
        # With --long-levers, each lever on it too (the default first), round by round
        # --long-repeats times.
        long = repeat_corpus(corpus, os.path.join(args.work, f"corpus-x{args.long_times}"), args.long_times)
        long_runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.long_repeats):
            for lever in args.long_levers.split(","):
                flags, env = LEVERS[lever]
                tag = "long" if lever == "full" else f"long_{lever}"
                if lever == COLD_INPUT:
                    evict_from_page_cache(long.tars)
                plain = args.plain or lever == PLAIN
                run = e2e(ckpt, long, args.work, 1, args.batch, 1, 1.0, tag, flags, env, instrument=not plain)
                long_runs.setdefault(tag, []).append(run)
        figures.update(_medians_of_runs(long_runs))
        figures["caption_e2e_long_clips_per_s"] = figures.get("e2e_long_clips_per_s")
    if "e2e_scaling" in what:
        # Issue 5: one captioner actor per GPU, on 1 and on every GPU, the same input.
        gpus = max(1, torch.cuda.device_count())
        figures["scaling_gpus"] = gpus
        figures.update(e2e(ckpt, corpus, args.work, args.repeats, args.batch, 1, 1.0, "gpus1"))
        figures.update(e2e(ckpt, corpus, args.work, args.repeats, args.batch, gpus, 1.0, f"gpus{gpus}"))
        for kind in ("clips_per_s", "task_span_clips_per_s"):
            one, many = figures[f"e2e_gpus1_{kind}"], figures[f"e2e_gpus{gpus}_{kind}"]
            if one and many:
                figures[f"scaling_efficiency_{kind}"] = round(many / (gpus * one), 3)
    if "e2e_none" in what:
        # The same run storing no audio: the captioning pipeline without the output disk.
        figures.update(
            e2e(ckpt, corpus, args.work, args.repeats, args.batch, 1, 1.0, "audio_none", ("--audio", "none"))
        )
    if "disk" in what:
        figures.update(disk_write(args.work))
    if "memory" in what:
        small = make_corpus(os.path.join(args.work, "corpus-tenth"), max(1, shards // 10), args.clips_per_shard)
        figures.update(e2e(ckpt, small, args.work, 1, args.batch, 1, 1.0, "tenth"))
        big, tenth = figures.get("e2e_full_peak_private_mb", {}), figures["e2e_tenth_peak_private_mb"]
        growth = {k: round(big[k] / tenth[k], 3) for k in big if k in tenth and tenth[k] > 0}
        figures["peak_rss_growth_by_role_10x"] = growth
        figures["peak_rss_growth_10x"] = max(growth.values()) if growth else None
    if "baseline" in what:
        figures.update(baseline(ckpt, corpus.tars, corpus.segments, cpus, args.batch, max(1, args.repeats - 1)))
    if "baseline_fast_decoder" in what:
        figures.update(baseline(ckpt, corpus.tars, corpus.segments, cpus, args.batch, 1, fast_decoder=True))
    if "caption_e2e_clips_per_s" in figures and "baseline_clips_per_s" in figures:
        figures["speedup_over_baseline"] = round(
            figures["caption_e2e_clips_per_s"] / figures["baseline_clips_per_s"], 2
        )
        # tagcap without its start (Ray, model load) against the baseline's wall-clock rate
        # (a DataLoader starts decoding at once; its start costs little).
        if figures.get("e2e_full_task_span_clips_per_s"):
            figures["speedup_over_baseline_task_span"] = round(
                figures["e2e_full_task_span_clips_per_s"] / figures["baseline_clips_per_s"], 2
            )
    write_results(args.results, args.name, figures)
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, (list, dict))}, indent=1))


if __name__ == "__main__":
    main()
