"""Sample keys: tagcap's own, and the shapes of clip names found in the wild.

tagcap's key is ``Y<YTID>_<start_ms>`` (``Y--PJHxphWEs_30000``): stable, unique per
segment, reversible to (YTID, start), with no ``.`` (WebDataset and LAION-CLAP split member
names at the first dot) and never a leading ``_``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tagcap.schemas.audioset import YTID_RE, seconds_to_ms

_KEY_RE = re.compile(r"^Y(?P<ytid>[A-Za-z0-9_-]{11})_(?P<ms>\d+)$")
# [Y]<YTID>_<start>_<end>, seconds with or without decimals: --PJHxphWEs_30.000_40.000
_SEGMENT_NAME_RE = re.compile(r"^Y?(?P<ytid>[A-Za-z0-9_-]{11})_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)$")
# Y<YTID> as in PANNs downloads (no start in the name)
_PANNS_NAME_RE = re.compile(r"^Y(?P<ytid>[A-Za-z0-9_-]{11})$")


@dataclass(frozen=True)
class ClipId:
    """What a clip's name or JSON says about its AudioSet segment."""

    ytid: str
    start_ms: int | None  # None where the name carries no start (PANNs' Y<YTID>)


def make_key(ytid: str, start_ms: int) -> str:
    if not YTID_RE.match(ytid):
        raise ValueError(f"not a YTID: {ytid!r}")
    if start_ms < 0:
        raise ValueError(f"negative start: {start_ms}")
    return f"Y{ytid}_{int(start_ms)}"


def parse_key(key: str) -> ClipId:
    """Inverse of :func:`make_key`."""
    match = _KEY_RE.match(key)
    if not match:
        raise ValueError(f"not a tagcap key: {key!r}")
    return ClipId(match["ytid"], int(match["ms"]))


def parse_clip_name(stem: str) -> ClipId:
    """Read (YTID, start) from a file name or tar key without its extension.

    Accepted, in the order tried (a YTID may itself begin with ``Y``, ``-`` or ``_``, so the
    most specific shape wins): tagcap's key; ``[Y]<YTID>_<start>_<end>``; ``Y<YTID>``;
    a bare 11-character YTID.
    """
    base = stem.rsplit("/", 1)[-1]
    if m := _KEY_RE.match(base):
        return ClipId(m["ytid"], int(m["ms"]))
    if m := _SEGMENT_NAME_RE.match(base):
        return ClipId(m["ytid"], seconds_to_ms(m["start"]))
    if m := _PANNS_NAME_RE.match(base):
        return ClipId(m["ytid"], None)
    if YTID_RE.match(base):
        return ClipId(base, None)
    raise ValueError(f"cannot read a YouTube id from the name {base!r}")


def clip_id_from_json(meta: dict) -> ClipId | None:
    """(YTID, start) from a sample's JSON fields ``ytid`` / ``start_seconds``, if present."""
    ytid = meta.get("ytid")
    if not isinstance(ytid, str):
        return None
    if not YTID_RE.match(ytid):
        raise ValueError(f"json field ytid is not a YouTube id: {ytid!r}")
    start = meta.get("start_seconds")
    if start is None:
        return ClipId(ytid, None)
    if isinstance(start, bool) or not isinstance(start, (int, float, str)):
        raise ValueError(f"json field start_seconds is not a number: {start!r}")
    start_ms = round(float(start) * 1000)
    if start_ms < 0:
        raise ValueError(f"json field start_seconds is negative: {start!r}")
    return ClipId(ytid, start_ms)
