import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagcap.schemas.audioset import (
    LabelMap,
    SegmentTable,
    _parse_clean_segments,
    _parse_segment_rows,
    parse_segments,
    seconds_to_ms,
)
from tests.conftest import shared_data


def _google_shape(plain_csv: str) -> str:
    """Re-create Google's original layout from a re-saved copy: '#' lines, ', ' separators."""
    rows = list(csv.reader(io.StringIO(plain_csv)))[1:]
    out = [
        "# Segments csv created Sun Mar  5 10:54:31 2017",
        f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=527, num_positive_labels=0",
        "# YTID, start_seconds, end_seconds, positive_labels",
    ]
    out += [f'{r[0]}, {r[1]}, {r[2]}, "{r[3]}"' for r in rows]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(
    "name,segments,labels",
    [("balanced_train_segments.csv", 22160, 52882), ("eval_segments.csv", 20371, 51804)],
)
def test_real_segment_csvs_parse_with_published_counts(name, segments, labels):
    text = shared_data("audioset", name).read_text()
    table, report = parse_segments(text, name)
    assert (report.segments, report.positive_labels) == (segments, labels)
    assert report.malformed == [] and report.duplicates == 0
    assert table.num_rows == segments
    assert len(set(m for row in table["mids"].to_pylist() for m in row)) == 527


def test_google_original_shape_parses_to_the_same_table():
    plain = shared_data("audioset", "balanced_train_segments.csv").read_text()
    google = _google_shape(plain)
    assert google.startswith("#") and ", " in google.splitlines()[3]
    a, ra = parse_segments(plain)
    b, rb = parse_segments(google)
    assert ra.segments == rb.segments
    assert (rb.segments, rb.positive_labels) == (22160, 52882)
    assert a.equals(b)


@pytest.mark.parametrize("shape", ["plain", "google"])
def test_clean_files_parse_column_wise_to_the_row_parsers_table(shape):
    plain = shared_data("audioset", "balanced_train_segments.csv").read_text()
    text = plain if shape == "plain" else _google_shape(plain)
    clean = _parse_clean_segments(text, "train")
    assert clean is not None, "a clean file must not fall back to the row parser"
    rows, report = _parse_segment_rows(text, "x", "train")
    assert clean[0].equals(rows) and clean[1] == report.positive_labels == 52882


