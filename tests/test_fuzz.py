"""Fuzz (hypothesis): bad input gets a clear TypeError/ValueError, never an internal error,
and never a half-written record.

``apply_async`` options, metadata values (at submit, ``set_metadata``, ``request.meta``,
``update_state``), ``progress()`` arguments, the ``nbtasks`` command line and ``%tasks``
lines. After each example the store's record count is what it should be, and listing it still
works. The values include text that UTF-8 cannot hold (lone surrogates), values that contain
themselves and values nested past ``MAX_DEPTH``; a refused call leaves no trace
(tests/test_inputs.py has one example of each, by name).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import math
import numbers
import string
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import nbtasks
from nbtasks import _cli
from nbtasks._model import MAX_DEPTH, TaskStatus
from nbtasks._options import CALL_OPTIONS

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
CLEAR = (TypeError, ValueError)

#: Text with a lone surrogate: a str that has no UTF-8 form (e.g. from surrogateescape).
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
surrogate_text = st.builds(
    lambda a, c, b: a + c + b, st.text(max_size=3), surrogates, st.text(max_size=3)
)


@pytest.fixture
def fuzz_app(tmp_path: Path) -> Iterator[nbtasks.App]:
    a = nbtasks.App(store=tmp_path / "store", workers=2)
    try:
        yield a
    finally:
        a.shutdown(wait=True, cancel_pending=True)


def _strict_json(text: str) -> Any:
    """json.loads that refuses NaN/Infinity, as SQLite's JSON functions do."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _listing_works(app: nbtasks.App) -> int:
    """What ``%tasks`` and ``nbtasks list`` read: it must keep working, whatever was stored."""
    n = app.store.count()
    rows = app.store.summaries(limit=None)
    assert len(rows) == n
    for r in app.results():
        r.status  # noqa: B018
    raw = app.store.reader.rows("SELECT value FROM Cache WHERE key >= 't:' AND key < 't;'", [])
    for (text,) in raw:
        _strict_json(text)  # every record is JSON that SQLite can read
    return n


# --------------------------------------------------------------------------- values

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
oddities = st.sampled_from(
    [
        b"bytes",
        (1, 2),
        {1, 2},
        object(),
        ValueError,
        (ValueError, KeyError),
        [ValueError, "x"],
        dt.datetime(2030, 1, 1),  # naive
        dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
        dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, tzinfo=dt.UTC),
        dt.timedelta(seconds=5),
        dt.timedelta(days=-1),
        dt.timedelta.max,
        1e300,
        -0.0,
        2**63,
        complex(1, 2),
        "thread",
        "inline",
        "bogus",
        "",
        " ",
        "\ud800",
        "id-\udcff",
    ]
)
values = st.one_of(
    scalars,
    oddities,
    surrogate_text,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), scalars, max_size=3),
)


# --------------------------------------------------------------------------- apply_async


@FUZZ
@given(
    options=st.dictionaries(
        st.one_of(st.sampled_from(sorted(CALL_OPTIONS)), st.text(max_size=6)), values, max_size=4
    )
)
@example(options={"countdown": 1e300})
@example(options={"expires": 1e300})
@example(options={"eta": dt.datetime(9999, 12, 31, tzinfo=dt.UTC)})
@example(options={"priority": 2**70})
@example(options={"task_id": "a:b"})
@example(options={"task_id": "\ud800"})
@example(options={"metadata": {"k": "\udcff"}})
def test_apply_async_options(fuzz_app: nbtasks.App, options: dict[str, Any]) -> None:
    assume(options.get("executor") not in ("process", "dask"))  # pools, clusters: elsewhere

    @fuzz_app.task(name="fuzz.echo")
    def echo(x: Any) -> Any:
        return x

    before = fuzz_app.store.count()
    try:
        r = echo.apply_async((1,), **options)
    except CLEAR as exc:
        assert str(exc), type(exc)
        assert not isinstance(exc, UnicodeError), exc  # a ValueError, but from deep inside
        assert fuzz_app.store.count() == before  # nothing stored for a refused submit
        return
    assert fuzz_app.store.count() == before + 1
    assert fuzz_app.store.read_record(r.id)["status"] in {s.value for s in TaskStatus}
    r.cancel()
    _listing_works(fuzz_app)


@pytest.mark.parametrize("option", ["countdown", "expires"])
def test_bug_a_countdown_past_year_9999_is_a_value_error(
    fuzz_app: nbtasks.App, option: str
) -> None:
    @fuzz_app.task(name="fuzz.echo")
    def echo(x: Any) -> Any:
        return x

    with pytest.raises(ValueError, match=option):
        echo.apply_async((1,), **{option: 1e300})
    assert fuzz_app.store.count() == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_bug_a_huge_countdown_does_not_stop_the_timer(fuzz_app: nbtasks.App) -> None:
    @fuzz_app.task(name="fuzz.echo")
    def echo(x: Any) -> Any:
        return x

    try:
        far = echo.apply_async((1,), countdown=threading.TIMEOUT_MAX * 2)
    except ValueError:
        far = None  # refused at submit: fine too
    if far is not None:  # the supervisor holds its timer: a wait that long must not kill it
        wait_until(lambda: fuzz_app._runtime.supervisor.due(far.id) is not None)
    assert echo.apply_async((2,), countdown=0.05).get(5) == 2
    if far is not None:
        assert far.cancel()


