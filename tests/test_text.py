"""nbtasks._text: the one parser or formatter of each kind that the front ends share."""

from __future__ import annotations

import pytest

from nbtasks import TaskStatus
from nbtasks._text import format_duration, match_ids, parse_duration, parse_status, short_id

# --------------------------------------------------------------------------- parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("90 sec", 90.0),
        ("1.5", 1.5),
        ("15m", 900.0),
        ("15min", 900.0),
        (" 2h ", 7200.0),
        ("2H", 7200.0),
        ("7d", 604800.0),
        ("1w", 604800.0),
        ("0", 0.0),
    ],
)
def test_parse_duration_takes_the_units_of_the_cli_and_the_magic(text: str, seconds: float) -> None:
    value = parse_duration(text)
    assert value == seconds and type(value) is float


@pytest.mark.parametrize("text", ["", "soon", "7x", "-3", "nan", "1e400", "10 m s", "m"])
def test_parse_duration_refuses_with_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value) == (
        f"{text!r} is not a duration; write seconds or a number with a unit "
        "(s, sec, m, min, h, d, w), e.g. 90, 90s, 15m, 2h, 7d or 1w"
    )


# --------------------------------------------------------------------------- parse_status


@pytest.mark.parametrize("value", ["RUNNING", "running", "Running", TaskStatus.RUNNING])
def test_parse_status_takes_a_member_or_its_name_in_any_case(value: object) -> None:
    assert parse_status(value, "status") is TaskStatus.RUNNING


@pytest.mark.parametrize("value", ["nope", "", " RUNNING", 5, None])
def test_parse_status_names_the_argument_and_the_statuses(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_status(value, "--status")
    assert str(info.value) == (
        f"--status={value!r} is not a status; expected one of "
        "READY, RUNNING, SUCCESSFUL, FAILED, CANCELLED, INTERRUPTED"
    )


# --------------------------------------------------------------------------- ids


def test_short_id_is_the_random_end_of_a_time_ordered_id() -> None:
    assert short_id("0190a1b2-c3d4-7e5f-8a9b-0123456789ab") == "456789ab"
    assert short_id("abc") == "abc"


IDS = [
    "0190a1b2-c3d4-7e5f-8a9b-0123456789ab",
    "0190a1b2-c3d4-7e5f-8a9b-ffffffff89ab",
    "0190a1b3-0000-7000-8000-000000000001",
]


def test_match_ids_by_start_or_end_ignoring_dashes_and_case() -> None:
    assert match_ids(IDS, IDS[0]) == [IDS[0]]  # a full id
    assert match_ids(IDS, "0190a1b3") == [IDS[2]]  # the start
    assert match_ids(IDS, "0190A1B2C3D4") == IDS[:2]  # dashes and case ignored
    assert match_ids(IDS, short_id(IDS[1])) == [IDS[1]]  # the short id: the end
    assert match_ids(IDS, "89ab") == IDS[:2]  # every id it names, in order
    assert match_ids(IDS, "7e5f") == []  # the middle names nothing
    assert match_ids(IDS, "") == [] and match_ids(IDS, "-") == []
    assert match_ids(iter(IDS), "1") == [IDS[2]]  # any iterable


# --------------------------------------------------------------------------- format_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (0, "0.0 s"), (3.25, "3.2 s"), (42.4, "42 s"), (725, "12:05"), (3723, "1:02:03")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, ""),
        (0.0005, "500µs"),
        (0.0123, "12.3ms"),
        (3.214, "3.21s"),
        (119.0, "119.00s"),
        (150.0, "2.5min"),
        (-1.0, "0µs"),
    ],
)
def test_format_duration_precise(seconds: float | None, text: str) -> None:
    assert format_duration(seconds, precise=True) == text
