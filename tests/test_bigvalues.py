"""Large values (issue 16, part B): numpy buffers pickled out of band into one value file of
aligned parts, written from the arrays' own memory; ``get(mmap=True)`` and ``cache_mmap``
map them read-only; the stream is signed with the layout; cache keys hash big buffers in place.

Everything runs on a real store in ``tmp_path``, through real Apps (thread and process tasks).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

import nbtasks
from nbtasks import _codec
from nbtasks.store.files import ALIGN

np = pytest.importorskip("numpy")

#: Unpickled Marker states: a tampered stream must leave this untouched (nothing unpickled).
UNPICKLED: list[Any] = []


class Marker:
    """A value part whose unpickling is seen (``__setstate__`` runs only when unpickled)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __setstate__(self, state: dict[str, Any]) -> None:
        UNPICKLED.append(state["tag"])
        self.__dict__.update(state)


def _mapped(arr: Any) -> bool:
    """True if ``arr``'s memory is a read-only mapping (its ``.base`` chain ends in a
    read-only view of an ``mmap.mmap``), not a copy (a read gives writable memory)."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and base.readonly and isinstance(base.obj, mmap.mmap)


def _value_file(app: nbtasks.App, key: str) -> Path:
    filename = app.store.reader.filename(key)
    assert filename is not None
    return app.store.path / filename


def _rv(app: nbtasks.App, task_id: str) -> dict[str, Any]:
    rv: dict[str, Any] = app.store.get_record(task_id)["rv"]
    return rv


def _files(store: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(store))


def _set_column(store: Path, key: str, column: str, value: Any) -> None:
    """Change one column of a store's row, as someone with write access to it could."""
    con = sqlite3.connect(store / "cache.db")
    try:
        with con:
            con.execute(f"UPDATE Cache SET {column} = ? WHERE key = ?", (value, key))
    finally:
        con.close()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_arrays_read_back_and_map_read_only(store_path: Path, executor: str) -> None:
    with nbtasks.App(store=store_path, workers=2, process_workers=1) as app:

        @app.task(executor=executor)
        def one(n: int) -> Any:
            return np.arange(n, dtype="float64")

        @app.task(executor=executor)
        def several(n: int) -> dict[str, Any]:
            return {
                "a": np.arange(n, dtype="int64"),
                "b": np.ones((300, 500), dtype="float32"),
                "f": np.asfortranarray(np.arange(200_000, dtype="int16").reshape(400, 500)),
                "small": np.arange(10),
                "text": "kept",
            }

        r1, r2 = one.delay(500_000), several.delay(400_000)
        value = r1.get(60)
        assert value.flags.writeable and np.array_equal(value, np.arange(500_000.0))
        rv = _rv(app, r1.id)
        assert [part[0] % ALIGN for part in rv["b"]] == [0, 0]  # stream, then one buffer
        mapped = r1.get(60, mmap=True)
        assert _mapped(mapped) and not mapped.flags.writeable
        assert np.array_equal(mapped, value)
        with pytest.raises(ValueError, match="read-only"):
            mapped[0] = 1.0

        d = r2.get(60)
        m = r2.get(60, mmap=True)
        assert len(_rv(app, r2.id)["b"]) == 4  # the stream and three large buffers
        for key in ("a", "b", "f"):
            assert np.array_equal(m[key], d[key]) and m[key].dtype == d[key].dtype
            assert _mapped(m[key]) and not m[key].flags.writeable
            assert d[key].flags.writeable
        assert m["f"].flags.f_contiguous
        assert not _mapped(m["small"]) and np.array_equal(m["small"], np.arange(10))
        assert m["text"] == "kept"


