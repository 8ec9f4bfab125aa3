"""Regeneration without the audio: ``tagcap regenerate SOURCE`` reruns the text stages over an
existing corpus, reading its sample JSON and never an audio member, into caption-only
shards with the source's shard names and keys."""

import io
import json
import os
import subprocess
import tarfile

import pytest

from tagcap.pipeline.caption import ConfigError, run_caption
from tagcap.schemas.config import CaptionConfig
from tagcap.schemas.work import WorkUnit
from tagcap.workers.corpus_reader import json_members, read_corpus_unit
from tagcap.workers.storage import Storage
from tests.helpers import check_output, cli_env, read_output, sample_config, tagcap_cmd, tar_digests

TAG_REWRITER = "tests.plugins:TagRewriter"


@pytest.fixture(scope="module")
def source(ray_local, sample_input, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("source") / "out")
    assert run_caption(sample_config(sample_input, out)) == 0
    return out


class _RecordingFile(io.RawIOBase):
    """A file that records the byte ranges read from it."""

    def __init__(self, path):
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.reads: list[tuple[int, int]] = []

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        return self._fh.seek(offset, whence)

    def tell(self):
        return self._fh.tell()

    def read(self, size=-1):
        start = self._fh.tell()
        data = self._fh.read(size)
        self.reads.append((start, start + len(data)))
        return data

    def close(self):
        self._fh.close()
        super().close()


def test_the_corpus_reader_reads_every_json_and_no_byte_of_any_audio_member(source):
    tar_path = os.path.join(source, "000000.tar")
    with tarfile.open(tar_path) as tar:
        audio = [(m.offset_data, m.offset_data + m.size) for m in tar if m.name.endswith(".flac")]
        names = [m.name for m in tar if m.name.endswith(".json")]
    assert audio and names
    fh = _RecordingFile(tar_path)
    members = json_members(fh)
    assert [name for name, _ in members] == names
    for start, stop in fh.reads:
        assert all(stop <= a or start >= b for a, b in audio), (start, stop)
    unit = WorkUnit(0, "000000", "corpus", (tar_path,))
    captioned, payload = read_corpus_unit(unit, Storage())
    assert [s.key for s in payload.samples] == [n[: -len(".json")] for n in names]
    assert payload.samples_in == len(names) and all(s.audio_ext == "" for s in payload.samples)
    first = json.loads(members[0][1])
    assert captioned.results[0].text == first["text"][0] and captioned.tags[0] == first["tag"]


def test_regenerate_rewrites_into_caption_only_shards_of_the_same_names_and_keys(source, tmp_path):
    out = str(tmp_path / "regen")

    def regenerate():
        return run_caption(
            CaptionConfig(
                input=[], segments=[], labels="", output=out, from_corpus=source, rewrite=TAG_REWRITER, progress=False
            )
        )

    assert regenerate() == 0
    src, new = read_output(source), check_output(out, expected_inputs=len(read_output(source).samples))
    assert sorted(os.path.basename(p) for p in tar_digests(out)) == sorted(tar_digests(source))
    assert sorted(s["__key__"] for s in new.samples) == sorted(s["__key__"] for s in src.samples)
    by_key = {s["__key__"]: json.loads(s["json"]) for s in src.samples}
    for sample in new.samples:
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"json"}  # no audio member
        record, original = json.loads(sample["json"]), by_key[sample["__key__"]]
        assert record["text"] == [f"{original['text'][0]} ({', '.join(original['tag'])})"]
        assert record["caption_meta"]["captioner"] == original["caption_meta"]["captioner"]
        assert record["caption_meta"]["stages"][0]["model"] == "test-tag-rewriter"
        assert record["original_data"] == original["original_data"]
    assert new.manifest["config"]["from_corpus"] == source
    before = tar_digests(out)
    assert regenerate() == 0 and tar_digests(out) == before  # a finished regeneration reruns to nothing new


def test_regenerate_refuses_what_needs_audio_or_is_no_corpus(source, tmp_path):
    with pytest.raises(ConfigError, match="--filter clap: scores the audio"):
        run_caption(
            CaptionConfig(
                input=[],
                segments=[],
                labels="",
                output=str(tmp_path / "a"),
                from_corpus=source,
                rewrite=TAG_REWRITER,
                filter="clap:/x",
                progress=False,
            )
        )
    with pytest.raises(ConfigError, match="needs --rewrite, or --filter recorded"):
        run_caption(
            CaptionConfig(
                input=[], segments=[], labels="", output=str(tmp_path / "b"), from_corpus=source, progress=False
            )
        )
    proc = subprocess.run(
        tagcap_cmd("regenerate", str(tmp_path / "nothing"), "--output", str(tmp_path / "c"), "--rewrite", TAG_REWRITER),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_new_filter_rule_over_the_recorded_scores_needs_no_audio(ray_local, sample_input, clap_ckpt, tmp_path):
    import statistics

    scored = str(tmp_path / "scored")
    cfg = sample_config(sample_input, scored, filter=f"clap:{clap_ckpt}", filter_rule="best>=-1")
    assert run_caption(cfg) == 0
    source = read_output(scored)
    scores = {s["__key__"]: json.loads(s["json"])["caption_meta"]["clap_score"] for s in source.samples}
    bar = statistics.median(scores.values())
    out = str(tmp_path / "stricter")
    config = CaptionConfig(input=[], segments=[], labels="", output=out, from_corpus=scored, filter="recorded",
                           filter_rule=f"best>={bar:.6f}", progress=False)  # fmt: skip
    assert run_caption(config) == 0
    o = check_output(out, expected_inputs=len(source.samples))
    kept = {s["__key__"] for s in o.samples}
    assert kept == {k for k, v in scores.items() if v >= float(f"{bar:.6f}")} and 0 < len(kept) < len(scores)
    assert {(r["stage"], r["reason"]) for r in o.error_rows} == {("filter", "filtered")}
    for sample in o.samples:
        (stage,) = json.loads(sample["json"])["caption_meta"]["stages"]
        assert stage["model"] == "recorded-scores" and stage["output"]["kept"]
    with pytest.raises(ConfigError, match="use it with tagcap regenerate"):
        run_caption(sample_config(sample_input, tmp_path / "x", filter="recorded"))
    with pytest.raises(ConfigError, match="cannot follow --rewrite"):
        run_caption(CaptionConfig(input=[], segments=[], labels="", output=str(tmp_path / "y"), from_corpus=scored,
                                  filter="recorded", rewrite=TAG_REWRITER, progress=False))  # fmt: skip
