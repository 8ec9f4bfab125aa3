"""Shared parts of the benchmark scripts: the machine's description, a realistic input
corpus, a BLAT-size captioner checkpoint, a process-tree memory sampler, and results JSON.

Every script writes one JSON file per run under ``benchmarks/results/`` (or ``--results``)
holding ``gpu``, ``cpus``, ``date`` and its figures; docs/performance.md quotes them.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

from tagcap.schemas.keys import make_key
from tagcap.schemas.work import DecodeSpec
from tagcap.workers.audio import encode_flac
from tagcap.workers.models.configs import CaptionerConfig, EncoderConfig
from tagcap.workers.models.vocab import TagVocabulary, Vocabulary
from tagcap.workers.storage import Storage

RATE = 48000
SECONDS = 10.0
N_CLASSES = 527  # AudioSet's
MODEL_RATE = 32000  # the BLAT captioner's
# What a benchmark's decode tasks are told: the captioner's 10 s at its rate, audio kept as
# it came, limits wide enough for any corpus here.
DECODE_SPEC = DecodeSpec(MODEL_RATE, MODEL_RATE * 10, "copy", 0.1, 600.0, 4000, 384000, 1 << 20)


# An earlier tagcap, installed here to run beside the current one (the base_code levers;
# gpu_suite.sh installs .whl/base/ here and its commit as BASE_COMMIT).
BASE_SITE = "/tmp/site-base"


# tagcap caption's flags for Ray's own idle-worker limit, one per CPU, in place of tagcap's
# CPUs + 8 (tagcap's default on 2026-12-06 only; caption_bench's lever and worker_churn's
# setting ray_idle).
RAY_IDLE_FLAGS = ("--tuning", f"idle_workers={os.cpu_count() or 1}")


def site_first_env(site: str) -> dict[str, str]:
    """The environment that makes a process and every Ray process it starts import what
    ``site`` holds ahead of the rest of its path."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)}


def base_code_env() -> dict[str, str]:
    """The environment that makes a process and every Ray process it starts import the
    tagcap under BASE_SITE instead of the current one."""
    return site_first_env(BASE_SITE)


def base_code_commit() -> str | None:
    """The commit of the tagcap under BASE_SITE, where recorded."""
    try:
        with open(os.path.join(BASE_SITE, "BASE_COMMIT")) as fh:
            return fh.read().strip()
    except OSError:
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory, from the kernel's VmHWM. (getrusage's maxrss
    is no use in a child process: Linux carries the parent's peak over fork and exec.)"""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def run_child(code: str, args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], str]:
    """``python -c code args`` in a fresh process with ``env`` over this one's: the JSON
    object its stdout ends with, and its stderr. It runs in the temporary folder: ``-c``
    puts the working folder first on the path, and from the checkout's root that imports
    the checkout's tagcap whatever ``env`` says (the base_code setting would measure this
    code)."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=600,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the child failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def interleave_children(
    code: str, args: list[str], settings: dict[str, dict[str, str]], repeats: int
) -> dict[str, list[dict[str, Any]]]:
    """``run_child(code, args, env)`` for each setting's environment, round by round (so a
    drift of the machine spreads over every setting): per setting, each round's JSON."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
    for _ in range(repeats):
        for name, env in settings.items():
            runs[name].append(run_child(code, args, env)[0])
            print(f"{name}: {runs[name][-1]}", flush=True)
    return runs


