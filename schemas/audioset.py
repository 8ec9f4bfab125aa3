"""AudioSet metadata: segment CSVs and label maps.

Segment CSVs come in two shapes and both parse:

* Google's original files: three ``#`` comment lines, ``", "`` between fields and the
  label list quoted (``--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"``);
* re-saved copies with one plain header row (``YTID,start_seconds,end_seconds,...``).

Parsed segments are kept as a pyarrow table rather than Python objects: the full unbalanced
list has two million rows, and an Arrow table travels through Ray's object store without
a copy, so every decode task can join its clips to their tags without holding its own
copy of the metadata.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

YTID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")

SEGMENT_SCHEMA = pa.schema(
    [
        pa.field("ytid", pa.string(), nullable=False),
        pa.field("start_ms", pa.int64(), nullable=False),
        pa.field("end_ms", pa.int64(), nullable=False),
        pa.field("mids", pa.list_(pa.string()), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Segment:
    """One row of a segment CSV."""

    ytid: str
    start_ms: int
    end_ms: int
    mids: tuple[str, ...]
    split: str = ""

    @property
    def start_seconds(self) -> float:
        return self.start_ms / 1000.0

    @property
    def end_seconds(self) -> float:
        return self.end_ms / 1000.0


@dataclass
class SegmentParseReport:
    """What parsing found; problems are reported here rather than raised."""

    source: str
    segments: int = 0
    positive_labels: int = 0
    duplicates: int = 0
    malformed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source}: {self.segments} segments, {self.positive_labels} labels, "
            f"{self.duplicates} duplicate rows, {len(self.malformed)} malformed rows"
        )


_MAX_MS = 2**63 - 1  # the segment table holds int64 milliseconds


def seconds_to_ms(text: str) -> int:
    """Parse a seconds field ('30.000', '30', '30.5') into integer milliseconds exactly."""
    text = text.strip()
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"bad seconds value {text!r}")
    frac = (frac + "000")[:3]
    ms = int(whole) * 1000 + int(frac)
    if ms > _MAX_MS:
        raise ValueError(f"seconds value {text!r} out of range")
    return ms


def _rows(text: str) -> Iterable[tuple[int, list[str]]]:
    lines = (line for line in io.StringIO(text))
    reader = csv.reader(lines, skipinitialspace=True)
    for row in reader:
        yield reader.line_num, row


def parse_segments(text: str, source: str = "<segments>", split: str = "") -> tuple[pa.Table, SegmentParseReport]:
    """Parse one segment CSV (either shape) into a table of SEGMENT_SCHEMA and a report.

    Duplicate rows (same YTID and start) keep the first occurrence; malformed rows are
    skipped and listed in the report with their line number.

    A well-formed file is parsed column-wise by Arrow (:func:`_parse_clean_segments`); one
    with anything to report (a malformed row, a duplicate, an empty label, a comment or
    header past the top) falls back to the row-by-row parser, which says what and where.
    Both give the same table for the same text (tested); the column-wise parse is several
    times faster (docs/performance.md, suite ``segments``).
    """
    clean = _parse_clean_segments(text, split)
    if clean is not None:
        table, labels = clean
        return table, SegmentParseReport(source=source, segments=table.num_rows, positive_labels=labels)
    return _parse_segment_rows(text, source, split)


def _seconds_column_ms(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """``seconds_to_ms`` over a column of strings, or None where one does not parse."""
    parts = pc.extract_regex(column, r"^(?P<whole>\d+)(?:\.(?P<frac>\d*))?$")  # null where no match
    if parts.null_count:
        return None
    whole, frac = pc.struct_field(parts, "whole"), pc.struct_field(parts, "frac")
    millis = pc.utf8_slice_codeunits(pc.binary_join_element_wise(frac, "000", ""), 0, 3)
    try:
        return pc.add_checked(pc.multiply_checked(pc.cast(whole, pa.int64()), 1000), pc.cast(millis, pa.int64()))
    except pa.ArrowInvalid:  # beyond int64: the row parser says so
        return None


def _parse_clean_segments(text: str, split: str) -> tuple[pa.Table, int] | None:
    """The table and label count of a file with nothing to report, else None."""
    start = 0
    while start < len(text):  # past the comment lines and the header row at the top
        end = text.find("\n", start)
        end = len(text) if end < 0 else end + 1
        line = text[start:end].rstrip("\r\n")
        if line and not line.lstrip().startswith("#") and line.split(",", 1)[0].strip() != "YTID":
            break
        start = end
    # The original files put ", " between fields (the row parser skips initial spaces);
    # a space anywhere else fails a check below and leaves the file to the row parser.
    body = text[start:].replace(", ", ",").encode()
    names = ["ytid", "start", "end", "labels"]
    try:
        raw = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=True),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string())),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if raw.num_rows == 0 or raw.column("ytid").null_count or raw.column("labels").null_count:
        return None
    ytid = raw.column("ytid")
    if not pc.all(pc.match_substring_regex(ytid, YTID_RE.pattern)).as_py():
        return None
    start_ms, end_ms = _seconds_column_ms(raw.column("start")), _seconds_column_ms(raw.column("end"))
    if start_ms is None or end_ms is None:
        return None
    # Each label trimmed; an empty one (which the row parser drops) leaves it to that parser.
    lists = pc.split_pattern(raw.column("labels").combine_chunks(), ",")
    values = pc.utf8_trim_whitespace(lists.values)
    if len(values) and not pc.all(pc.greater(pc.utf8_length(values), 0)).as_py():
        return None
    mids = pa.ListArray.from_arrays(lists.offsets, values)
    table = pa.table(
        {
            "ytid": ytid,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "mids": mids,
            "split": pa.array([split], pa.string()).take(pa.array(np.zeros(raw.num_rows, np.int64))),
        },
        schema=SEGMENT_SCHEMA,
    )
    if table.group_by(["ytid", "start_ms"]).aggregate([]).num_rows != table.num_rows:
        return None  # duplicates: the row parser keeps the first and counts the rest
    return table, len(values)


def _parse_segment_rows(text: str, source: str, split: str) -> tuple[pa.Table, SegmentParseReport]:
    """The row-by-row parser: every row checked on its own, every problem reported."""
    report = SegmentParseReport(source=source)
    ytids: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    mids: list[list[str]] = []
    seen: set[tuple[str, int]] = set()
    for line_no, row in _rows(text):
        if not row or (row[0].lstrip().startswith("#")):
            continue
        if row[0].strip() == "YTID":
            continue  # a plain header row
        if len(row) != 4:
            report.malformed.append(f"line {line_no}: expected 4 fields, got {len(row)}")
            continue
        ytid = row[0].strip()
        if not YTID_RE.match(ytid):
            report.malformed.append(f"line {line_no}: bad YTID {ytid!r}")
            continue
        try:
            start, end = seconds_to_ms(row[1]), seconds_to_ms(row[2])
        except ValueError as exc:
            report.malformed.append(f"line {line_no}: {exc}")
            continue
        labels = [m.strip() for m in row[3].split(",") if m.strip()]
        if (ytid, start) in seen:
            report.duplicates += 1
            continue
        seen.add((ytid, start))
        ytids.append(ytid)
        starts.append(start)
        ends.append(end)
        mids.append(labels)
        report.positive_labels += len(labels)
    report.segments = len(ytids)
    table = pa.table(
        {
            "ytid": pa.array(ytids, pa.string()),
            "start_ms": pa.array(starts, pa.int64()),
            "end_ms": pa.array(ends, pa.int64()),
            "mids": pa.array(mids, pa.list_(pa.string())),
            "split": pa.array([split] * len(ytids), pa.string()),
        },
        schema=SEGMENT_SCHEMA,
    )
    return table, report


class SegmentTable:
    """All segments of one run, looked up by YTID in batches.

    AudioSet lists one segment per YTID in each split; where a YTID has several, the clip's
    start picks one (``lookup`` returns them all and :meth:`choose` decides).
    """

    def __init__(self, table: pa.Table):
        self.table = table

    @classmethod
    def concat(cls, tables: Sequence[pa.Table]) -> SegmentTable:
        if not tables:
            return cls(SEGMENT_SCHEMA.empty_table())
        return cls(pa.concat_tables(tables).combine_chunks())

    def __len__(self) -> int:
        return self.table.num_rows

    def lookup(self, ytids: Iterable[str]) -> dict[str, list[Segment]]:
        """Segments for each wanted YTID (one vectorised pass over the table)."""
        wanted = sorted(set(ytids))
        if not wanted:
            return {}
        mask = pc.is_in(self.table["ytid"], value_set=pa.array(wanted, pa.string()))
        found: dict[str, list[Segment]] = {}
        for row in self.table.filter(mask).to_pylist():
            seg = Segment(row["ytid"], row["start_ms"], row["end_ms"], tuple(row["mids"]), row["split"])
            found.setdefault(seg.ytid, []).append(seg)
        return found

    @staticmethod
    def choose(candidates: Sequence[Segment], start_ms: int | None) -> Segment | None:
        """The segment a clip belongs to: its start decides where the YTID has several."""
        if not candidates:
            return None
        if start_ms is None:
            return candidates[0] if len(candidates) == 1 else None
        exact = [s for s in candidates if s.start_ms == start_ms]
        if exact:
            return exact[0]
        if len(candidates) == 1:
            # PANNs-style names carry no start: a lone segment is unambiguous.
            return candidates[0]
        return None


class LabelMap(Mapping[str, str]):
    """MID -> display name, from ``class_labels_indices.csv`` or ``ontology.json``."""

    def __init__(self, names: Mapping[str, str]):
        self._names = dict(names)

    def __getitem__(self, mid: str) -> str:
        return self._names[mid]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    @classmethod
    def parse(cls, text: str, source: str = "<labels>") -> LabelMap:
        """Parse either format, told apart by content (JSON list vs CSV)."""
        stripped = text.lstrip()
        if stripped.startswith("["):
            return cls.from_ontology(json.loads(stripped), source)
        return cls.from_class_labels_csv(text, source)

    @classmethod
    def from_class_labels_csv(cls, text: str, source: str = "<labels>") -> LabelMap:
        reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
        if reader.fieldnames is None or not {"mid", "display_name"} <= set(reader.fieldnames):
            raise ValueError(f"{source}: expected a CSV with columns index,mid,display_name")
        names = {row["mid"].strip(): row["display_name"].strip() for row in reader if row.get("mid")}
        if not names:
            raise ValueError(f"{source}: no labels found")
        return cls(names)

    @classmethod
    def from_ontology(cls, nodes: list[dict], source: str = "<ontology>") -> LabelMap:
        try:
            names = {node["id"]: node["name"] for node in nodes}
        except (TypeError, KeyError) as exc:
            raise ValueError(f"{source}: not an AudioSet ontology.json ({exc})") from exc
        if not names:
            raise ValueError(f"{source}: no labels found")
        return cls(names)

    def resolve(self, mids: Iterable[str]) -> tuple[list[str], list[str], list[str]]:
        """(known MIDs, their display names, unknown MIDs), each in input order."""
        known: list[str] = []
        unknown: list[str] = []
        for mid in mids:
            (known if mid in self._names else unknown).append(mid)
        return known, [self._names[m] for m in known], unknown