_YTID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ROWS = st.lists(
    st.tuples(
        st.text(_YTID_CHARS, min_size=11, max_size=11),
        st.sampled_from(["30", "30.", "30.5", "30.000", "30.0005", "0", "030.25"]),
        st.sampled_from(["40", "40.000", "10.5"]),
        st.lists(st.sampled_from(["/m/09x0r", "/t/dd00088", " /m/x "]), min_size=1, max_size=3),
        st.booleans(),  # a lone label quoted (several always are)
    ),
    max_size=8,
)
# One field of one row made into something the row parser reports or treats its own way.
_BREAKS = st.one_of(
    st.none(),  # three times in four: none
    st.none(),
    st.none(),
    st.tuples(
        st.integers(0, 7),
        st.integers(0, 3),
        st.sampled_from(["short", " --PJHxphWEs", "YTID", "", " 30", "3e1", "-1", "٣٠", "x,y", '"', "#c", "1" * 30]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    rows=_ROWS,
    broken=_BREAKS,
    duplicate=st.integers(0, 3).map(lambda i: i == 0),
    top=st.sampled_from(["", "YTID,start_seconds,end_seconds,positive_labels\n", "# made\n# YTID, start\n", "\n"]),
    sep=st.sampled_from([",", ", "]),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_the_column_parser_agrees_with_the_row_parser_or_leaves_it_the_file(rows, broken, duplicate, top, sep, newline):
    """Whatever the text, ``parse_segments`` gives what the row-by-row parser gives: the
    column-wise path takes only files it parses to the same table."""
    fields = [
        [y, a, b, f'"{",".join(labels)}"' if quoted or len(labels) > 1 else labels[0]]
        for y, a, b, labels, quoted in rows
    ]
    if broken is not None and fields:
        row, column, value = broken
        fields[row % len(fields)][column] = value
    if duplicate and fields:
        fields.append(list(fields[0]))
    text = top.replace("\n", newline) + newline.join(sep.join(f) for f in fields)
    table, report = parse_segments(text, "x", "s")
    expected, expected_report = _parse_segment_rows(text, "x", "s")
    assert table.equals(expected) and report == expected_report


def test_label_maps_from_csv_and_ontology_agree():
    by_csv = LabelMap.parse(shared_data("audioset", "class_labels_indices.csv").read_text())
    by_ontology = LabelMap.parse(shared_data("audioset", "ontology.json").read_text())
    assert len(by_csv) == 527 and len(by_ontology) == 632
    assert by_csv["/m/0bt9lr"] == "Dog"
    assert all(by_ontology[mid] == name for mid, name in by_csv.items())


def test_malformed_duplicate_rows_are_reported_not_fatal():
    text = "\n".join(
        [
            "YTID,start_seconds,end_seconds,positive_labels",
            '--PJHxphWEs,30.000,40.000,"/m/09x0r,/t/dd00088"',
            '--PJHxphWEs,30.000,40.000,"/m/09x0r"',  # duplicate
            "short,1,2,/m/x",  # bad YTID
            "--ZhevVpy1s,abc,60,/m/012xff",  # bad number
            "only,two",
            '-_ZhevVpy1s,50,60.5,""',  # no labels is valid here; the join reports it
        ]
    )
    table, report = parse_segments(text)
    assert report.segments == 2 and report.duplicates == 1 and len(report.malformed) == 3
    assert any("line 4" in m for m in report.malformed)
    rows = table.to_pylist()
    assert rows[0]["mids"] == ["/m/09x0r", "/t/dd00088"]
    assert rows[1]["end_ms"] == 60500 and rows[1]["mids"] == []


def test_seconds_are_exact_milliseconds():
    assert seconds_to_ms("30.000") == 30000
    assert seconds_to_ms("30") == 30000
    assert seconds_to_ms("0.5") == 500
    assert seconds_to_ms(" 12.3456") == 12345
    with pytest.raises(ValueError):
        seconds_to_ms("-1")
    assert seconds_to_ms("9223372036854775.807") == 2**63 - 1  # the most int64 milliseconds hold
    with pytest.raises(ValueError, match="out of range"):
        seconds_to_ms("9223372036854775.808")


def test_a_start_beyond_int64_milliseconds_is_a_malformed_row_not_a_crash():
    text = "aaaaaaaaaaa,111111111111111111111111111111,40,/m/a\nbbbbbbbbbbb,30,40,/m/b\n"
    table, report = parse_segments(text, "x.csv")
    assert table.column("ytid").to_pylist() == ["bbbbbbbbbbb"]
    assert report.malformed == ["line 1: seconds value '111111111111111111111111111111' out of range"]


def test_segment_lookup_and_choice_by_start():
    text = (
        "YTID,start_seconds,end_seconds,positive_labels\n"
        "abcdefghijk,10,20,/m/a\nabcdefghijk,30,40,/m/b\nYbcdefghijk,0,10,/m/c\n"
    )
    table = SegmentTable(parse_segments(text)[0])
    found = table.lookup(["abcdefghijk", "Ybcdefghijk", "missingmiss"])
    assert set(found) == {"abcdefghijk", "Ybcdefghijk"}
    assert SegmentTable.choose(found["abcdefghijk"], 30000).mids == ("/m/b",)
    assert SegmentTable.choose(found["abcdefghijk"], None) is None  # ambiguous without a start
    assert SegmentTable.choose(found["Ybcdefghijk"], None).mids == ("/m/c",)
    assert SegmentTable.choose(found["abcdefghijk"], 99000) is None


def test_label_map_rejects_other_files():
    with pytest.raises(ValueError):
        LabelMap.parse("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError):
        LabelMap.parse(json.dumps([{"no": "id"}]))