# --------------------------------------------------------------------------- metadata

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


def _nested(levels: int, leaf: Any) -> Any:
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def _contains_itself(kind: str) -> Any:
    if kind == "dict":
        d: dict[str, Any] = {"a": 1}
        d["self"] = d
        return d
    inner: list[Any] = [1]
    outer = [{"x": inner}]
    inner.append(outer)
    return outer


#: Values made fresh for each example (a cycle cannot be shared between examples).
structures = st.one_of(
    st.sampled_from(["dict", "list"]).map(_contains_itself),
    st.integers(min_value=1, max_value=MAX_DEPTH + 3).flatmap(
        lambda n: json_values.map(lambda leaf: _nested(n, leaf))
    ),
    st.just(10_000).map(lambda n: _nested(n, 0)),
)
metadata_values = st.one_of(
    json_values,
    values,
    st.tuples(json_values, json_values),
    structures,
    st.recursive(surrogate_text, lambda inner: st.lists(inner, max_size=2), max_leaves=3),
    st.dictionaries(surrogate_text, json_values, min_size=1, max_size=2),
)
metadata_keys = st.one_of(st.text(min_size=1, max_size=6), surrogate_text)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_json(value: Any, depth: int = 0, outer: tuple[int, ...] = ()) -> bool:
    """What the metadata contract accepts: JSON whose text is UTF-8, at most MAX_DEPTH
    containers deep, and no value inside itself."""
    if value is None or type(value) in (bool, int):
        return True
    if type(value) is str:
        return _utf8(value)
    if type(value) is float:
        return math.isfinite(value)
    if type(value) not in (list, tuple, dict):
        return False
    if id(value) in outer or depth >= MAX_DEPTH:
        return False
    outer = (*outer, id(value))
    if type(value) is dict:
        return all(
            type(k) is str and _utf8(k) and _is_json(v, depth + 1, outer) for k, v in value.items()
        )
    return all(_is_json(v, depth + 1, outer) for v in value)


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


@FUZZ
@given(key=metadata_keys, value=metadata_values)
@example(key="k", value=_nested(MAX_DEPTH, 1))
@example(key="k", value=_nested(MAX_DEPTH + 1, 1))
@example(key="\ud800", value=1)
def test_metadata_values(fuzz_app: nbtasks.App, key: str, value: Any) -> None:
    @fuzz_app.task(name="fuzz.meta", bind=True)
    def meta(self: Any, how: str) -> str:
        try:
            if how == "set_metadata":
                self.set_metadata(**{key: value})
            elif how == "update_state":
                self.update_state(state="PROGRESS", meta={key: value})
            else:
                self.request.meta = {key: value}
        except CLEAR as exc:
            return f"refused: {type(exc).__name__}: {exc}"
        return "accepted"

    ok = _is_json(value) and _utf8(key)
    before = fuzz_app.store.count()
    try:
        r = meta.apply_async(("submit",), metadata={key: value})
    except CLEAR as exc:
        assert not ok, (value, exc)
        assert fuzz_app.store.count() == before
    else:
        assert ok, value
        r.wait(10)
        assert r.metadata[key] == _as_json(value)
    for how in ("set_metadata", "update_state", "request.meta"):
        r = meta.apply((how,))
        assert r.status is TaskStatus.SUCCESSFUL, (how, r.errors)
        fuzz_app.store.flush()
        outcome = r.return_value
        # update_state's meta is {key: value}: one level deeper than a metadata value
        if ok if how != "update_state" else _is_json({key: value}):
            assert outcome == "accepted", (how, outcome)
            stored = fuzz_app.store.read_record(r.id)
            if how == "update_state":
                assert r.state == "SUCCESSFUL"
            else:
                assert stored["metadata"][key] == _as_json(value)
        else:
            assert outcome.startswith("refused: TypeError"), (how, outcome)
            assert key in outcome or repr(key) in outcome, (how, outcome)  # names the key
            assert key not in (fuzz_app.store.read_record(r.id).get("metadata") or {})
    _listing_works(fuzz_app)


# --------------------------------------------------------------------------- progress

numbers_and_junk = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.sampled_from([b"1", [1], object(), 1 + 2j, True]),
    st.sampled_from([10**400, -(10**400), Fraction(1, 3), Fraction(10**400)]),  # past floats
)
messages = st.one_of(
    st.none(), st.text(max_size=20), surrogate_text, st.integers(), st.binary(max_size=3)
)


def _number_ok(value: Any, none_ok: bool) -> bool:
    if value is None:
        return none_ok
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _message_ok(value: Any) -> bool:
    return value is None or (type(value) is str and _utf8(value))


def _as_stored(value: Any) -> Any:
    """A progress number as the task holds it: int and float as they are, else a float."""
    if value is None or type(value) in (int, float):
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _finite(value: Any) -> bool:
    try:
        return value is None or math.isfinite(value)
    except OverflowError:  # an int past float's range
        return False


