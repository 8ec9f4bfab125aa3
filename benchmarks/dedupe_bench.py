"""Near-duplicate search on a planted set: precision, recall and time per 100k clips.

The planted set is made of the real ESC-50 clips (`../shared/data/esc50`): one 4 s window of
each clip, and for every `--planted`-th clip its copies as a duplicate would come: re-encoded
to MP3 and to Ogg Vorbis, at -12 dB and +6 dB, shifted by 0.2-1.0 s, and all of these at
once. Duplicates are the pairs from one clip; every other pair is not (other takes of one
Freesound recording, which ESC-50 holds, are the hardest of those). Each method and threshold
is scored over all pairs: a pair counts as found when the method puts both in one group.

Time: the fingerprint of a 10 s, 48 kHz clip (the caption corpus's shape) on one core, and
the matching of `--scale` fingerprints (of distinct noise-and-tone clips at 8 kHz) at once.

    python benchmarks/dedupe_bench.py --results DIR [--scale 100000]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import combinations

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_results
from tagcap.schemas.dedupe import ClipRef
from tagcap.workers.duplicates import NearDuplicateSettings, duplicate_groups, shared_frame_pairs
from tagcap.workers.fingerprint import FP_RATE, band_energies, fingerprint, pcm_digest

ESC50 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "esc50", "audio")
WINDOW_S = 4.0


def _codec(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> np.ndarray:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0][: len(x)]


def planted_set(every: int, seed: int = 0) -> tuple[list[np.ndarray], list[int], list[str], int]:
    """(clips, recording id of each, what each is, rate)."""
    rng = np.random.default_rng(seed)
    clips, origin, kind = [], [], []
    rate = 16000
    for i, name in enumerate(sorted(os.listdir(ESC50))):
        x, rate = sf.read(os.path.join(ESC50, name), dtype="float32")
        n = int(WINDOW_S * rate)
        base = x[:n]
        clips.append(base)
        origin.append(i)
        kind.append("original")
        if i % every:
            continue
        d = int(rng.uniform(0.2, 1.0) * rate)
        shifted = x[d : d + n]
        variants = {
            "mp3": _codec(base, rate, "MP3"),
            "vorbis": _codec(base, rate, "OGG", "VORBIS"),
            "gain-12dB": base * 10 ** (-12 / 20),
            "gain+6dB": np.clip(base * 10 ** (6 / 20), -1, 1),
            "shift": shifted,
            "all": _codec(np.clip(shifted * 10 ** (-6 / 20), -1, 1), rate, "MP3"),
        }
        for what, v in variants.items():
            clips.append(v.astype(np.float32))
            origin.append(i)
            kind.append(what)
    return clips, origin, kind, rate


def _pairs(groups) -> set[tuple[int, int]]:
    out = set()
    for g in groups:
        members = sorted(int(r.key) for r in (g.kept, *g.dropped))
        out.update(combinations(members, 2))
    return out


def score(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    hits = len(found & truth)
    return {
        "precision": round(hits / len(found), 4) if found else 1.0,
        "recall": round(hits / len(truth), 4) if truth else 1.0,
        "false_pairs": len(found - truth),
    }


def _noise_clip(seed: int) -> np.ndarray:
    """10 s at 8 kHz of band-limited noise bursts and tones, distinct for every seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(10 * FP_RATE) / FP_RATE
    x = 0.05 * rng.standard_normal(len(t))
    for _ in range(rng.integers(2, 6)):
        f0, start, length = rng.uniform(200, 3000), rng.uniform(0, 9), rng.uniform(0.2, 3)
        env = ((t >= start) & (t < start + length)).astype(float)
        x += rng.uniform(0.05, 0.4) * env * np.sin(2 * np.pi * f0 * t * (1 + rng.uniform(-0.05, 0.05) * t / 10))
    return (x / max(1e-6, np.abs(x).max()) * 0.5).astype(np.float32)


def profile(samples: np.ndarray, rate: int) -> np.ndarray:
    """The alternative the default was measured against: a gain-invariant spectral profile,
    each band's mean and spread of log energy over the clip's frames (less the mean over
    bands), scaled to unit length; zeros for a silent clip."""
    energy = band_energies(samples, rate)
    loud = energy.sum(axis=1) > 1e-5
    if not loud.any():
        return np.zeros(2 * energy.shape[1], np.float32)
    log_e = np.log(energy[loud] + 1e-10)
    mean = log_e.mean(axis=0)
    vec = np.concatenate([mean - mean.mean(), log_e.std(axis=0)]).astype(np.float32)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


def profile_proposer(profiles: np.ndarray, min_similarity: float = 0.9, per_clip: int = 32, block: int = 512):
    """A ``propose`` for ``duplicate_groups``: pairs ``i < j`` whose profiles' cosine is at
    least ``min_similarity``, the ``per_clip`` most similar of each ``i``, a block of rows
    at a time."""

    def propose(_fingerprints, _settings) -> np.ndarray:
        n = len(profiles)
        found = []
        for start in range(0, n, block):
            stop = min(n, start + block)
            sims = profiles[start:stop] @ profiles[start:].T  # columns from ``start``: j >= i
            sims[np.arange(stop - start)[:, None] >= np.arange(n - start)[None, :]] = -1.0
            r, c = np.nonzero(sims >= min_similarity)
            order = np.lexsort((-sims[r, c], r))
            r, c = r[order], c[order]
            keep = (np.arange(len(r)) - np.searchsorted(r, r, side="left")) < per_clip
            found.append(np.stack([r[keep] + start, c[keep] + start], axis=1))
        return np.concatenate(found) if found else np.zeros((0, 2), np.int64)

    return propose


