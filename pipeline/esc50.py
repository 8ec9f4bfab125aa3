"""ESC-50 as AudioSet-shaped input: each ESC-50 class mapped to AudioSet labels.

Used by tests and benchmarks to run the pipeline on real audio: the clips are packed into
WebDataset tars under tagcap keys with a synthetic but stable YTID per file, and a segment
CSV lists each clip with the AudioSet MIDs of its class.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile

from tagcap.schemas.audioset import LabelMap
from tagcap.schemas.keys import make_key

# ESC-50 category -> AudioSet display names (as in class_labels_indices.csv). Where
# AudioSet has no exact class the nearest one is used (drinking_sipping -> Slosh,
# can_opening -> Burst/pop, washing_machine -> Mechanisms).
ESC50_TO_AUDIOSET: dict[str, tuple[str, ...]] = {
    "dog": ("Dog",),
    "rooster": ("Chicken, rooster", "Crowing, cock-a-doodle-doo"),
    "pig": ("Pig",),
    "cow": ("Cattle, bovinae",),
    "frog": ("Frog",),
    "cat": ("Cat",),
    "hen": ("Chicken, rooster", "Cluck"),
    "insects": ("Insect",),
    "sheep": ("Sheep",),
    "crow": ("Crow",),
    "rain": ("Rain",),
    "sea_waves": ("Waves, surf",),
    "crackling_fire": ("Fire", "Crackle"),
    "crickets": ("Cricket",),
    "chirping_birds": ("Bird vocalization, bird call, bird song", "Chirp, tweet"),
    "water_drops": ("Drip",),
    "wind": ("Wind",),
    "pouring_water": ("Pour",),
    "toilet_flush": ("Toilet flush",),
    "thunderstorm": ("Thunderstorm",),
    "crying_baby": ("Baby cry, infant cry",),
    "sneezing": ("Sneeze",),
    "clapping": ("Clapping",),
    "breathing": ("Breathing",),
    "coughing": ("Cough",),
    "footsteps": ("Walk, footsteps",),
    "laughing": ("Laughter",),
    "brushing_teeth": ("Toothbrush",),
    "snoring": ("Snoring",),
    "drinking_sipping": ("Slosh",),
    "door_wood_knock": ("Knock",),
    "mouse_click": ("Clicking",),
    "keyboard_typing": ("Typing", "Computer keyboard"),
    "door_wood_creaks": ("Creak",),
    "can_opening": ("Burst, pop",),
    "washing_machine": ("Mechanisms",),
    "vacuum_cleaner": ("Vacuum cleaner",),
    "clock_alarm": ("Alarm clock",),
    "clock_tick": ("Tick-tock",),
    "glass_breaking": ("Shatter", "Glass"),
    "helicopter": ("Helicopter",),
    "chainsaw": ("Chainsaw",),
    "siren": ("Siren",),
    "car_horn": ("Vehicle horn, car horn, honking",),
    "engine": ("Engine",),
    "train": ("Train",),
    "church_bells": ("Church bell",),
    "airplane": ("Fixed-wing aircraft, airplane",),
    "fireworks": ("Fireworks",),
    "hand_saw": ("Sawing",),
}

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def pseudo_ytid(name: str) -> str:
    """A stable 11-character YTID-shaped id for a non-YouTube clip."""
    digest = hashlib.sha256(name.encode()).digest()
    return "".join(_ALPHABET[b % 64] for b in digest[:11])


def mids_for(category: str, labels: LabelMap) -> list[str]:
    by_name = {name: mid for mid, name in labels.items()}
    return [by_name[name] for name in ESC50_TO_AUDIOSET[category]]


def read_esc50_meta(esc_dir: str) -> list[dict[str, str]]:
    with open(os.path.join(esc_dir, "esc50_subset.csv"), newline="") as fh:
        return list(csv.DictReader(fh))


def split_per_class(
    rows: list[dict[str, str]], train_per_class: int
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The first ``train_per_class`` clips of each class (in file order) and the rest."""
    seen: dict[str, int] = {}
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for row in rows:
        n = seen.get(row["category"], 0)
        (train if n < train_per_class else test).append(row)
        seen[row["category"]] = n + 1
    return train, test


def pack_esc50(
    esc_dir: str, labels: LabelMap, out_dir: str, clips_per_shard: int = 50, rows: list[dict[str, str]] | None = None
) -> tuple[str, str]:
    """Write ESC-50 clips as tagcap-keyed tars plus a segment CSV; returns (brace pattern,
    segments path). ``rows`` selects clips (default: all, in file order)."""
    rows = rows if rows is not None else read_esc50_meta(esc_dir)
    os.makedirs(out_dir, exist_ok=True)
    segment_lines = ["YTID,start_seconds,end_seconds,positive_labels"]
    n_shards = 0
    for start in range(0, len(rows), clips_per_shard):
        path = os.path.join(out_dir, f"{n_shards:06d}.tar")
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for row in rows[start : start + clips_per_shard]:
                with open(os.path.join(esc_dir, "audio", row["filename"]), "rb") as fh:
                    data = fh.read()
                ytid = pseudo_ytid(row["filename"])
                key = make_key(ytid, 0)
                # The class travels as `label` for zero-shot evaluation; ytid/start join the tags.
                meta = json.dumps({"ytid": ytid, "start_seconds": 0.0, "label": row["category"]}).encode()
                for name, payload in ((f"{key}.flac", data), (f"{key}.json", meta)):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                mids = ",".join(mids_for(row["category"], labels))
                segment_lines.append(f'{ytid},0.000,5.000,"{mids}"')
        n_shards += 1
    segments = os.path.join(out_dir, "segments.csv")
    with open(segments, "w") as fh:
        fh.write("\n".join(segment_lines) + "\n")
    return os.path.join(out_dir, f"{{000000..{n_shards - 1:06d}}}.tar"), segments