def test_a_restart_reads_and_maps_and_a_cache_hit_maps(store_path: Path) -> None:
    def define(app: nbtasks.App) -> Any:
        @app.task(name="big.ramp", cache=True, cache_mmap=True)
        def ramp(n: int) -> Any:
            return np.arange(n, dtype="float64") * 2

        return ramp

    with nbtasks.App(store=store_path) as app:
        first = define(app).delay(300_000)
        expected = first.get(30, mmap=False)
        assert expected.flags.writeable
        assert _mapped(first.return_value)  # cache_mmap: the handle maps
    with nbtasks.App(store=store_path) as app:  # a restart
        stored = app.result(first.id)
        read = stored.get(10, mmap=False)
        assert read.flags.writeable and np.array_equal(read, expected)
        mapped = stored.get(10, mmap=True)
        assert _mapped(mapped) and not _mapped(read)
        # The mapping is the file itself: a change written to it shows in the array.
        rv = _rv(app, first.id)
        with open(_value_file(app, rv["k"]), "r+b") as f:
            f.seek(rv["b"][1][0])
            f.write(np.float64(-1.0).tobytes())
        assert mapped[0] == -1.0 and read[0] == expected[0]
        hit = define(app).delay(300_000)
        assert hit.cached and hit.id == first.id
        value = hit.return_value
        assert _mapped(value) and not value.flags.writeable
        assert value[0] == -1.0 and np.array_equal(value[1:], expected[1:])  # the same file
        assert _mapped(hit.get(10))  # mmap=None: as the task declares


def test_values_without_large_buffers_are_stored_as_before(app: nbtasks.App) -> None:
    @app.task
    def f(kind: str) -> Any:
        if kind == "bytes":
            return ("old", b"x" * 40_000)  # bytes stay in the stream
        return np.arange(100)  # below OUT_OF_BAND_MIN

    for kind in ("bytes", "small"):
        r = f.delay(kind)
        r.get(10)
        assert "b" not in _rv(app, r.id)
        if kind == "small":
            assert np.array_equal(r.get(10, mmap=True), np.arange(100))  # nothing to map


def test_an_older_stores_value_still_reads(app: nbtasks.App) -> None:
    """A large value written before out-of-band buffers (one signed in-band pickle in its own
    entry, ``{"k", "s"}``): read as before, with or without mmap."""
    arr = np.arange(100_000, dtype="float64")
    signature, data = app.store.codec.pickle(arr)  # the in-band pickle stores held
    key = "v:old-task:rv"
    app.store.cache.set(key, data)
    old = {"k": key, "s": signature.hex()}
    for mmap_it in (False, True):
        value = app.store.decode_value(old, "an old value", mmap_it)
        assert np.array_equal(value, arr) and value.flags.writeable


def test_pandas_frames_map(app: nbtasks.App) -> None:
    pd = pytest.importorskip("pandas")

    @app.task
    def frame(n: int) -> Any:
        return pd.DataFrame({"x": np.arange(n, dtype="float64"), "y": np.ones(n)})

    r = frame.delay(100_000)
    df = r.get(20)
    mapped = r.get(20, mmap=True)
    pd.testing.assert_frame_equal(mapped, df)
    assert _mapped(mapped["x"].to_numpy())


