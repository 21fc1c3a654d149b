"""SPEC §10, the trust model, end to end: a store written under another key (by another
process), a store that another user owns or others can write, and the modes of every file.

The foreign store holds *canaries*: values whose unpickling touches a file. A canary file that
appears means something was unpickled; the tests assert that listing, showing and refused reads
never make one appear, and that ``trust=True`` does (so the canaries do work).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import POSIX_ONLY, REPO, run_python

import nbtasks
from nbtasks import views
from nbtasks._codec import Codec, Signer
from nbtasks._model import TaskStatus

AppFactory = Callable[..., nbtasks.App]
FOREIGN_KEY = "a colleague's key, at least 32 bytes long"
NOBODY = 65534

_FOREIGN_WRITER = """
import json, pathlib, sys
import nbtasks

store = sys.argv[1]


class Canary:
    "Unpickling it touches a file in the current directory."

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.name),))


class CanaryError(Exception):
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path("exc"),))


app = nbtasks.App(store=store)


@app.task(name="pair")
def pair(x):
    return (x, x)


@app.task(name="canary")
def canary(name):
    return Canary(name)


@app.task(name="big_canary", bind=True)
def big_canary(self, blob):
    self.set_metadata(kind="big", size=len(blob))
    self.progress(3, 4, "almost")
    print("a large value follows")
    return [Canary("big"), blob]


@app.task(name="boom")
def boom():
    raise CanaryError("the colleague's task failed")


@app.task(name="plain")
def plain():
    return {"a": [1, 2.5, None, "three"]}


ids = {
    "pair": pair.delay((1, 2)).id,
    "canary": canary.delay("small").id,
    "big": big_canary.delay(b"b" * 100_000).id,
    "boom": boom.delay().id,
    "plain": plain.delay().id,
}
for tid in ids.values():
    app.result(tid).wait(30)
