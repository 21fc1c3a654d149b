"""nbtasks._codec: JSON or signed cloudpickle, exceptions, argument text, task identity."""

from __future__ import annotations

import enum
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import POSIX_ONLY

import nbtasks
from nbtasks import _codec
from nbtasks._codec import Codec, Signer


def make_codec(key: bytes = b"k1", trust: bool = False) -> Codec:
    return Codec(Signer(key), "/some/store", trust)


class Color(enum.IntEnum):
    RED = 1


def module_level(x: int) -> int:
    return x + 1


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "value",
    ["s", 1, 1.5, True, None, [1, "a", None], {"a": {"b": [1, 2]}}, [], {}],
)
def test_plain_json_is_stored_as_json(value: Any) -> None:
    codec = make_codec()
    enc = codec.encode(value)
    assert enc == {"j": value}
    assert codec.decode(enc, "v") == value


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        {1: "int key"},
        b"bytes",
        {1, 2},
        Color.RED,
        float("nan"),
        [(1,)],
        module_level,
        lambda x: x * 2,
    ],
    ids=[
        "tuple",
        "int-key",
        "bytes",
        "set",
        "intenum",
        "nan",
        "nested-tuple",
        "function",
        "lambda",
    ],
)
def test_other_values_are_signed_pickles_that_round_trip_exactly(value: Any) -> None:
    codec = make_codec()
    enc = codec.encode(value)
    assert set(enc) == {"p"} and isinstance(enc["p"], str)  # base64 text
    out = codec.decode(enc, "v")
    if callable(value):
        assert out(3) == value(3)
    elif value != value:  # nan
        assert out != out
    else:
        assert out == value
        assert type(out) is type(value)


def test_a_pickle_signed_by_another_key_is_never_unpickled() -> None:
    enc = make_codec(b"alice").encode((1, 2))
    with pytest.raises(nbtasks.UntrustedValue) as info:
        make_codec(b"bob").decode(enc, "the rv of task X")
    message = str(info.value)
    assert "the rv of task X" in message
    assert "/some/store" in message
    assert "trust=True" in message
    # trust=True accepts it.
    assert make_codec(b"bob", trust=True).decode(enc, "v") == (1, 2)


def test_a_tampered_pickle_does_not_verify() -> None:
    import base64

    codec = make_codec()
    raw = bytearray(base64.b64decode(codec.encode((1, 2))["p"]))
    raw[-2] ^= 0xFF
    with pytest.raises(nbtasks.UntrustedValue):
        codec.decode({"p": base64.b64encode(bytes(raw)).decode()}, "v")
    with pytest.raises(nbtasks.UntrustedValue):
        codec.decode({"p": b"short"}, "v")


def test_unpicklable_values_raise_type_error() -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        make_codec().encode(threading.Lock())
    with pytest.raises(TypeError, match="cannot be pickled"):
        _codec.dumps(x for x in range(3))


# --------------------------------------------------------------------------- the key


def test_key_comes_from_nbtasks_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBTASKS_KEY", "secret-a" * 4)
    blob = Signer().sign(b"data")  # the key is read on first use
    monkeypatch.setenv("NBTASKS_KEY", "secret-b" * 4)
    b = Signer()
    assert Signer(b"secret-a" * 4).verify(blob, "w", trust=False) == b"data"
    with pytest.raises(nbtasks.UntrustedValue):
        b.verify(blob, "w", trust=False)


def test_empty_nbtasks_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBTASKS_KEY", "")
    with pytest.raises(nbtasks.StoreError, match="NBTASKS_KEY is set but empty"):
        Signer().sign(b"x")


@POSIX_ONLY
def test_without_nbtasks_key_a_0600_key_file_is_made_in_the_config_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NBTASKS_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path = _codec.key_path()
    assert path == tmp_path / "cfg" / "nbtasks" / "key"
    blob = Signer().sign(b"data")
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = path.read_bytes()
    assert len(key) == 32
    # The same key is used next time (and by another Signer).
    assert Signer().verify(blob, "w", trust=False) == b"data"
    assert Signer(key).verify(blob, "w", trust=False) == b"data"
    assert path.read_bytes() == key


# --------------------------------------------------------------------------- exceptions


def test_encode_exception_gives_class_path_traceback_and_message() -> None:
    codec = make_codec()
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as exc:
        err = codec.encode_exception(exc)
    assert err.exception_class_path == "builtins.ZeroDivisionError"
    assert err.exception_class is ZeroDivisionError
    assert "Traceback" in err.traceback and "1 / 0" in err.traceback
    assert err.message == "division by zero"
    assert codec.encode_exception(nbtasks.TaskTimeout("t")).exception_class_path == (
        "nbtasks.TaskTimeout"
    )


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickling calls cls(*args): one arg, fails
        super().__init__(f"{a}-{b}")


def test_exception_value_round_trips_when_it_can() -> None:
    codec = make_codec()
    enc = codec.encode_exception_value(ValueError("boom"))
    assert enc is not None
    out = codec.decode(enc, "exc")
    assert type(out) is ValueError and out.args == ("boom",)
    assert codec.encode_exception_value(Unpicklable(1, 2)) is None


# --------------------------------------------------------------------------- argument text


