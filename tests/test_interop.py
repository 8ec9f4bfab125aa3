"""The output read by the libraries its users train with: webdataset, Hugging Face datasets,
a loader that follows LAION-CLAP's rules, and pyarrow / DuckDB over the index."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from itertools import groupby

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import soundfile as sf
import webdataset as wds
from datasets import Features, Value, load_dataset

from tests.helpers import read_output

N_WRITTEN = 24
N_FAILED = 3


def _tars(out) -> list[str]:
    return sorted(str(p) for p in out.glob("0*.tar"))


def test_webdataset_pipeline_reads_audio_text_and_tags(blat_corpus):
    pipeline = wds.WebDataset(_tars(blat_corpus), shardshuffle=False, empty_check=False).to_tuple(
        "__key__", "flac", "json"
    )
    rows = list(pipeline)
    assert len(rows) == N_WRITTEN
    for key, flac, meta in rows:
        audio, rate = sf.read(io.BytesIO(flac))
        assert rate == 16000 and audio.ndim == 1 and np.isfinite(audio).all()
        record = json.loads(meta)
        assert record["text"] and all(isinstance(t, str) and t for t in record["text"])
        assert record["tag"] and key.startswith("Y")


def test_hugging_face_datasets_loads_the_shards(blat_corpus):
    """``load_dataset("webdataset")`` as a user runs it. Its default turns ``.flac`` members
    into an ``Audio`` feature, whose encoder needs torchcodec + FFmpeg (not installed here);
    the documented way round is to give the features, with the audio as raw bytes. The json
    member's structure is inferred from one sample exactly as the builder itself does."""
    tars = _tars(blat_corpus)
    sizes = json.loads((blat_corpus / "sizes.json").read_text())
    with tarfile.open(blat_corpus / next(name for name, n in sizes.items() if n)) as tar:
        first = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        example = json.loads(tar.extractfile(first).read())
    json_feature = Features.from_arrow_schema(pa.Table.from_pylist([{"json": example}]).schema)["json"]
    features = Features(
        {"__key__": Value("string"), "__url__": Value("string"), "flac": Value("binary"), "json": json_feature}
    )
    ds = load_dataset("webdataset", data_files={"train": tars}, split="train", features=features)
    assert ds.num_rows == N_WRITTEN
    expected = {s["__key__"]: json.loads(s["json"]) for s in read_output(str(blat_corpus)).samples}
    for row in ds:
        assert row["json"]["text"] == expected[row["__key__"]]["text"]
        assert row["json"]["tag"] == expected[row["__key__"]]["tag"]
        assert sf.info(io.BytesIO(row["flac"])).samplerate == 16000


# LAION-CLAP's loader: member names split at the first dot of the base name into key and
# extension; a sample is a run of adjacent members with one key; the audio and json members
# must both be in it; the caption is json["text"], the tags json["tag"]; the shard list and
# the dataset size come from sizes.json.
_FIRST_DOT = re.compile(r"^((?:.*/)?[^./]+)\.([^/]*)$")


def _laion_clap_samples(root) -> tuple[int, list[dict]]:
    sizes = json.loads((root / "sizes.json").read_text())
    samples = []
    for shard in sizes:
        with tarfile.open(os.path.join(root, shard)) as tar:
            members = [(m, _FIRST_DOT.match(m.name)) for m in tar.getmembers() if m.isfile()]
            assert all(match for _, match in members), "a member name without a key.extension shape"
            for key, group in groupby(members, key=lambda mm: mm[1].group(1)):
                fields = {match.group(2): tar.extractfile(m).read() for m, match in group}
                assert {"flac", "json"} <= set(fields), f"{shard}:{key} lacks audio or json"
                meta = json.loads(fields["json"])
                samples.append({"key": key, "audio": fields["flac"], "text": meta["text"], "tag": meta["tag"]})
    return sum(sizes.values()), samples


def test_a_laion_clap_style_loader_reads_every_sample(blat_corpus):
    size, samples = _laion_clap_samples(blat_corpus)
    assert size == len(samples) == N_WRITTEN
    assert len({s["key"] for s in samples}) == N_WRITTEN  # keys never repeat across adjacent runs
    for s in samples:
        assert s["text"] and s["tag"] and sf.info(io.BytesIO(s["audio"])).frames > 0


def test_index_and_errors_open_in_pyarrow_and_duckdb(blat_corpus):
    index = pads.dataset(str(blat_corpus / "index"), format="parquet").to_table()
    errors = pads.dataset(str(blat_corpus / "errors"), format="parquet").to_table()
    assert index.num_rows == N_WRITTEN and errors.num_rows == N_FAILED
    assert set(index.column_names) >= {"key", "shard", "captions", "tags", "mids", "logprob", "clap_score"}

    con = duckdb.connect()
    idx, err = str(blat_corpus / "index" / "*.parquet"), str(blat_corpus / "errors" / "*.parquet")
    per_shard = con.execute(
        "SELECT shard, count(*) AS n, avg(logprob) AS lp FROM read_parquet(?) GROUP BY shard ORDER BY shard",
        [idx],
    ).fetchall()
    sizes = json.loads((blat_corpus / "sizes.json").read_text())
    assert {f"{shard}.tar": n for shard, n, _ in per_shard} == {k: v for k, v in sizes.items() if v}
    assert all(lp < 0 for _, _, lp in per_shard)
    top_tag, n = con.execute(
        "SELECT tag, count(*) AS n FROM (SELECT unnest(tags) AS tag FROM read_parquet(?)) "
        "GROUP BY tag ORDER BY n DESC, tag LIMIT 1",
        [idx],
    ).fetchone()
    assert n == sum(top_tag in row for row in index.column("tags").to_pylist())
    reasons = dict(con.execute("SELECT reason, count(*) FROM read_parquet(?) GROUP BY reason", [err]).fetchall())
    assert sum(reasons.values()) == N_FAILED
    # A key is in exactly one of the two tables.
    both = con.execute("SELECT count(*) FROM read_parquet(?) i JOIN read_parquet(?) e USING (key)", [idx, err])
    assert both.fetchone() == (0,)