@FUZZ
@given(
    calls=st.lists(
        st.tuples(
            numbers_and_junk,
            numbers_and_junk,
            messages,
        ),
        min_size=1,
        max_size=4,
    )
)
@example(calls=[(float("nan"), None, None)])
@example(calls=[(1, float("inf"), "x"), (float("-inf"), 2, None)])
@example(calls=[(5, 10, "ok"), (6, None, 0), (7, "x", None), (8, 20, "\ud800")])
@example(calls=[(10**400, None, None)])
@example(calls=[(-1e308, None, None), (1e308, None, None)])
def test_progress_arguments(fuzz_app: nbtasks.App, calls: list[tuple[Any, Any, Any]]) -> None:
    """Each call is accepted exactly when its arguments are good, and a refused call changes
    nothing: the stored progress is that of the last accepted calls."""

    @fuzz_app.task(name="fuzz.progress", bind=True)
    def report(self: Any) -> list[str]:
        seen = []
        for current, total, message in calls:
            try:
                self.progress(current, total, message)
                seen.append("ok")
            except CLEAR as exc:
                assert str(exc)
                seen.append(type(exc).__name__)
        return seen

    r = report.apply()
    assert r.status is TaskStatus.SUCCESSFUL, r.errors
    fuzz_app.store.flush()
    rec = fuzz_app.store.read_record(r.id)
    assert rec["status"] == "SUCCESSFUL"
    if rec.get("progress") is not None:
        _strict_json(json.dumps(rec["progress"]))
    current = total = message = None
    for (c, t, m), outcome in zip(calls, r.return_value, strict=True):
        good = _number_ok(c, False) and _number_ok(t, True) and _message_ok(m)
        assert (outcome == "ok") is good, (c, t, m, outcome)
        if good:
            current = _as_stored(c)
            total = _as_stored(t) if t is not None else total
            message = m if m is not None else message
    if current is None or not (_finite(current) and _finite(total)):
        assert rec.get("progress") is None, (calls, rec.get("progress"))
    else:
        assert rec["progress"][:3] == [current, total, message], calls
    _listing_works(fuzz_app)


# --------------------------------------------------------------------------- the command line

words = st.one_of(
    st.sampled_from(
        [
            "list",
            "show",
            "purge",
            "--status",
            "--name",
            "--limit",
            "--store",
            "--json",
            "--older-than",
            "SUCCESSFUL",
            "failed",
            "nope",
            "7d",
            "1.5h",
            "-1",
            "0",
            "99999999999999999999999",
            "1e400",
            "",
            "--",
            "-x",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "-_./: %'\"\\", min_size=0, max_size=8),
)


@FUZZ
@given(argv=st.lists(words, max_size=6))
@example(argv=["list", "--limit", "99999999999999999999999"])
@example(argv=["purge", "--older-than", "1e400"])
@example(argv=["show", ""])
@example(argv=["list", "--store", ""])
def test_cli_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    """Every argument list ends with exit code 0 or 2 and a message: never a traceback."""
    assume("demo" not in argv)
    monkeypatch.chdir(tmp_path)  # stores named by the fuzzer land here
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = _cli.main(["--store" if a == "--store" else a for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    assert code in (0, 2), (argv, code, err.getvalue())
    if code == 2:
        assert err.getvalue().strip(), argv  # says what was wrong
    assert "Traceback" not in err.getvalue()


# --------------------------------------------------------------------------- %tasks

magic_words = st.one_of(
    st.sampled_from(
        [
            "cancel",
            "purge",
            "--status",
            "-s",
            "--name",
            "-n",
            "--page-size",
            "--older-than",
            "running",
            "FAILED",
            "SUCCESSFUL,FAILED",
            "10m",
            "7x",
            "-3",
            "0",
            "99999999999999999999999",
            "'",
            '"',
            "\\",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "-_ ,'\"", max_size=8),
)


@pytest.fixture
def magics(default_store: Path) -> Any:
    pytest.importorskip("IPython")
    from nbtasks._magics import NbtasksMagics

    return NbtasksMagics(shell=None)


@FUZZ
@given(line=st.lists(magic_words, max_size=5).map(" ".join))
@example(line="--page-size 99999999999999999999999")
@example(line="purge --status SUCCESSFUL --status FAILED")
@example(line="purge --older-than nan")
@example(line="cancel '")
def test_tasks_magic_lines(magics: Any, line: str) -> None:
    from IPython.core.error import UsageError

    app = nbtasks.default_app()

    @app.task(name="fuzz.magic")
    def one() -> int:
        return 1

    done = one.delay()
    done.wait(10)
    pending = one.apply_async(countdown=3600)
    before = app.store.count()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            magics.tasks(line)
        except UsageError as exc:
            assert str(exc)
        except ValueError as exc:  # shlex: "No closing quotation"
            assert "quotation" in str(exc) or "escaped" in str(exc), exc
    after = app.store.count()
    assert after <= before
    assert app.store.read_record(pending.id)["status"] in ("READY", "CANCELLED")
    _listing_works(app)
