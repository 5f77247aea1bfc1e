"""The seed's CSV format: float text, quoting of string ids, row order and atomic writes."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aum_replay.csvout import (
    FULL_COLUMNS,
    VALUES_COLUMNS,
    AtomicCsv,
    format_floats,
    sort_values,
)

EDGE_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -3.785,
    0.1,
    0.20000001788139343,
    1e-4,
    9.999999e-5,
    1e-5,
    1.5e-9,
    1e-9,
    9.99e-10,
    1e-17,
    5e-324,
    2.2250738585072014e-308,
    1e15,
    1e16,
    1.2345e16,
    123456789012345678.0,
    1e20,
    1e22,
    -1e22,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
]


def test_edge_floats_are_written_as_repr() -> None:
    assert format_floats(np.array(EDGE_FLOATS)).to_list() == [repr(v) for v in EDGE_FLOATS]


@given(st.lists(st.floats(allow_nan=False, allow_subnormal=True), max_size=50))
def test_any_float_is_written_as_repr(values: list[float]) -> None:
    assert format_floats(np.array(values, dtype=np.float64)).to_list() == [repr(v) for v in values]


@given(st.lists(st.floats(width=32, allow_nan=False), max_size=50))
def test_widened_float32_is_written_as_repr(values: list[float]) -> None:
    widened = np.array(values, dtype=np.float32).astype(np.float64)
    assert format_floats(widened).to_list() == [repr(float(v)) for v in widened]


def test_nan_is_null() -> None:
    out = format_floats(np.array([1.0, math.nan, -math.nan, 2e-5]))
    assert out.to_list() == ["1.0", None, None, "2e-05"]


def written(path: Path) -> str:
    return path.read_bytes().decode()


def pandas_text(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


AWKWARD_IDS = [
    "plain",
    "a,b",
    'q"t',
    '"',
    '",",',
    "new\nline",
    "é😀",
    "中文,ids",
    " spaced ",
    "tab\tx",
    "#hash",
    "",
    "1e5",
    "nan",
]


def test_string_ids_are_quoted_like_pandas(tmp_path: Path) -> None:
    aum = np.array([0.5 * i - 2 for i in range(len(AWKWARD_IDS))])
    aum[3] = math.nan
    ids = np.array(AWKWARD_IDS, dtype=np.str_)
    path = tmp_path / "aum_values.csv"
    with AtomicCsv(path, VALUES_COLUMNS) as csv:
        csv.write({"sample_id": ids, "aum": aum})
    expected = pandas_text(pd.DataFrame({"sample_id": AWKWARD_IDS, "aum": aum}))
    assert written(path) == expected


def test_carriage_return_is_quoted(tmp_path: Path) -> None:
    # pandas (Python's csv with a "\n" terminator) leaves a bare "\r" unquoted and then cannot
    # read its own file back; RFC 4180 quotes it, and the file reads back intact.
    path = tmp_path / "aum_values.csv"
    with AtomicCsv(path, VALUES_COLUMNS) as csv:
        csv.write({"sample_id": np.array(["cr\rx", "y"], dtype=object), "aum": np.ones(2)})
    assert written(path) == 'sample_id,aum\n"cr\rx",1.0\ny,1.0\n'
    back = pd.read_csv(path)
    assert back["sample_id"].tolist() == ["cr\rx", "y"]


@given(
    st.lists(
        st.tuples(
            st.text(
                st.characters(blacklist_categories=["Cs"], blacklist_characters="\r"), max_size=6
            ),
            st.floats(width=32),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_random_string_ids_match_pandas(rows: list[tuple[str, float]]) -> None:
    ids = [i for i, _ in rows]
    aum = np.array([a for _, a in rows], dtype=np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "aum_values.csv"
        with AtomicCsv(path, VALUES_COLUMNS) as csv:
            csv.write({"sample_id": np.array(ids, dtype=object), "aum": aum})
        text = written(path)
    assert text == pandas_text(pd.DataFrame({"sample_id": ids, "aum": aum}))


def test_full_records_match_pandas(tmp_path: Path) -> None:
    n = 6
    columns = {
        "sample_id": np.arange(n, dtype=np.int64) * 1000,
        "num_measurements": np.arange(1, n + 1, dtype=np.int64),
        "target_logit": np.array([0, 3, 1, 2, 9, 4], dtype=np.int64),
        "target_val": np.array([0.1, -0.0, 1e-5, 3e20, math.inf, 2.5]),
        "other_logit": np.array([1, 0, 0, 0, 1, 0], dtype=np.int64),
        "other_val": np.array([math.nan, 1.0, 1e16, -1e-7, 0.0, 2.5]),
        "margin": np.array([math.nan, -1.0, -1e16, 3e20, math.inf, 0.0]),
        "aum": np.array([math.nan, -1.0, -5e15, 1.5e20, math.inf, 1 / 3]),
    }
    path = tmp_path / "full_aum_records.csv"
    with AtomicCsv(path, FULL_COLUMNS) as csv:
        csv.write(columns)
    assert written(path) == pandas_text(pd.DataFrame(columns))


def test_pieces_append_in_order(tmp_path: Path) -> None:
    path = tmp_path / "aum_values.csv"
    with AtomicCsv(path, VALUES_COLUMNS) as csv:
        csv.write({"sample_id": np.array([3, 1]), "aum": np.array([2.0, 1.0])})
        csv.write({"sample_id": np.array([2]), "aum": np.array([0.5])})
    assert written(path) == "sample_id,aum\n3,2.0\n1,1.0\n2,0.5\n"


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "aum_values.csv"
    csv = AtomicCsv(path, VALUES_COLUMNS)
    csv.write({"sample_id": np.array([1]), "aum": np.array([1.0])})
    assert csv.tmp_path.exists() and not path.exists()
    csv.abort()
    assert list(tmp_path.iterdir()) == []


def test_error_inside_with_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "aum_values.csv"
    path.write_text("old contents\n")
    with pytest.raises(RuntimeError), AtomicCsv(path, VALUES_COLUMNS) as csv:
        csv.write({"sample_id": np.array([1]), "aum": np.array([1.0])})
        raise RuntimeError("boom")
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["aum_values.csv"]


def test_commit_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "aum_values.csv"
    path.write_text("old contents\n")
    csv = AtomicCsv(path, VALUES_COLUMNS)
    csv.write({"sample_id": np.array([1]), "aum": np.array([1.0])})
    assert path.read_text() == "old contents\n"  # nothing visible before commit
    assert csv.commit() == path
    assert written(path) == "sample_id,aum\n1,1.0\n"
    assert [p.name for p in tmp_path.iterdir()] == ["aum_values.csv"]


def test_sort_values_desc_nan_last_ties_by_id() -> None:
    ids = np.array([5, 3, 9, 1, 7, 2])
    aum = np.array([1.0, math.nan, 1.0, 2.0, -math.inf, math.nan])
    order = sort_values(ids, aum)
    assert ids[order].tolist() == [1, 5, 9, 7, 2, 3]


def test_sort_values_string_ids_by_code_point() -> None:
    ids = np.array(["b", "B", "a", "é", "A"], dtype=np.str_)
    order = sort_values(ids, np.zeros(5))
    assert ids[order].tolist() == ["A", "B", "a", "b", "é"]


def test_sort_values_negative_zero_ties_with_zero() -> None:
    ids = np.array([2, 1])
    assert ids[sort_values(ids, np.array([0.0, -0.0]))].tolist() == [1, 2]


@given(
    st.lists(
        st.sampled_from([0.0, -0.0, 1.5, -1.5, 2.0, math.nan, math.inf, -math.inf]), max_size=30
    ),
    st.booleans(),
)
def test_sort_values_matches_the_definition(values: list[float], ascending_ids: bool) -> None:
    """Both paths (ids already ascending, or not) give aum descending, NaN last, ties by id."""
    ids = np.arange(len(values)) * 3 - 7
    if not ascending_ids:
        ids = ids[::-1].copy()
    aum = np.array(values, dtype=np.float64)
    want = sorted(
        range(len(values)),
        key=lambda i: (math.isnan(values[i]), 0.0 if math.isnan(values[i]) else -values[i], ids[i]),
    )
    assert sort_values(ids, aum).tolist() == want


@given(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.lists(st.integers(0, 3000), min_size=1, max_size=400),
    st.lists(st.sampled_from([0.0, -0.0, math.nan, math.inf]), max_size=5),
)
def test_sort_values_orders_keys_apart_in_their_last_bits(
    base: float, ulps: list[int], extra: list[float]
) -> None:
    """Values a few ulps apart (and repeated): the fast path packs each position into a key's
    low bits, so keys that differ only there must still come out in exact order."""
    steps = np.array(ulps, dtype=np.int64)
    start = np.float64(base).view(np.int64)
    values = [*(start + steps).view(np.float64).tolist(), *extra]
    aum = np.array(values, dtype=np.float64)
    ids = np.arange(len(values))
    want = sorted(
        range(len(values)),
        key=lambda i: (math.isnan(values[i]), 0.0 if math.isnan(values[i]) else -values[i], i),
    )
    assert sort_values(ids, aum, ascending_ids=True).tolist() == want
