import gzip
import json

import pytest

from tagcap.schemas.records import ErrorReason
from tagcap.workers import readers
from tagcap.workers.readers import read_files, read_tar, split_member_name
from tagcap.workers.storage import Storage
from tests.builders import encode, make_tar, tone

FLAC = encode(tone(0.5), 16000)


@pytest.fixture(autouse=True, params=["whole", "streamed"])
def reading(request, monkeypatch):
    """Every test here runs on both of read_tar's paths: the tar read whole and sliced, and
    the tar streamed (taken by tars over WHOLE_TAR_MAX_BYTES): they must agree."""
    if request.param == "streamed":
        monkeypatch.setattr(readers, "WHOLE_TAR_MAX_BYTES", 0)
    return request.param


def test_adjacent_members_form_samples_in_order(tmp_path):
    path = str(tmp_path / "a.tar")
    make_tar(
        [
            ("Y--PJHxphWEs_30000.flac", FLAC),
            ("Y--PJHxphWEs_30000.json", json.dumps({"x": 1}).encode()),
            ("sub/--ZhevVpy1s_50.000_60.000.wav", b"w"),  # dots in the name, a folder
            ("README.txt", b"readme"),
        ],
        path,
    )
    samples = list(read_tar(path, Storage()))
    assert [s.source for s in samples] == ["Y--PJHxphWEs_30000", "sub/--ZhevVpy1s_50.000_60.000", "README"]
    assert samples[0].audio == ("flac", FLAC) and "json" in samples[0].members
    assert samples[1].audio == ("wav", b"w")
    assert samples[2].audio is None and samples[2].error is None


def test_unsafe_members_and_repeats_are_errors(tmp_path):
    path = str(tmp_path / "b.tar")
    make_tar(
        [
            ("/etc/passwd.flac", FLAC),
            ("../up.flac", FLAC),
            ("a/../../x.flac", FLAC),
            ("ok.flac", FLAC),
            ("other.flac", FLAC),
            ("ok.json", b"{}"),
        ],
        path,
    )
    samples = list(read_tar(path, Storage()))
    reasons = [s.error[0] if s.error else None for s in samples]
    assert reasons == [ErrorReason.UNSAFE_MEMBER] * 3 + [None, None, ErrorReason.DUPLICATE_KEY]


def test_truncated_tar_keeps_the_samples_before_the_break(tmp_path):
    raw = make_tar([(f"s{i}.flac", FLAC) for i in range(4)])
    path = tmp_path / "t.tar"
    member = 512 + -(-len(FLAC) // 512) * 512  # header + padded data
    path.write_bytes(raw[: 2 * member + 512 + len(FLAC) // 2])  # cut inside s2's data
    samples = list(read_tar(str(path), Storage()))
    good = [s for s in samples if s.error is None]
    bad = [s for s in samples if s.error is not None]
    assert [s.source for s in good] == ["s0", "s1"]
    assert len(bad) == 1 and bad[0].error[0] == ErrorReason.TRUNCATED_TAR


def test_unreadable_tar_and_files(tmp_path):
    (tmp_path / "garbage.tar").write_bytes(b"not a tar at all" * 100)
    samples = list(read_tar(str(tmp_path / "garbage.tar"), Storage()))
    assert len(samples) == 1 and samples[0].error[0] in (ErrorReason.UNREADABLE, ErrorReason.TRUNCATED_TAR)
    samples = list(read_tar(str(tmp_path / "missing.tar"), Storage()))
    assert samples[0].error[0] == ErrorReason.UNREADABLE
    (tmp_path / "Yabcdefghijk.flac").write_bytes(FLAC)
    files = list(read_files((str(tmp_path / "Yabcdefghijk.flac"), str(tmp_path / "nope.wav")), Storage()))
    assert files[0].audio == ("flac", FLAC)
    assert files[1].error[0] == ErrorReason.UNREADABLE


def test_split_member_name_uses_the_last_dot():
    assert split_member_name("a/b.c/--PJHxphWEs_30.000_40.000.WAV") == ("a/b.c/--PJHxphWEs_30.000_40.000", "wav")
    assert split_member_name("noext") == ("noext", "")


def test_compressed_tar_reads_as_the_plain_one(tmp_path):
    members = [("Yabcdefghijk_1000.flac", FLAC), ("Yabcdefghijk_1000.json", b"{}"), ("b.flac", FLAC)]
    make_tar(members, str(tmp_path / "plain.tar"))
    (tmp_path / "packed.tar.gz").write_bytes(gzip.compress(make_tar(members)))
    plain = list(read_tar(str(tmp_path / "plain.tar"), Storage()))
    packed = list(read_tar(str(tmp_path / "packed.tar.gz"), Storage()))
    assert [(s.source, s.members, s.error) for s in packed] == [(s.source, s.members, s.error) for s in plain]
    assert [s.source for s in plain] == ["Yabcdefghijk_1000", "b"]


def test_a_plain_tar_read_whole_is_not_copied_per_member(tmp_path, reading):
    path = str(tmp_path / "a.tar")
    make_tar([(f"s{i}.flac", FLAC) for i in range(3)], path)
    samples = list(read_tar(path, Storage()))
    blobs = [s.members["flac"] for s in samples]
    assert all(bytes(b) == FLAC for b in blobs)
    if reading == "whole":  # views of the one buffer the tar was read into
        assert all(isinstance(b, memoryview) for b in blobs)
        assert len({id(b.obj) for b in blobs}) == 1
