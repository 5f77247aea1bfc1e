"""Epoch selection: the grammar, its resolution against a run's epochs, and its errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aum_replay.epochs import parse_epochs
from aum_replay.errors import InputError

RUN = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
GAPPY = [0, 2, 3, 7, 11]


@pytest.mark.parametrize(
    ("spec", "available", "expected"),
    [
        (None, RUN, RUN),
        ("all", RUN, RUN),
        ("3", RUN, [3]),
        ("1:4", RUN, [1, 2, 3]),
        ("7:", RUN, [7, 8, 9]),
        (":2", RUN, [0, 1]),
        (":", RUN, RUN),
        ("0,5,9", RUN, [0, 5, 9]),
        ("skip:1", RUN, RUN[1:]),
        ("skip:0", RUN, RUN),
        ("first:3", RUN, [0, 1, 2]),
        ("last:2", RUN, [8, 9]),
        ("last:99", RUN, RUN),
        ("1:150", RUN, RUN[1:]),  # the paper: skip epoch 0, stop at the LR drop
        ("0:2,8:", RUN, [0, 1, 8, 9]),
        ("first:2, last:2", RUN, [0, 1, 8, 9]),
        ("1:3,2:5,4", RUN, [1, 2, 3, 4]),  # overlapping terms: a union, no repeats
        ("9,1,5", RUN, [1, 5, 9]),  # always ascending
        (" 1 : 3 ", RUN, [1, 2]),
        ("all,3", RUN, RUN),
        # Ranges are epoch numbers; skip/first/last count the epochs the run has.
        ("2:8", GAPPY, [2, 3, 7]),
        ("skip:2", GAPPY, [3, 7, 11]),
        ("first:2", GAPPY, [0, 2]),
        ("last:2", GAPPY, [7, 11]),
        ("1,2,11", GAPPY, [2, 11]),
    ],
)
def test_selection(spec: str | None, available: list[int], expected: list[int]) -> None:
    assert parse_epochs(spec).apply(available) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",  # an empty --epochs is a mistake (a shell variable that was not set), not "all"
        " ",
        ",",
        "x",
        "1:2:3",
        "-1",
        "1-3",
        "skip:",
        "skip",
        "last:-1",
        "first:x",
        "1,,2",
        "1,",
        "3.5",
        "²",
        "1:²",
        "skip:2x",
        "middle:3",
        "１",
    ],
)
def test_malformed_raises_input_error(spec: str) -> None:
    with pytest.raises(InputError) as info:
        parse_epochs(spec)
    message = str(info.value)
    assert repr(spec) in message and "skip:K" in message


@pytest.mark.parametrize("spec", ["20", "20:30", "last:0", "first:0", "5:3", "4,5,6:9"])
def test_selection_matching_nothing_lists_the_run(spec: str) -> None:
    selection = parse_epochs(spec)
    with pytest.raises(InputError) as info:
        selection.apply([0, 2, 3])
    message = str(info.value)
    assert repr(spec) in message
    assert "0, 2, 3" in message


def test_long_contiguous_run_is_described_as_a_range() -> None:
    with pytest.raises(InputError, match=r"0\.\.199"):
        parse_epochs("500").apply(range(200))


def test_apply_accepts_unsorted_repeated_input() -> None:
    assert parse_epochs("last:2").apply([5, 1, 3, 5, 1]) == [3, 5]


@given(
    st.sets(st.integers(0, 40), min_size=1, max_size=15),
    st.integers(0, 45),
    st.integers(0, 45),
)
def test_range_is_a_python_slice_of_numbers(epochs: set[int], lo: int, hi: int) -> None:
    expected = [e for e in sorted(epochs) if lo <= e < hi]
    selection = parse_epochs(f"{lo}:{hi}")
    if expected:
        assert selection.apply(epochs) == expected
    else:
        with pytest.raises(InputError):
            selection.apply(epochs)


@given(st.sets(st.integers(0, 40), min_size=1, max_size=15), st.integers(0, 20))
def test_skip_and_first_partition_the_run(epochs: set[int], k: int) -> None:
    ordered = sorted(epochs)
    if k > 0:
        assert parse_epochs(f"first:{k}").apply(epochs) == ordered[:k]
    if k < len(ordered):
        assert parse_epochs(f"skip:{k}").apply(epochs) == ordered[k:]
        assert parse_epochs(f"last:{len(ordered) - k}").apply(epochs) == ordered[k:]