app.shutdown()
# The writer checks that the exception round-trips (which touches its canary): start clean.
pathlib.Path("exc").unlink(missing_ok=True)
print(json.dumps(ids))
"""


@dataclass
class Foreign:
    store: Path
    canaries: Path  # the current directory while it is read: canaries appear here
    ids: dict[str, str]

    def touched(self) -> set[str]:
        return {p.name for p in self.canaries.iterdir()}


def _write_foreign(root: Path) -> Foreign:
    store, canaries = root / "store", root / "canaries"
    canaries.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_FOREIGN_WRITER), str(store)],
        env={**os.environ, "NBTASKS_KEY": FOREIGN_KEY},
        cwd=str(canaries),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return Foreign(store, canaries, json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def foreign_template(tmp_path_factory: pytest.TempPathFactory) -> Foreign:
    """A store written by another process under another key (made once per module)."""
    return _write_foreign(tmp_path_factory.mktemp("foreign"))


@pytest.fixture
def foreign(foreign_template: Foreign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Foreign:
    """A private copy of the foreign store for one test, read from an empty directory."""
    root = tmp_path / "copy"
    shutil.copytree(foreign_template.store, root / "store")
    (root / "canaries").mkdir()
    monkeypatch.chdir(root / "canaries")
    return Foreign(root / "store", root / "canaries", foreign_template.ids)


def _nbtasks(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """The ``nbtasks`` command, as a user runs it (with the test suite's key, not theirs)."""
    script = Path(sys.executable).with_name("nbtasks")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", _CLI]
    return subprocess.run(
        [*cmd, *argv], capture_output=True, text=True, timeout=60, cwd=str(cwd), check=False
    )


_CLI = "import sys; from nbtasks._cli import main; sys.exit(main())"


# --------------------------------------------------------------------------- foreign values


def test_foreign_pickles_are_never_unpickled_and_say_how_to_trust(
    foreign: Foreign, make_app: AppFactory
) -> None:
    app = make_app(store=foreign.store)
    for name in ("pair", "canary", "big"):
        r = app.result(foreign.ids[name])
        assert r.status is TaskStatus.SUCCESSFUL
        with pytest.raises(nbtasks.UntrustedValue) as info:
            r.return_value  # noqa: B018
        message = str(info.value)
        assert str(foreign.store) in message, message
        assert "nbtasks.App(store, trust=True)" in message
        assert foreign.ids[name] in message  # which value of which task
        with pytest.raises(nbtasks.UntrustedValue):
            r.get(1)
    with pytest.raises(nbtasks.UntrustedValue):
        app.result(foreign.ids["pair"]).args  # noqa: B018  (a tuple: a signed pickle)
    # The failed task: its error is JSON (readable); its pickled exception is not restored.
    failed = app.result(foreign.ids["boom"])
    assert failed.status is TaskStatus.FAILED
    assert failed.errors[-1].exception_class_path == "__main__.CanaryError"
    assert "the colleague's task failed" in failed.errors[-1].traceback
    with pytest.raises(nbtasks.TaskFailed, match="CanaryError") as info:
        failed.return_value  # noqa: B018
    assert info.value.__cause__ is None
    # Plain JSON values need no signature.
    assert app.result(foreign.ids["plain"]).return_value == {"a": [1, 2.5, None, "three"]}
    assert app.result(foreign.ids["canary"]).args == ["small"]
    assert foreign.touched() == set()


def test_trust_true_accepts_the_foreign_store(foreign: Foreign, make_app: AppFactory) -> None:
    app = make_app(store=foreign.store, trust=True)
    assert app.result(foreign.ids["pair"]).return_value == ((1, 2), (1, 2))
    assert app.result(foreign.ids["pair"]).args == [(1, 2)]
    app.result(foreign.ids["canary"]).return_value  # noqa: B018
    big = app.result(foreign.ids["big"]).return_value
    assert big[1] == b"b" * 100_000
    failed = app.result(foreign.ids["boom"])
    with pytest.raises(nbtasks.TaskFailed):
        failed.return_value  # noqa: B018
    # Every canary ran: the tests above would have seen any unpickling.
    assert foreign.touched() == {"small", "big", "exc"}


def test_listing_a_foreign_store_reads_json_only(foreign: Foreign, make_app: AppFactory) -> None:
    app = make_app(store=foreign.store)
    ids = set(foreign.ids.values())
    assert {r.id for r in app.results()} == ids
    assert app.store.count() == 5
    rows = app.store.summaries()  # what %tasks reads
    assert {r["id"] for r in rows} == ids
    by_id = {r["id"]: r for r in rows}
    assert by_id[foreign.ids["boom"]]["status"] == "FAILED"
    assert by_id[foreign.ids["big"]]["progress"] is not None
    big = app.result(foreign.ids["big"])
    assert big.progress is not None and big.progress.message == "almost"
    assert (big.progress.current, big.progress.total) == (3, 4)
    assert big.metadata == {"kind": "big", "size": 100_000}
    assert big.output == "a large value follows\n"
    assert big.state == "SUCCESSFUL" and big.is_finished
    assert "b'bbbb" in big._rec["args_repr"]
    # %tasks: the text table (terminal IPython) and the dashboard widget.
    text = views.dashboard_text(app)
    for name in ("pair", "canary", "big_canary", "boom", "plain"):
        assert name in text
    board = views.Dashboard(app, page_size=20)
    bundle = board._repr_mimebundle_()
    assert bundle["text/html"].count("data-task-id") == 5
    assert bundle["text/plain"].endswith("(5 of 5 tasks)")
    assert foreign.touched() == set()


def test_nbtasks_list_and_show_work_on_a_foreign_store(foreign: Foreign) -> None:
    listed = _nbtasks("list", "--store", str(foreign.store), cwd=foreign.canaries)
    assert listed.returncode == 0, listed.stderr
    for tid in foreign.ids.values():
        assert tid in listed.stdout
    assert "(5 of 5 task(s)" in listed.stdout
    as_json = _nbtasks("list", "--json", "--store", str(foreign.store), cwd=foreign.canaries)
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {r["id"]: r["status"] for r in rows}[foreign.ids["boom"]] == "FAILED"
    for name, tid in foreign.ids.items():
        shown = _nbtasks("show", tid, "--store", str(foreign.store), cwd=foreign.canaries)
        assert shown.returncode == 0, shown.stderr
        assert tid in shown.stdout and "status:" in shown.stdout, name
    shown = _nbtasks(
        "show", foreign.ids["boom"], "--store", str(foreign.store), cwd=foreign.canaries
    )
    assert "__main__.CanaryError" in shown.stdout
    assert "the colleague's task failed" in shown.stdout
    shown = _nbtasks(
        "show", foreign.ids["big"], "--store", str(foreign.store), cwd=foreign.canaries
    )
    assert '"kind": "big"' in shown.stdout and "a large value follows" in shown.stdout
    assert foreign.touched() == set()


def test_nbtasks_list_works_on_a_store_owned_by_another_user(foreign: Foreign) -> None:
    _chown_tree(foreign.store, NOBODY)
    listed = _nbtasks("list", "--store", str(foreign.store), cwd=foreign.canaries)
    assert listed.returncode == 0, listed.stderr
    assert all(tid in listed.stdout for tid in foreign.ids.values())
    assert foreign.touched() == set()


def test_a_large_value_moved_or_altered_does_not_verify(
    store_path: Path, make_app: AppFactory
) -> None:
    """The signature of a large value is in its record: a value file swapped for another
    record's (both signed with our key) or altered is refused, not unpickled."""
    a = make_app()

    @a.task
    def big(tag: str) -> tuple[str, bytes]:
        return (tag, tag.encode() * 50_000)

    one, two = big.delay("one"), big.delay("two")
    one.wait(10)
    two.wait(10)
    a.shutdown()
    files = {r.id: _value_file(store_path, f"v:{r.id}:rv") for r in (one, two)}
    data_one = files[one.id].read_bytes()
    files[one.id].write_bytes(files[two.id].read_bytes())
    reader = make_app()
    with pytest.raises(nbtasks.UntrustedValue, match="trust=True"):
        reader.result(one.id).return_value  # noqa: B018
    altered = bytearray(data_one)
    altered[len(altered) // 2] ^= 1
    files[one.id].write_bytes(bytes(altered))
    with pytest.raises(nbtasks.UntrustedValue):
        reader.result(one.id).return_value  # noqa: B018
    files[one.id].write_bytes(data_one)
    assert reader.result(one.id).return_value == ("one", b"one" * 50_000)
    assert reader.result(two.id).return_value == ("two", b"two" * 50_000)


def test_a_large_value_of_an_older_store_still_reads() -> None:
    """Stores written before large values kept their signature in the record hold the
    signature first in the value itself (``{"k": key}``): still read, still verified."""
    codec = Codec(Signer(b"mine"), "/some/store")
    signature, data = codec.pickle(("old", b"x" * 20_000))
    legacy = Signer(b"mine").sign(data)
    assert codec.decode_blob(legacy, None, "v") == ("old", b"x" * 20_000)
    assert codec.decode_blob(data, signature.hex(), "v") == ("old", b"x" * 20_000)
    with pytest.raises(nbtasks.UntrustedValue, match="/some/store"):
        Codec(Signer(b"theirs"), "/some/store").decode_blob(legacy, None, "v")
    with pytest.raises(nbtasks.UntrustedValue):
        codec.decode_blob(data, "not hex", "v")
    with pytest.raises(nbtasks.UntrustedValue):
        codec.decode_blob(42, signature.hex(), "v")


def _value_file(store: Path, key: str) -> Path:
    import sqlite3

    con = sqlite3.connect(store / "cache.db")
    try:
        (filename,) = con.execute("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()
    finally:
        con.close()
    return store / filename


# --------------------------------------------------------------------------- ownership


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, _dirs, names in os.walk(root):
        os.chown(dirpath, uid, -1)
        for n in names:
            os.chown(os.path.join(dirpath, n), uid, -1)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@POSIX_ONLY
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_a_store_others_can_write_is_refused_unless_trusted(
    store_path: Path, make_app: AppFactory, mode: int
) -> None:
    a = make_app()

    @a.task
    def one() -> tuple[int]:
        return (1,)

    r = one.delay()
    r.wait(10)
    a.shutdown()
    store_path.chmod(mode)
    before = _snapshot(store_path)
    with pytest.raises(nbtasks.StoreError) as info:
        nbtasks.App(store=store_path)
    message = str(info.value)
    assert str(store_path) in message and f"{mode:o}" in message
    assert "chmod 700" in message and "trust=True" in message
    assert _snapshot(store_path) == before  # refused before anything was written
    trusted = make_app(trust=True)
    assert trusted.result(r.id).return_value == (1,)


@POSIX_ONLY
def test_a_store_owned_by_another_user_is_refused_unless_trusted(
    store_path: Path, make_app: AppFactory
) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown the store to another user")
    a = make_app()

    @a.task
    def one() -> tuple[int]:
        return (1,)

    r = one.delay()
    r.wait(10)
    a.shutdown()
    _chown_tree(store_path, NOBODY)
    before = _snapshot(store_path)
    with pytest.raises(nbtasks.StoreError) as info:
        nbtasks.App(store=store_path)
    message = str(info.value)
    assert str(store_path) in message and f"uid {NOBODY}" in message
    assert "trust=True" in message
    assert _snapshot(store_path) == before
    trusted = make_app(trust=True)
    assert trusted.result(r.id).return_value == (1,)


# --------------------------------------------------------------------------- modes


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask: diskcache alone would make 0755 / 0644
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    dirs, files = {}, {}
    for dirpath, dirnames, names in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            dirs[os.path.relpath(p, root)] = stat.S_IMODE(os.stat(p).st_mode)
        for n in names:
            p = os.path.join(dirpath, n)
            files[os.path.relpath(p, root)] = stat.S_IMODE(os.stat(p).st_mode)
    return dirs, files


@POSIX_ONLY
def test_every_file_is_0600_and_every_directory_0700(
    store_path: Path, make_app: AppFactory, usual_umask: None
) -> None:
    a = make_app()

    @a.task
    def big(blob: bytes) -> bytes:
        return blob * 2  # > 32 KiB: a value file of its own

    @a.task
    def small(i: int) -> int:
        return i

    r = big.delay(b"z" * 40_000)  # large arguments: a value file too
    g = small.map(range(3000))  # the group's record (> 32 KiB of JSON) is a text file
    assert r.get(10) == b"z" * 80_000
    g.get(30)
    a.store.flush()
    dirs, files = _modes(store_path)  # while the App is open: -wal and -shm exist
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o700
    assert {"cache.db", "cache.db-wal", "cache.db-shm"} <= set(files)
    values = [f for f in files if f.endswith(".val")]
    assert len(values) >= 3, files
    assert {f: m for f, m in files.items() if m != 0o600} == {}
    assert dirs and {d: m for d, m in dirs.items() if m != 0o700} == {}
    # What another process adds to it is owner-only too, and it all reads back.
    proc = run_python(
        f"""
        import os, nbtasks
        os.umask(0o022)
        app = nbtasks.App(store={str(store_path)!r})
        @app.task
        def more():
            return os.urandom(300_000)
        print(len(more.delay().get(10)))
        app.shutdown()
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "300000", proc.stderr
    dirs, files = _modes(store_path)
    assert len([f for f in files if f.endswith(".val")]) >= len(values) + 1
    assert {f: m for f, m in files.items() if m != 0o600} == {}
    assert {d: m for d, m in dirs.items() if m != 0o700} == {}
    reader = make_app()
    assert reader.result(r.id).return_value == b"z" * 80_000
    assert reader.result(r.id).args == [b"z" * 40_000]
    assert reader.group_result(g.id).get(1) == list(range(3000))


@POSIX_ONLY
def test_the_key_file_is_owner_only_and_outside_the_store(
    tmp_path: Path, usual_umask: None
) -> None:
    config = tmp_path / "config"
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != "NBTASKS_KEY"}
    env["XDG_CONFIG_HOME"] = str(config)
    proc = run_python(
        f"""
        import nbtasks
        app = nbtasks.App(store={str(store)!r})
        @app.task
        def t():
            return (1, 2)
        print(t.delay().get(10))
        app.shutdown()
        """,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    key = config / "nbtasks" / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert len(key.read_bytes()) == 32
    assert not any(p.name == "key" for p in store.rglob("*"))


def test_planted_values_are_refused_whatever_their_shape(make_app: AppFactory) -> None:
    """A record edited by hand (or by someone else) cannot make the store unpickle: a value
    that is not signed bytes, or points at an entry that is not a value, is refused."""

    app = make_app()

    @app.task
    def one() -> tuple[int]:
        return (1,)

    r = one.delay()
    r.wait(10)
    app.store.flush()
    rec = app.store.read_record(r.id)
    for enc, error in (
        # an entry that is not a value nbtasks wrote: the record is damaged
        ({"k": "nbtasks:schema", "s": "00" * 32}, nbtasks.StoreError),  # an int entry
        ({"k": f"t:{r.id}", "s": "00" * 32}, nbtasks.StoreError),  # a JSON record
        ({"p": "bm90IGEgcGlja2xl"}, nbtasks.UntrustedValue),  # 'not a pickle', unsigned
        ({"p": ""}, nbtasks.UntrustedValue),
    ):
        rec["rv"] = enc
        app.store.cache.set("t:" + r.id, json.dumps(rec), tag=rec["status"])
        with pytest.raises(error):
            make_app().result(r.id).return_value  # noqa: B018
