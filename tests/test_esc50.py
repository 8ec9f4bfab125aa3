"""The 400 real ESC-50 clips, packed as AudioSet-style input shards, end to end."""

import collections
import json

from tagcap.pipeline.caption import run_caption
from tagcap.pipeline.esc50 import ESC50_TO_AUDIOSET, pack_esc50, pseudo_ytid, read_esc50_meta
from tagcap.schemas.audioset import LabelMap
from tagcap.schemas.config import CaptionConfig
from tagcap.schemas.keys import make_key
from tests.conftest import shared_data
from tests.helpers import check_output


def test_every_esc50_class_maps_to_known_audioset_labels():
    labels = LabelMap.parse(shared_data("audioset", "class_labels_indices.csv").read_text())
    names = set(labels.values())
    rows = read_esc50_meta(str(shared_data("esc50")))
    assert set(ESC50_TO_AUDIOSET) == {r["category"] for r in rows}
    missing = {c: n for c, ns in ESC50_TO_AUDIOSET.items() for n in ns if n not in names}
    assert not missing
    assert len({pseudo_ytid(r["filename"]) for r in rows}) == 400


def test_esc50_end_to_end(ray_local, tmp_path):
    esc = shared_data("esc50")
    labels_path = shared_data("audioset", "class_labels_indices.csv")
    labels = LabelMap.parse(labels_path.read_text())
    pattern, segments = pack_esc50(str(esc), labels, str(tmp_path / "in"), clips_per_shard=50)
    out = tmp_path / "out"
    cfg = CaptionConfig(
        input=[pattern], segments=[segments], labels=str(labels_path), output=str(out), progress=False, actors=1
    )
    assert run_caption(cfg) == 0
    o = check_output(str(out), expected_inputs=400)
    assert len(o.samples) == 400 and not o.error_rows and len(o.sizes) == 8
    category = {make_key(pseudo_ytid(r["filename"]), 0): r["category"] for r in read_esc50_meta(str(esc))}
    per_class = collections.Counter()
    for s in o.samples:
        meta = json.loads(s["json"])
        cat = category[s["__key__"]]
        assert meta["tag"] == list(ESC50_TO_AUDIOSET[cat])  # dog -> Dog, etc.
        per_class[cat] += 1
    assert set(per_class.values()) == {8}
    dog = next(json.loads(s["json"]) for s in o.samples if category[s["__key__"]] == "dog")
    assert dog["original_data"]["mids"] == ["/m/0bt9lr"] and dog["text"] == ["The sound of dog."]