def medians_by_setting(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per setting and numeric figure of its runs: ``<setting>_<figure>``, the median, and
    ``<setting>_<figure>_runs``, every run's value."""
    figures: dict[str, Any] = {}
    for name, results in runs.items():
        for key, value in results[0].items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            values = [r[key] for r in results if key in r]
            figures[f"{name}_{key}"] = round(statistics.median(values), 3)
            figures[f"{name}_{key}_runs"] = [round(v, 3) for v in values]
    return figures


def machine() -> dict[str, Any]:
    """The machine of a result. Asks ``nvidia-smi`` for the GPU, so that a benchmark whose
    own process keeps off torch (actor_start_bench's evicted settings) stays so."""
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        gpu = "none"
    return {
        "gpu": gpu.strip(),
        "cpus": os.cpu_count(),
        "cpu_model": platform.processor() or platform.machine(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": importlib.metadata.version("torch"),
    }


def write_results(folder: str, name: str, figures: dict[str, Any]) -> str:
    os.makedirs(folder, exist_ok=True)
    record = {**machine(), **figures}
    stamp = record["date"].replace(":", "").replace("-", "")
    path = os.path.join(folder, f"{name}-{stamp}.json")
    with open(path, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    print(f"wrote {path}")
    return path


# -- corpus -------------------------------------------------------------------------------
def _clip(seed: int) -> bytes:
    """10 s of 48 kHz audio with the texture of a real recording: a few tones with vibrato
    and on/off gating over coloured noise, as 16-bit FLAC (about 0.5 MB, as AudioSet's)."""
    rng = np.random.default_rng(seed)
    n = int(RATE * SECONDS)
    t = np.arange(n) / RATE
    x = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        f = rng.uniform(100, 4000)
        gate = (np.sin(2 * np.pi * rng.uniform(0.2, 3) * t) > rng.uniform(-0.5, 0.5)).astype(float)
        x += rng.uniform(0.05, 0.3) * gate * np.sin(2 * np.pi * f * t + 3 * np.sin(2 * np.pi * 5 * t))
    noise = np.convolve(rng.standard_normal(n), np.ones(16) / 16, "same")
    x += rng.uniform(0.02, 0.3) * noise
    return encode_flac((x / max(1.0, np.abs(x).max())).astype(np.float32), RATE)


@dataclass
class Corpus:
    pattern: str
    segments: str
    labels: str
    clips: int
    shards: int
    bytes: int = 0
    tars: list[str] = field(default_factory=list)


def make_corpus(root: str, shards: int, clips_per_shard: int, unique_clips: int = 512, seed: int = 0) -> Corpus:
    """Input tars shaped like AudioSet's (``Y<ytid>_<ms>.flac`` + json), a segment CSV with
    1-4 of 527 labels per clip and a ``class_labels_indices.csv``. ``unique_clips`` distinct
    recordings are encoded once and reused under fresh YouTube ids, so a 20,000-clip
    corpus takes seconds to write. Reuses what an earlier call wrote."""
    os.makedirs(os.path.join(root, "shards"), exist_ok=True)
    labels = os.path.join(root, "class_labels_indices.csv")
    segments = os.path.join(root, "segments.csv")
    pattern = os.path.join(root, "shards", f"{{000000..{shards - 1:06d}}}.tar")
    tars = [os.path.join(root, "shards", f"{i:06d}.tar") for i in range(shards)]
    done = os.path.join(root, f"DONE-{shards}x{clips_per_shard}")
    if os.path.exists(done):
        return Corpus(
            pattern, segments, labels, shards * clips_per_shard, shards, sum(map(os.path.getsize, tars)), tars
        )
    with ProcessPoolExecutor() as pool:
        audio = list(pool.map(_clip, range(seed, seed + unique_clips), chunksize=8))
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    # Label frequencies follow a long tail, as AudioSet's do.
    weights = 1.0 / np.arange(1, N_CLASSES + 1) ** 0.8
    weights /= weights.sum()
    rows = []
    k = 0
    for shard in range(shards):
        with tarfile.open(tars[shard], "w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(clips_per_shard):
                ytid = "".join(rng.choice(alphabet, 11))
                start_ms = int(rng.integers(0, 300)) * 1000
                key = make_key(ytid, start_ms)
                blob = audio[k % unique_clips]
                k += 1
                meta = json.dumps({"ytid": ytid, "start_seconds": start_ms / 1000}).encode()
                for name, data in ((f"{key}.flac", blob), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
                picks = rng.choice(N_CLASSES, size=int(rng.integers(1, 5)), replace=False, p=weights)
                mids = ",".join(f"/m/bench{i:03d}" for i in sorted(picks))
                rows.append(f'{ytid},{start_ms / 1000:.3f},{start_ms / 1000 + SECONDS:.3f},"{mids}"\n')
    with open(segments, "w") as fh:
        fh.write("YTID,start_seconds,end_seconds,positive_labels\n")
        fh.writelines(rows)
    with open(labels, "w") as fh:
        fh.write("index,mid,display_name\n")
        fh.writelines(f'{i},/m/bench{i:03d},"Sound class {i}"\n' for i in range(N_CLASSES))
    open(done, "w").close()
    return Corpus(pattern, segments, labels, shards * clips_per_shard, shards, sum(map(os.path.getsize, tars)), tars)


def repeat_corpus(corpus: Corpus, root: str, times: int) -> Corpus:
    """``corpus`` ``times`` over as new tar names (hard links, so no more disk): a longer
    run over the same audio, its segment CSV and labels. Each tar's clips keep their keys,
    so a key repeats across shards (tagcap checks keys for repeats within a shard)."""
    folder = os.path.join(root, "shards")
    os.makedirs(folder, exist_ok=True)
    tars = []
    for i in range(corpus.shards * times):
        path = os.path.join(folder, f"{i:06d}.tar")
        if not os.path.exists(path):
            os.link(corpus.tars[i % corpus.shards], path)
        tars.append(path)
    pattern = os.path.join(folder, f"{{000000..{len(tars) - 1:06d}}}.tar")
    return Corpus(pattern, corpus.segments, corpus.labels, corpus.clips * times, len(tars), corpus.bytes * times, tars)


def evict_from_page_cache(paths: list[str]) -> None:
    """Drops the files' pages from the kernel's page cache (written back first), so the next
    read comes from the disk, as a corpus larger than memory is read. No root needed."""
    for path in dict.fromkeys(os.path.realpath(p) for p in paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def torch_files() -> list[str]:
    """The files of the installed torch and of the ``nvidia`` wheels (CUDA's libraries):
    what a GPU process reads when it imports torch and makes its CUDA context (evicted, a
    start is as on a freshly booted machine). Found without importing torch: pages a live
    process maps cannot be evicted."""
    files: list[str] = []
    for package in ("torch", "nvidia"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for root, _dirs, names in os.walk(folder):
                files += [os.path.join(root, name) for name in names]
    return files


def iter_clips(tars: list[str]) -> Iterator[tuple[str, bytes]]:
    for path in tars:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".flac"):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    yield member.name, fh.read()


# -- model --------------------------------------------------------------------------------
WORDS = [
    "a",
    "an",
    "the",
    "dog",
    "cat",
    "man",
    "woman",
    "child",
    "car",
    "engine",
    "bird",
    "water",
    "wind",
    "rain",
    "music",
    "guitar",
    "piano",
    "drum",
    "speech",
    "voice",
    "talks",
    "sings",
    "barks",
    "meows",
    "chirps",
    "runs",
    "idles",
    "passes",
    "plays",
    "in",
    "on",
    "with",
    "and",
    "loud",
    "soft",
    "distant",
    "close",
    "background",
    "foreground",
    "while",
    "then",
    "street",
    "room",
    "park",
    "kitchen",
]


def blat_checkpoint(folder: str, seed: int = 0, tiny: bool = False) -> str:
    """A BLAT-size captioner (full CNN14 encoder, 2-layer d=256 decoder) with random
    weights: the speed of a model does not depend on what it learned. Reused if present."""
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return folder
    import torch

    from tagcap.workers.models.captioner import TagGuidedCaptioner
    from tagcap.workers.models.checkpoint import save_captioner

    torch.manual_seed(seed)
    # About the size of BLAT's vocabulary (AudioCaps + Clotho words seen twice or more).
    vocab = Vocabulary.build([" ".join(WORDS + [f"word{i}" for i in range(5000 - len(WORDS))])])
    tags = TagVocabulary([f"/m/bench{i:03d}" for i in range(N_CLASSES)], [f"Sound class {i}" for i in range(N_CLASSES)])
    cfg = CaptionerConfig(vocab_size=len(vocab), n_tags=len(tags), tag_fusion="add")
    if tiny:
        cfg = CaptionerConfig(
            vocab_size=len(vocab), n_tags=len(tags), encoder=EncoderConfig(channels=(8, 16, 32)), d_model=64, d_ff=128
        )
    model = TagGuidedCaptioner(cfg).eval()
    save_captioner(folder, model, vocab, tags, Storage())
    return folder


# -- memory -------------------------------------------------------------------------------
def process_role(proc: psutil.Process) -> str:
    try:
        argv = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    # By the program first: the raylet's arguments carry the worker command line
    # (default_worker.py), so a match anywhere took it for a worker (runs before
    # 2026-12-01's fifth session's count13 list the raylet as "ray_worker").
    program = os.path.basename(argv[0]) if argv else ""
    if program in ("raylet", "gcs_server"):
        return "raylet" if program == "raylet" else "gcs"
    cmd = " ".join(argv)
    for needle, role in (
        # Ray retitles its workers "ray::<task>" while they run one and "ray::IDLE" between.
        ("ray::IDLE", "idle_worker"),
        ("CaptionActor", "captioner_actor"),
        ("_prepare", "decode_worker"),
        ("DecodeActor", "decode_worker"),
        ("ShardWriter", "write_worker"),
        ("_write", "write_worker"),  # a write task (before 2026-12-01's ninth session)
        ("default_worker.py", "ray_worker"),
        ("dashboard", "ray_service"),
        ("DashboardAgent", "ray_service"),
        ("RuntimeEnvAgent", "ray_service"),
        ("runtime_env", "ray_service"),
        ("log_monitor", "ray_service"),
        ("tagcap", "driver"),
    ):
        if needle in cmd:
            return role
    return "other"


def _busy_seconds(times: Any) -> float:
    """All CPUs' time so far, less what they spent idle or waiting on I/O."""
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class TreeUsage:
    """Samples a process and all its descendants every ``every_s``: the peak private
    resident memory per role (RSS less shared pages, so Ray's shared object store is not
    counted in every process that maps it), and the CPU seconds per role.

    Roles follow the work: a Ray worker's CPU between two samples counts to the task its
    title names at the second (Ray retitles a worker per task), or, while it is idle, to
    the task it last ran; its memory peak counts to the first work it was seen doing (a
    worker sampled idle between two decode tasks is a decode worker). CPU a process spent
    after its last sample is not seen: short-lived processes are undercounted."""

    def __init__(self, pid: int, every_s: float = 0.25):
        self.pid, self.every_s = pid, every_s
        self._peak_by_pid: dict[int, int] = {}
        self._role_by_pid: dict[int, str] = {}
        self._cpu_by_pid: dict[int, float] = {}
        self._last_work_by_pid: dict[int, str] = {}
        self.cpu_s: dict[str, float] = {}
        self.machine_busy_cores = 0.0  # every process's CPU, over the sampled span
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def processes(self) -> dict[str, int]:
        """Distinct processes seen per role: Ray workers started (and killed) during a run
        show here as more than the slots that were busy."""
        return dict(sorted(Counter(self._role_by_pid.values()).items()))

    @property
    def peak(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pid, private in self._peak_by_pid.items():
            role = self._role_by_pid.get(pid, "gone")
            out[role] = max(out.get(role, 0), private)
        return out

    def __enter__(self) -> TreeUsage:
        self._started = time.perf_counter()
        self._machine_start = psutil.cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        busy = _busy_seconds(psutil.cpu_times()) - _busy_seconds(self._machine_start)
        self.machine_busy_cores = busy / max(1e-9, time.perf_counter() - self._started)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    mem = proc.memory_info()
                    private = mem.rss - getattr(mem, "shared", 0)
                    times = proc.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                role = "driver" if proc.pid == self.pid else process_role(proc)
                known = self._role_by_pid.get(proc.pid)
                if known is None or (known in ("idle_worker", "ray_worker", "gone") and role not in ("gone",)):
                    self._role_by_pid[proc.pid] = role
                self._peak_by_pid[proc.pid] = max(self._peak_by_pid.get(proc.pid, 0), private)
                if role not in ("idle_worker", "ray_worker", "gone"):
                    self._last_work_by_pid[proc.pid] = role
                cpu = times.user + times.system
                delta = cpu - self._cpu_by_pid.get(proc.pid, 0.0)
                self._cpu_by_pid[proc.pid] = cpu
                charged = self._last_work_by_pid.get(proc.pid, role)
                self.cpu_s[charged] = self.cpu_s.get(charged, 0.0) + delta
            time.sleep(self.every_s)
