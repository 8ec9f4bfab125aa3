"""``tagcap caption --exclude FILE``: evaluation sets kept out of a corpus, recognised by their
headers on the real AudioCaps, MusicCaps, ESC-50, Clotho and AudioSet files, matched by video
or by segment, and every excluded clip an error row before it is decoded."""

import csv
import json

import pytest

from tagcap.pipeline.caption import ConfigError, run_caption
from tagcap.workers.exclusion import Exclusions, parse_exclusion
from tests.conftest import shared_data
from tests.helpers import check_output, sample_config


def _parse(*parts):
    path = shared_data(*parts)
    return parse_exclusion(path.read_bytes(), str(path))


def test_the_real_evaluation_files_are_recognised_by_their_headers():
    audiocaps = _parse("captions", "audiocaps", "test.csv")
    assert audiocaps.kind == "audiocaps" and len(audiocaps.videos) == 975
    with open(shared_data("captions", "audiocaps", "test.csv"), newline="") as fh:
        first = next(csv.DictReader(fh))
    assert (first["youtube_id"], int(first["start_time"]) * 1000) in audiocaps.segments
    musiccaps = _parse("captions", "musiccaps", "musiccaps-public.csv")
    assert musiccaps.kind == "musiccaps" and len(musiccaps.segments) == 5521
    esc50 = _parse("esc50", "esc50_full_meta.csv")
    assert esc50.kind == "esc50" and "100032" in esc50.freesound
    clotho = _parse("captions", "clotho", "clotho_captions_evaluation.csv")
    assert clotho.kind == "clotho" and "Santa Motor" in clotho.files and len(clotho.files) == 1045
    audioset = _parse("audioset", "eval_segments.csv")
    assert audioset.kind == "audioset" and len(audioset.segments) == 20371
    assert len(audiocaps.sha256) == 64


def test_google_shape_segments_vggsound_and_plain_lists(tmp_path):
    google = b'# Segments csv created Sun Mar  5 10:54:25 2017\n# num_ytids=2\n# YTID, start_seconds, end_seconds, positive_labels\n--PJHxphWEs, 30.000, 40.000, "/m/09x0r"\n--ZhevVpy1s, 50.000, 60.000, "/m/012xff"\n'  # noqa: E501
    assert parse_exclusion(google, "g.csv").segments == {("--PJHxphWEs", 30000), ("--ZhevVpy1s", 50000)}
    vgg = b"---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,waterfall burbling,train\n"
    vggsound = parse_exclusion(vgg, "vggsound.csv")
    assert vggsound.kind == "vggsound" and ("--0PQM4-hqg", 30000) in vggsound.segments
    plain = parse_exclusion(b"# held out\n--PJHxphWEs\nY--ZhevVpy1s_50000\n", "ids.txt")
    assert plain.kind == "ids" and plain.segments == {("--PJHxphWEs", -1), ("--ZhevVpy1s", 50000)}
    with pytest.raises(ValueError, match="line 2: 'not an id!' is neither"):
        parse_exclusion(b"--PJHxphWEs\nnot an id!\n", "bad.txt")
    with pytest.raises(ValueError, match="is empty"):
        parse_exclusion(b"\n\n", "empty.txt")


def test_matching_by_video_by_segment_and_by_freesound_id():
    segment_list = parse_exclusion(b"audiocap_id,youtube_id,start_time,caption\n1,--PJHxphWEs,30,a dog\n", "ac.csv")
    by_video, by_segment = Exclusions([segment_list]), Exclusions([segment_list], match="segment")
    assert by_video.why("--PJHxphWEs", 30000) == "ac.csv" and by_video.why("--PJHxphWEs", 0) == "ac.csv"
    assert by_segment.why("--PJHxphWEs", 30000) == "ac.csv" and by_segment.why("--PJHxphWEs", 0) is None
    assert by_video.why("--ZhevVpy1s", 30000) is None
    esc = parse_exclusion(
        b"filename,fold,target,category,esc10,src_file,take\n4-102844-A-49.wav,4,49,x,False,102844,A\n", "esc.csv"
    )
    freesound = Exclusions([esc])
    assert freesound.why("zzzzzzzzzzz", 0, source="4-102844-A-49.flac") == "esc.csv"
    assert freesound.why("zzzzzzzzzzz", 0, meta={"freesound_id": 102844}) == "esc.csv"
    assert freesound.why("zzzzzzzzzzz", 0, source="4-999-A-49.flac") is None
    with pytest.raises(ValueError, match="--exclude-match"):
        Exclusions([esc], match="nearby")


def test_excluded_clips_are_error_rows_named_by_their_list_and_the_manifest_records_it(
    ray_local, sample_input, tmp_path
):
    import tarfile

    with tarfile.open(sample_input.shards.replace("{000000..000003}", "000002")) as tar:
        json_member = next(m for m in tar if m.name.endswith(".json"))
        first = json.loads(tar.extractfile(json_member).read())
    ytid = first["ytid"]
    held_out = tmp_path / "held-out.txt"
    held_out.write_text(f"# the one clip\n{ytid}\n")
    out = tmp_path / "out"
    assert run_caption(sample_config(sample_input, out, exclude=[str(held_out)])) == 0
    o = check_output(str(out), expected_inputs=24)
    excluded = [r for r in o.error_rows if r["reason"] == "excluded"]
    assert len(excluded) == 1 and excluded[0]["detail"] == "on held-out.txt" and excluded[0]["stage"] == "exclude"
    assert ytid not in {json.loads(s["json"])["original_data"]["ytid"] for s in o.samples}
    (listed,) = o.manifest["exclusions"]["lists"]
    assert listed["name"] == "held-out.txt" and len(listed["sha256"]) == 64
    assert o.manifest["exclusions"]["match"] == "video"
    # Another list is another run (its identity differs); a missing one fails before Ray.
    held_out.write_text(f"{ytid}\nY--PJHxphWEs_30000\n")
    with pytest.raises(ConfigError, match="holds a different run"):
        run_caption(sample_config(sample_input, out, exclude=[str(held_out)]))
    with pytest.raises(ConfigError, match=r"exclusion list not found: .*nope\.txt"):
        run_caption(sample_config(sample_input, tmp_path / "o2", exclude=[str(tmp_path / "nope.txt")]))
