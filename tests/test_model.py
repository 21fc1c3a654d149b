"""nbtasks._model: the status state machine, requests, metadata, errors, progress, time."""

from __future__ import annotations

import itertools
import math
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

import nbtasks
from nbtasks import _model
from nbtasks._errors import TaskError
from nbtasks._model import (
    FINISHED,
    MISSING,
    TRANSITIONS,
    IllegalTransition,
    Metadata,
    Progress,
    Request,
    TaskStatus,
    check_transition,
)

ALL = list(TaskStatus)
PAIRS = list(itertools.product(ALL, ALL))
LEGAL = [(a, b) for a, b in PAIRS if b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a, b in PAIRS if b not in TRANSITIONS[a]]


def _ids(pair: tuple[TaskStatus, TaskStatus]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


# --------------------------------------------------------------------------- TaskStatus


def test_status_is_a_str_enum_whose_values_are_its_names() -> None:
    assert [s.value for s in TaskStatus] == [
        "READY",
        "RUNNING",
        "SUCCESSFUL",
        "FAILED",
        "CANCELLED",
        "INTERRUPTED",
    ]
    for s in TaskStatus:
        assert isinstance(s, str)
        assert s == s.name
        assert TaskStatus(s.name) is s
    assert nbtasks.TaskStatus is TaskStatus


def test_finished_statuses() -> None:
    assert {TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED} <= FINISHED
    assert TaskStatus.INTERRUPTED in FINISHED
    assert {s for s in TaskStatus if s.is_finished} == FINISHED
    assert not TaskStatus.READY.is_finished
    assert not TaskStatus.RUNNING.is_finished


def test_transition_table_covers_every_status() -> None:
    assert set(TRANSITIONS) == set(TaskStatus)


def test_transition_table_has_the_designed_edges() -> None:
    """DESIGN principle 2: READY -> RUNNING -> SUCCESSFUL/FAILED/CANCELLED/INTERRUPTED;
    READY -> CANCELLED (and INTERRUPTED: SPEC 5 says READY tasks are interrupted too);
    RUNNING -> READY for a retry. Finished statuses are final."""
    assert {
        TaskStatus.RUNNING,
        TaskStatus.CANCELLED,
        TaskStatus.INTERRUPTED,
    } <= TRANSITIONS[TaskStatus.READY]
    assert TRANSITIONS[TaskStatus.RUNNING] == {
        TaskStatus.READY,
        TaskStatus.SUCCESSFUL,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.INTERRUPTED,
    }
    # READY never jumps to SUCCESSFUL; nothing goes back to READY except a retry.
    assert TaskStatus.SUCCESSFUL not in TRANSITIONS[TaskStatus.READY]
    assert TaskStatus.READY not in TRANSITIONS[TaskStatus.READY]
    assert [a for a in TaskStatus if TaskStatus.READY in TRANSITIONS[a]] == [TaskStatus.RUNNING]
    for s in FINISHED:
        assert TRANSITIONS[s] == frozenset(), s


@pytest.mark.parametrize("pair", LEGAL, ids=_ids)
def test_legal_transition(pair: tuple[TaskStatus, TaskStatus]) -> None:
    check_transition("t1", *pair)  # does not raise


@pytest.mark.parametrize("pair", ILLEGAL, ids=_ids)
def test_illegal_transition_is_a_loud_internal_error(pair: tuple[TaskStatus, TaskStatus]) -> None:
    old, new = pair
    with pytest.raises(IllegalTransition) as info:
        check_transition("t1", old, new)
    message = str(info.value)
    assert "t1" in message and old.value in message and new.value in message
    assert "internal error" in message
    assert isinstance(info.value, nbtasks.NbtasksError)


def test_every_pair_is_either_legal_or_illegal() -> None:
    assert len(LEGAL) + len(ILLEGAL) == len(ALL) ** 2
    assert len(ILLEGAL) > len(LEGAL)


# --------------------------------------------------------------------------- metadata


def test_check_json_accepts_json_values() -> None:
    _model.check_json({"a": [1, 2.5, "x", None, True, {"b": (1, 2)}]}, "v")


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, b"bytes", float("nan"), float("inf"), {1: "int key"}, datetime.now(UTC)],
    ids=["object", "set", "bytes", "nan", "inf", "int-key", "datetime"],
)
def test_check_json_refuses_what_json_cannot_hold_naming_where(value: object) -> None:
    with pytest.raises(TypeError, match="where"):
        _model.check_json({"x": value}, "where")