def _fingerprint_seeds(seeds: range):
    clips = [_noise_clip(s) for s in seeds]
    return [(fingerprint(c, FP_RATE), profile(c, FP_RATE)) for c in clips]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--planted", type=int, default=4, help="plant duplicates of every N-th clip")
    ap.add_argument("--scale", type=int, default=100_000, help="clips in the matching-time run")
    ap.add_argument("--profile-scale", type=int, default=4000, help="clips in the profile method's timing")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()

    started = time.perf_counter()
    clips, origin, kind, rate = planted_set(args.planted)
    fps = [fingerprint(c, rate) for c in clips]
    profiles = np.stack([profile(c, rate) for c in clips])
    print(f"planted set: {len(clips)} clips fingerprinted in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    refs = [ClipRef(0, "0", str(i)) for i in range(len(clips))]
    truth = {(i, j) for i, j in combinations(range(len(clips)), 2) if origin[i] == origin[j]}
    figures: dict = {"clips": len(clips), "duplicate_pairs": len(truth), "methods": {}}
    no_digest = [None] * len(clips)
    for sim in (0.8, 0.9, 0.95):
        profile_only = NearDuplicateSettings(max_bit_error_rate=1.0)
        groups = duplicate_groups(refs, no_digest, fps, profile_only, profile_proposer(profiles, sim))
        figures["methods"][f"profile>={sim}"] = score(_pairs(groups), truth)
    for ber in (0.15, 0.2, 0.25, 0.3, 0.35):
        s = NearDuplicateSettings(max_bit_error_rate=ber)
        groups = duplicate_groups(refs, no_digest, fps, s, profile_proposer(profiles))
        figures["methods"][f"profile>=0.9,ber<={ber}"] = score(_pairs(groups), truth)
        for shared in (1, 3, 8):
            s = NearDuplicateSettings(min_shared_frames=shared, max_bit_error_rate=ber)
            found = _pairs(duplicate_groups(refs, no_digest, fps, s))
            figures["methods"][f"frames>={shared},ber<={ber}"] = score(found, truth)
    default = NearDuplicateSettings()
    chosen = f"frames>={default.min_shared_frames},ber<={default.max_bit_error_rate}"
    figures["chosen"] = chosen
    figures["precision"] = figures["methods"][chosen]["precision"]
    figures["recall"] = figures["methods"][chosen]["recall"]
    found = _pairs(duplicate_groups(refs, no_digest, fps, default))
    figures["recall_by_variant"] = {
        what: round(
            sum(
                1
                for i, k in enumerate(kind)
                if k == what and any((j, i) in found for j in range(i) if origin[j] == origin[i])
            )
            / max(1, kind.count(what)),
            4,
        )
        for what in sorted(set(kind) - {"original"})
    }

    # Time: one 10 s, 48 kHz clip (resampled to 8 kHz inside), median of 50 on one core.
    clip48 = np.clip(np.random.default_rng(1).standard_normal(480_000) * 0.1, -1, 1).astype(np.float32)
    pcm = (clip48 * 32767).astype(np.int16)
    fingerprint(pcm, 48000)
    times, digest_times = [], []
    for _ in range(50):
        started = time.perf_counter()
        fingerprint(pcm, 48000)
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        pcm_digest(pcm, 48000)
        digest_times.append(time.perf_counter() - started)
    figures["fingerprint_ms_per_clip_10s_48k"] = round(float(np.median(times)) * 1000, 2)
    figures["digest_ms_per_clip_10s_48k"] = round(float(np.median(digest_times)) * 1000, 3)
    figures["fingerprint_core_s_per_100k"] = round(float(np.median(times)) * 100_000, 1)

    chunks = [range(s, min(args.scale, s + 2000)) for s in range(0, args.scale, 2000)]
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        made = [pair for part in pool.map(_fingerprint_seeds, chunks) for pair in part]
    figures["scale_fingerprint_s"] = round(time.perf_counter() - started, 1)
    scale_fps, scale_profiles = [fp for fp, _ in made], np.stack([p for _, p in made])
    for method, clips_n in (("frames", args.scale), ("profile", min(args.scale, args.profile_scale))):
        propose = profile_proposer(scale_profiles[:clips_n]) if method == "profile" else shared_frame_pairs
        refs_n = [ClipRef(0, "0", str(i)) for i in range(clips_n)]
        started = time.perf_counter()
        groups = duplicate_groups(refs_n, [None] * clips_n, scale_fps[:clips_n], default, propose)
        match_s = time.perf_counter() - started
        figures[f"{method}_scale_clips"] = clips_n
        figures[f"{method}_scale_match_s"] = round(match_s, 1)
        figures[f"{method}_scale_false_groups"] = len(groups)
        # Measured at 100k where the run had them; the profile step grows with the pairs.
        figures[f"{method}_match_s_per_100k"] = round(
            match_s * (100_000 / clips_n) ** (2 if method == "profile" else 1), 1
        )
    figures["match_s_per_100k"] = figures["frames_match_s_per_100k"]
    figures["workers"] = args.workers
    print(write_results(args.results, "dedupe", figures))


if __name__ == "__main__":
    main()