def test_without_numpy_values_store_and_map(tmp_path: Path) -> None:
    """nbtasks imports numpy nowhere: a process that cannot import it stores and reads large
    values, in the stream (a bytearray) or out of band (any object reducing to a stdlib
    ``pickle.PickleBuffer``, which then maps too)."""
    code = textwrap.dedent(
        f"""
        import pickle, sys
        sys.modules["numpy"] = None  # import numpy fails here
        import nbtasks

        class Blob:
            def __init__(self, data):
                self.data = data
            def __reduce_ex__(self, protocol):
                return Blob, (pickle.PickleBuffer(self.data),)

        with nbtasks.App(store={str(tmp_path / "s")!r}) as app:
            @app.task
            def blob(n):
                return bytearray(b"ab" * n), Blob(bytearray(b"cd" * n))
            r = blob.delay(100_000)
            plain, big = r.get(10)
            assert plain == bytearray(b"ab" * 100_000) and big.data == b"cd" * 100_000
            assert len(app.store.get_record(r.id)["rv"]["b"]) == 2  # the stream, one buffer
            plain, big = r.get(10, mmap=True)
            assert plain == bytearray(b"ab" * 100_000) and big.data == b"cd" * 100_000
            assert type(big.data) is memoryview and big.data.readonly
        assert "numpy" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --------------------------------------------------------------------------- tampering


def _stored_marker_value(app: nbtasks.App) -> tuple[nbtasks.AsyncResult, Path]:
    @app.task
    def f() -> dict[str, Any]:
        return {"marker": Marker("m"), "a": np.arange(100_000, dtype="int64")}

    r = f.delay()
    r.get(10)
    app.store.flush()
    return r, _value_file(app, _rv(app, r.id)["k"])


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_tampered_stream_is_refused_and_nothing_unpickled(app: nbtasks.App) -> None:
    r, path = _stored_marker_value(app)
    UNPICKLED.clear()
    _flip(path, 20)  # inside the stream (part 0)
    for mmap_it in (False, True):
        with pytest.raises(nbtasks.UntrustedValue, match="trust=True"):
            app.result(r.id).get(10, mmap=mmap_it)
    assert UNPICKLED == []


def test_a_tampered_layout_is_refused(app: nbtasks.App, store_path: Path) -> None:
    r, _ = _stored_marker_value(app)
    UNPICKLED.clear()
    con = sqlite3.connect(store_path / "cache.db")
    (raw,) = con.execute("SELECT value FROM Cache WHERE key = ?", ("t:" + r.id,)).fetchone()
    con.close()
    record = json.loads(raw)
    (offset, length) = record["rv"]["b"][1]
    record["rv"]["b"][1] = [offset, length - 8]  # one element fewer: the signature says no
    _set_column(store_path, "t:" + r.id, "value", json.dumps(record))
    with nbtasks.App(store=store_path) as other, pytest.raises(nbtasks.UntrustedValue):
        other.result(r.id).get(10, mmap=True)
    record["rv"]["b"] = [[0, 10], [3, 5]]  # misaligned: refused before anything is read
    _set_column(store_path, "t:" + r.id, "value", json.dumps(record))
    with nbtasks.App(store=store_path) as other, pytest.raises(nbtasks.StoreError, match="layout"):
        other.result(r.id).get(10)
    assert UNPICKLED == []


def test_a_tampered_buffer_changes_numbers_only(app: nbtasks.App) -> None:
    """Raw buffers are not signed (docs/security.md): they are memory handed to numpy, never
    code. A changed byte changes one number; the value is built by the signed stream as
    before, and its mapped arrays are still read-only."""
    r, path = _stored_marker_value(app)
    offset = _rv(app, r.id)["b"][1][0]
    _flip(path, offset + 8 * 7)  # the first byte of element 7
    UNPICKLED.clear()
    for mmap_it in (False, True):
        value = app.result(r.id).get(10, mmap=mmap_it)
        expected = np.arange(100_000, dtype="int64")
        differ = np.flatnonzero(value["a"] != expected)
        assert list(differ) == [7]
        assert value["marker"].tag == "m"
        assert value["a"].flags.writeable is (not mmap_it)
    assert UNPICKLED == ["m", "m"]  # what the signed stream says, once per read


def test_a_value_file_outside_the_store_is_refused(
    app: nbtasks.App, store_path: Path, tmp_path: Path
) -> None:
    r, path = _stored_marker_value(app)
    outside = tmp_path / "outside.val"
    outside.write_bytes(path.read_bytes())
    key = _rv(app, r.id)["k"]
    _set_column(store_path, key, "filename", "../outside.val")
    for mmap_it in (False, True):
        with (
            nbtasks.App(store=store_path) as other,
            pytest.raises(nbtasks.StoreError, match="not one of its own"),
        ):
            other.result(r.id).get(10, mmap=mmap_it)
    _set_column(store_path, key, "filename", os.path.relpath(path, store_path))
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    with nbtasks.App(store=store_path) as other, pytest.raises(nbtasks.StoreError, match="shorter"):
        other.result(r.id).get(10, mmap=True)


# --------------------------------------------------------------------------- purge, memory


def test_purge_deletes_the_value_files(app: nbtasks.App, store_path: Path) -> None:
    @app.task
    def f(n: int) -> Any:
        return {"a": np.zeros(n), "b": np.ones(n)}

    results = [f.delay(100_000) for _ in range(3)]
    for r in results:
        r.get(10)
    app.store.flush()
    before = _files(store_path)
    assert before >= 3 + 1  # a value file per task, beside the database
    assert app.purge() == 3
    assert _files(store_path) == before - 3


def test_storing_makes_no_copy_of_the_arrays(app: nbtasks.App) -> None:
    """The buffers go from the array's memory to the file: traced allocations while a 50 MB
    array is stored stay far below its size (numpy's allocations are traced)."""
    arr = np.ones(50_000_000 // 8)

    @app.task
    def f() -> Any:
        return arr

    f.delay().get(10)  # warm: imports, the pool's threads, the writer
    app.store.flush()
    tracemalloc.start()
    try:
        f.delay().get(30)
        app.store.flush()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.3 * arr.nbytes, peak


# --------------------------------------------------------------------------- cache keys and options


def test_cache_keys_of_big_arguments_hash_the_buffers() -> None:
    a = np.arange(1_000_000, dtype="float64")
    b = a.copy()
    key = _codec.cache_key("t", "h", (a,), {})
    assert key == _codec.cache_key("t", "h", (b,), {})
    b[123_456] += 1
    assert key != _codec.cache_key("t", "h", (b,), {})
    assert key != _codec.cache_key("t", "h", (a.astype("float32"),), {})
    assert key != _codec.cache_key("t", "h", (a.reshape(1000, 1000),), {})


def test_cache_keys_without_big_buffers_are_unchanged() -> None:
    """Keys of arguments without out-of-band buffers are what they were before (existing
    stores' cache entries keep hitting): JSON for plain ones, else the in-band pickle."""

    def old_key(name: str, fn_hash: str, args: Any, kwargs: Any) -> str:
        h = hashlib.sha256(f"{name}\0{fn_hash}\0".encode())
        h.update(_codec.dumps((tuple(args), sorted(kwargs.items()))))
        return h.hexdigest()

    for args in [((1, 2), b"x"), (np.arange(10),), (b"y" * 100_000,)]:
        assert _codec.cache_key("t", "h", args, {"k": 1}) == old_key("t", "h", args, {"k": 1})

    def old_json_key(name: str, fn_hash: str, args: Any, kwargs: Any) -> str:
        h = hashlib.sha256(f"{name}\0{fn_hash}\0".encode())
        h.update(json.dumps([list(args), kwargs], sort_keys=True).encode())
        return h.hexdigest()

    for args, kwargs in [((1, "a", None, True), {}), ((1.5, [1, 2]), {"k": {"z": 1}}), ((), {})]:
        assert _codec.cache_key("t", "h", args, kwargs) == old_json_key("t", "h", args, kwargs)


def test_cache_mmap_is_a_checked_task_option(app: nbtasks.App) -> None:
    with pytest.raises(TypeError, match="cache_mmap must be True or False"):

        @app.task(cache_mmap="yes")
        def f() -> None: ...

    @app.task(cache_mmap=True)
    def g() -> int:
        return 1

    assert g.cache_mmap is True
    with pytest.raises(TypeError, match="cache_mmap"):
        g.apply_async((), cache_mmap=True)  # the task's, not a call's: get(mmap=...) is
    r = g.delay()
    assert r.get(10) == 1 and r.return_value == 1  # nothing to map: read as usual
    with pytest.raises(TypeError, match="mmap must be"):
        r.get(10, mmap="yes")  # type: ignore[arg-type]