def test_metadata_refuses_non_json_values_naming_the_key() -> None:
    md = Metadata(a=1)
    with pytest.raises(TypeError, match="'bad'"):
        md["bad"] = object()
    with pytest.raises(TypeError, match="'worse'"):
        md.update(worse={1, 2})
    with pytest.raises(TypeError, match="key"):
        md[3] = "x"  # type: ignore[index]
    with pytest.raises(TypeError, match="'deflt'"):
        md.setdefault("deflt", object())
    assert md == {"a": 1}


def test_as_metadata() -> None:
    assert _model.as_metadata(None) == {}
    assert _model.as_metadata({"k": [1]}) == {"k": [1]}
    with pytest.raises(TypeError, match="metadata"):
        _model.as_metadata(["not", "a", "dict"])
    with pytest.raises(TypeError, match=r"metadata.*'k'"):
        _model.as_metadata({"k": object()})


# --------------------------------------------------------------------------- Request


def test_request_fields_and_meta_alias() -> None:
    req = Request(task_name="demo.add", args=[1], kwargs={"y": 2}, metadata={"user_id": "dol"})
    assert isinstance(req.metadata, Metadata)
    assert req.meta is req.metadata
    assert (req.retries, req.priority, req.id, req.parent_id, req.worker_id) == (
        0,
        0,
        None,
        None,
        None,
    )
    assert req.eta is None and req.expires is None
    req.metadata["k"] = "v"
    assert req.meta == {"user_id": "dol", "k": "v"}
    assert req.get("task_name") == "demo.add"
    assert req.get("nope", 5) == 5


def test_request_meta_assignment_adds_keys_and_never_deletes() -> None:
    req = Request(task_name="t", args=[], kwargs={}, metadata={"kept": 1})
    req.meta = {"some_key": "some_value"}
    assert req.metadata == {"kept": 1, "some_key": "some_value"}
    with pytest.raises(TypeError, match=r"request\.meta"):
        req.meta = {"bad": object()}


def test_request_metadata_tuple_comes_back_as_a_list_when_stored() -> None:
    # Metadata is JSON: a tuple is accepted (Mognet warns that type information is lost).
    req = Request(task_name="t", args=[], kwargs={}, metadata={"t": (1, 2)})
    assert list(req.metadata["t"]) == [1, 2]


def test_metadata_reads_as_json_at_once_however_it_is_set() -> None:
    """A tuple reads back as a list in the process that set it, not only after a restart."""
    m = Metadata({"a": (1, (2, 3))})
    m["b"] = (4,)
    m.update(c=({"d": (5,)},))
    m |= {"e": ()}
    assert m.setdefault("f", (6,)) == [6]
    assert m == {"a": [1, [2, 3]], "b": [4], "c": [{"d": [5]}], "e": [], "f": [6]}
    req = Request(task_name="t", args=[], kwargs={}, metadata={"t": (1, 2)})
    req.meta = {"u": (3,)}
    assert req.metadata == {"t": [1, 2], "u": [3]}
    assert Request(task_name="t", args=[], kwargs={}).root_id is None


# --------------------------------------------------------------------------- TaskError


def test_task_error_imports_its_exception_class() -> None:
    err = TaskError("builtins.ZeroDivisionError", "Traceback ...", "division by zero")
    assert err.exception_class is ZeroDivisionError
    assert TaskError("nbtasks.TaskTimeout", "").exception_class is nbtasks.TaskTimeout
    nested = TaskError("datetime.datetime", "")
    assert nested.exception_class is datetime
    assert TaskError.from_json(err.to_json()) == err
    assert TaskError.from_json({"cls": "x.Y"}) == TaskError("x.Y", "", "")