def test_args_repr_is_short_text() -> None:
    assert _codec.args_repr((1, "a"), {"k": [1, 2]}) == "1, 'a', k=[1, 2]"
    assert _codec.args_repr((), {}) == ""
    long = _codec.args_repr(("x" * 1000,) * 10, {})
    assert len(long) <= 200 and long.endswith("...")
    assert len(_codec.args_repr((list(range(1000)),), {})) < 100


# --------------------------------------------------------------------------- identity


def test_task_name_of() -> None:
    assert _codec.task_name_of(module_level) == f"{__name__}.module_level"

    def inner() -> None: ...

    assert _codec.task_name_of(inner) == (f"{__name__}.test_task_name_of.<locals>.inner")
    inner.__module__ = "__main__"
    assert _codec.task_name_of(inner) == "test_task_name_of.<locals>.inner"


def test_cache_key_covers_name_code_and_arguments() -> None:
    k = _codec.cache_key("t", "h", (1, 2), {"a": 1, "b": 2})
    assert k == _codec.cache_key("t", "h", [1, 2], {"b": 2, "a": 1})  # kwargs order ignored
    assert k != _codec.cache_key("u", "h", (1, 2), {"a": 1, "b": 2})
    assert k != _codec.cache_key("t", "h2", (1, 2), {"a": 1, "b": 2})
    assert k != _codec.cache_key("t", "h", (1, 3), {"a": 1, "b": 2})
    assert k != _codec.cache_key("t", "h", (1, 2), {"a": 1, "b": 3})
    # Non-JSON arguments are keyed too, and deterministically.
    s1 = _codec.cache_key("t", "h", ((1, 2), b"x"), {})
    assert s1 == _codec.cache_key("t", "h", ((1, 2), b"x"), {})
    assert s1 != _codec.cache_key("t", "h", ((1, 3), b"x"), {})
    # A tuple and a list are different arguments.
    assert _codec.cache_key("t", "h", ((1, 2),), {}) != _codec.cache_key("t", "h", ([1, 2],), {})


def test_cloudpickle_is_imported_lazily_by_the_codec() -> None:
    assert _codec.cloudpickle() is __import__("cloudpickle")
    assert os.environ["NBTASKS_KEY"]  # the suite's key is in place


# --------------------------------------------------------------------------- by-value references

FACTOR = 2


def test_by_value_refs_follow_rebound_globals_closures_and_main_helpers() -> None:
    """What a process task's cached payload is checked against (executors/process/pool.py)."""
    global FACTOR

    def scaled(x: int) -> int:
        return x * FACTOR

    before = _codec.by_value_refs(scaled)
    assert before is not None and before[0] is scaled and before[1] is scaled.__code__
    assert any(ref is FACTOR for ref in before)
    same = _codec.by_value_refs(scaled)
    assert same is not None and len(same) == len(before)
    assert all(a is b for a, b in zip(same, before, strict=True))
    FACTOR = [3]  # rebound (a new object): the references differ
    try:
        after = _codec.by_value_refs(scaled)
        assert after is not None and any(ref is FACTOR for ref in after)
        assert not all(a is b for a, b in zip(after, before, strict=True))
    finally:
        FACTOR = 2

    box = {"n": 1}

    def closure() -> int:
        return box["n"]

    assert any(ref is box for ref in _codec.by_value_refs(closure) or ())
    assert _codec.by_value_refs(len) is None  # a builtin: pickled by reference, not cached

    # A helper defined in __main__ (a notebook cell) is pickled by value with the task: its
    # own globals are followed too.
    main_ns: dict[str, Any] = {"__name__": "__main__", "LIMIT": 10}
    exec("def helper():\n    return LIMIT\n\ndef task():\n    return helper()\n", main_ns)
    refs = _codec.by_value_refs(main_ns["task"])
    assert refs is not None and any(ref is main_ns["helper"] for ref in refs)
    assert any(ref is main_ns["helper"].__code__ for ref in refs)
    assert 10 in refs  # helper's global LIMIT


def test_global_names_include_nested_code() -> None:
    def outer() -> Any:
        return [len(x) for x in os.listdir(".")]  # the comprehension is nested code

    names = _codec._global_names(outer.__code__)
    assert "os" in names and "len" in names


_CELL = """
def outer(x):
    def inner(y):
        return 1 / y
    return inner(x)
"""


def test_a_pickled_notebook_function_keeps_its_file_name_for_tracebacks() -> None:
    """Code copied by value keeps its cell's file name, so a worker's traceback names the cell
    and can show its lines (cloudpickle 3.1.3 alone renames it ``<dynamic-code>``)."""
    import pickle
    import traceback

    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(_CELL, "/tmp/ipykernel_1/cell-7.py", "exec"), namespace)
    # In a fresh process the copy is what runs; unpickling here gives the same objects.
    copy = pickle.loads(_codec.dumps(namespace["outer"]))
    assert copy.__code__.co_filename == "/tmp/ipykernel_1/cell-7.py"
    with pytest.raises(ZeroDivisionError) as info:
        copy(0)
    frames = traceback.extract_tb(info.value.__traceback__)
    assert [(f.filename, f.name) for f in frames[-2:]] == [
        ("/tmp/ipykernel_1/cell-7.py", "outer"),
        ("/tmp/ipykernel_1/cell-7.py", "inner"),
    ]
    assert copy(4) == 0.25
