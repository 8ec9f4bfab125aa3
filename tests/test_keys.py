import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagcap.schemas.keys import ClipId, clip_id_from_json, make_key, parse_clip_name, parse_key

ytids = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=11, max_size=11)


@given(ytids, st.integers(min_value=0, max_value=10**9))
def test_key_is_reversible_and_webdataset_safe(ytid, start_ms):
    key = make_key(ytid, start_ms)
    assert "." not in key and not key.startswith("_")
    assert parse_key(key) == ClipId(ytid, start_ms)
    assert parse_clip_name(key) == ClipId(ytid, start_ms)


@given(ytids, st.integers(min_value=0, max_value=100000), st.booleans(), st.booleans())
def test_segment_file_names_parse(ytid, start_s, with_y, decimals):
    start = f"{start_s}.000" if decimals else str(start_s)
    end = f"{start_s + 10}.000" if decimals else str(start_s + 10)
    name = ("Y" if with_y else "") + f"{ytid}_{start}_{end}"
    assert parse_clip_name(name) == ClipId(ytid, start_s * 1000)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("--PJHxphWEs_30.000_40.000", ClipId("--PJHxphWEs", 30000)),
        ("Y--PJHxphWEs_30.000_40.000", ClipId("--PJHxphWEs", 30000)),
        ("Y--PJHxphWEs", ClipId("--PJHxphWEs", None)),  # PANNs download name
        ("YYabcdefghij", ClipId("Yabcdefghij", None)),  # a YTID that begins with Y
        ("_abcdefghij", ClipId("_abcdefghij", None)),  # bare YTID may begin with _
        ("_abcdefghi", None),
        ("Y--PJHxphWEs_30000", ClipId("--PJHxphWEs", 30000)),  # tagcap's own key
        ("dir/sub/Y--PJHxphWEs_30000", ClipId("--PJHxphWEs", 30000)),
        ("4-182395-A-0", None),
    ],
)
def test_names_in_the_wild(name, expected):
    if expected is None:
        with pytest.raises(ValueError):
            parse_clip_name(name)
    else:
        assert parse_clip_name(name) == expected


def test_json_fields_win_and_are_checked():
    assert clip_id_from_json({"ytid": "--PJHxphWEs", "start_seconds": 30.0}) == ClipId("--PJHxphWEs", 30000)
    assert clip_id_from_json({"ytid": "--PJHxphWEs"}) == ClipId("--PJHxphWEs", None)
    assert clip_id_from_json({"caption": "x"}) is None
    for bad in (
        {"ytid": "short"},
        {"ytid": "--PJHxphWEs", "start_seconds": [1]},
        {"ytid": "--PJHxphWEs", "start_seconds": -3},
    ):
        with pytest.raises(ValueError):
            clip_id_from_json(bad)