def test_task_error_is_frozen() -> None:
    err = TaskError("builtins.ValueError", "tb")
    with pytest.raises(AttributeError):
        err.traceback = "other"  # type: ignore[misc]


def test_task_error_is_the_base_of_task_failed_so_except_catches_it() -> None:
    """``except nbtasks.TaskError`` is valid (django-tasks users write it) and catches the
    TaskFailed that ``return_value`` raises, whose fields are the last failed attempt's."""
    assert nbtasks.TaskError is TaskError and issubclass(nbtasks.TaskFailed, TaskError)
    failed = nbtasks.TaskFailed(
        "task t[1] failed: builtins.KeyError: 'k'", "builtins.KeyError", "tb", "'k'"
    )
    try:
        raise failed
    except nbtasks.TaskError as caught:
        assert caught.exception_class is KeyError and caught.traceback == "tb"
        assert str(caught) == "task t[1] failed: builtins.KeyError: 'k'"
    assert str(TaskError("builtins.KeyError", "tb", "'k'")) == "builtins.KeyError: 'k'"
    # Both pickle (they cross processes) with their fields.
    import pickle

    back = pickle.loads(pickle.dumps(failed))
    assert (back.exception_class_path, back.traceback, back.message, str(back)) == (
        "builtins.KeyError",
        "tb",
        "'k'",
        str(failed),
    )
    assert pickle.loads(pickle.dumps(TaskError("x.Y", "tb", "m"))) == TaskError("x.Y", "tb", "m")


# --------------------------------------------------------------------------- Progress


def test_progress_fraction_eta_and_text() -> None:
    p = Progress(25, 100, "loading", rate=5.0)
    assert p.fraction == 0.25
    assert p.eta == 15.0
    assert str(p) == "25/100 loading"
    assert Progress(3).fraction is None and Progress(3).eta is None
    assert str(Progress(3)) == "3"
    assert Progress(5, 0).fraction is None
    assert Progress(150, 100).fraction == 1.0
    assert Progress(-1, 100).fraction == 0.0
    assert Progress(1, 10, rate=0).eta is None
    assert Progress(20, 10, rate=1).eta == 0.0


def test_progress_json_round_trip() -> None:
    p = Progress(1.5, 3, None, 0.5)
    assert Progress.from_json(p.to_json()) == p
    assert Progress.from_json(None) is None


def test_aggregate_progress() -> None:
    agg = _model.aggregate_progress([Progress(1, 2), None, Progress(3)], finished=2, count=5)
    assert agg == Progress(2.5, 5.0)
    assert agg.fraction == 0.5
    assert _model.aggregate_progress([], 4, 4).fraction == 1.0


# --------------------------------------------------------------------------- sentinel and time


def test_missing_is_a_falsy_singleton_distinct_from_none() -> None:
    assert MISSING is type(MISSING)()
    assert not MISSING
    assert MISSING is not None
    assert repr(MISSING) == "MISSING"


def test_to_datetime_is_aware_utc() -> None:
    assert _model.to_datetime(None) is None
    d = _model.to_datetime(0.0)
    assert d == datetime(1970, 1, 1, tzinfo=UTC)
    assert d is not None and d.utcoffset() == timedelta(0)


def test_to_timestamp_refuses_naive_datetimes_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="eta"):
        _model.to_timestamp(datetime(2030, 1, 1), "eta")
    aware = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    assert _model.to_timestamp(aware, "eta") == aware.timestamp()


def test_system_clock_is_a_clock() -> None:
    clock: _model.Clock = _model.SYSTEM_CLOCK
    assert math.isclose(clock.time(), datetime.now(UTC).timestamp(), abs_tol=5)
    a = clock.monotonic()
    condition = threading.Condition()
    with condition:
        clock.wait(condition, a)  # a deadline already reached: returns at once
    assert clock.monotonic() >= a
