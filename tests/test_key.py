"""SPEC §10, "The key": the signing key is at least 32 bytes of secret, the key file is used only
if it is safe, and it is created atomically (issue 13, finding 2).

Each finding is written as the attack it allowed, with real files and real processes:
- an unsafe key file (empty, short, readable by others, owned by someone else, a symlink) or a
  short ``NBTASKS_KEY`` is refused with a ``StoreError`` naming it and the fix, and a value
  forged under the key an attacker knows is never unpickled (a canary file would appear);
- processes that start together on a fresh config directory all end with the same full key;
- a process killed at any point while it creates the key never leaves a short key behind.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import json
import os
import pickle
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import POSIX_ONLY, REPO, start_python

import nbtasks
from nbtasks import _codec, _key
from nbtasks._key import MIN_KEY_BYTES, key_path, load_key

POSIX = os.name == "posix"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534

_needs_posix = pytest.mark.skipif(not POSIX, reason="POSIX permission bits, owners and FIFOs")
_needs_root = pytest.mark.skipif(
    not IS_ROOT,
    reason="giving the key file to another uid (os.chown to 65534) needs root; run as root to "
    "check that a key file owned by someone else is refused",
)


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh config directory and no NBTASKS_KEY (here and in the processes started)."""
    monkeypatch.delenv("NBTASKS_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_bytes(data)
    os.chmod(path, mode)


# --------------------------------------------------------------------------- unsafe key files

#: kind -> what the refusal says (besides the file's name).
UNSAFE = {
    "empty": "holds 0 bytes, fewer than the 32 a key needs",
    "31 bytes": "holds 31 bytes, fewer than the 32 a key needs",
    "mode 0644": "has mode 0644: other users may read or write it",
    "mode 0620": "has mode 0620: other users may read or write it",
    "symlink": "is a symbolic link (to ",
    "dangling symlink": "is a symbolic link (to ",
    "another user's": f"is owned by uid {NOBODY}, not by you",
    "fifo": "is not a regular file",
    "directory": "is not a regular file",
}
_MARKS = {
    "mode 0644": [_needs_posix],
    "mode 0620": [_needs_posix],
    "another user's": [_needs_posix, _needs_root],
    "fifo": [_needs_posix],
}


def _unsafe_params(kinds: list[str]) -> list[object]:
    return [pytest.param(k, marks=_MARKS.get(k, []), id=k) for k in kinds]


def _plant_key_file(kind: str, path: Path, elsewhere: Path) -> bytes:
    """Put a key file of this kind at ``path``; return the bytes an attacker knows (the ones a
    forged signature uses if nbtasks took this file as its key)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = {"empty": b"", "31 bytes": b"k" * 31}.get(kind, os.urandom(MIN_KEY_BYTES))
    if kind in ("symlink", "dangling symlink"):
        target = elsewhere / "their-key"
        if kind == "symlink":
            _write(target, key, 0o600)  # a good key file, but someone else decides what it is
        os.symlink(target, path)
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "directory":
        path.mkdir(mode=0o700)
    else:
        _write(path, key, {"mode 0644": 0o644, "mode 0620": 0o620}.get(kind, 0o600))
        if kind == "another user's":
            os.chown(path, NOBODY, NOBODY)
    return key


@POSIX_ONLY
@pytest.mark.parametrize("kind", _unsafe_params(list(UNSAFE)))
def test_an_unsafe_key_file_is_refused_naming_the_file_and_the_fix(
    kind: str, config: Path, tmp_path: Path
) -> None:
    path = key_path()
    _plant_key_file(kind, path, tmp_path)
    before = os.lstat(path)
    for _ in range(2):  # refused every time, not repaired on the first refusal
        with pytest.raises(nbtasks.StoreError) as info:
            load_key()
        message = str(info.value)
        assert f"The nbtasks key file {path} {UNSAFE[kind]}" in message
        assert "so it was not used" in message
        fix = {"directory": f"rm -r {path}"}.get(kind, f"rm {path}")
        if kind.startswith("mode"):
            fix = f"chmod 600 {path}"
        assert f"Fix: {fix}" in message or f"({fix}" in message, message
        assert "export NBTASKS_KEY=" in message
        # A Signer (what the store uses) raises the same error, on first use.
        with pytest.raises(nbtasks.StoreError, match="key file"):
            _codec.Signer().sign(b"x")
    after = os.lstat(path)
    assert (after.st_mode, after.st_uid, after.st_size) == (
        before.st_mode,
        before.st_uid,
        before.st_size,
    )
    assert not (tmp_path / "their-key").exists() or kind == "symlink"  # nothing written there
    assert sorted(p.name for p in path.parent.iterdir()) == ["key"]  # no key made beside it


@POSIX_ONLY
def test_a_safe_key_file_of_any_length_from_32_bytes_is_used(config: Path) -> None:
    path = key_path()
    for key in (b"k" * 32, os.urandom(64), b"line\n" * 20):
        _write(path, key, 0o600)
        assert load_key() == key
        assert path.read_bytes() == key  # used as is


@POSIX_ONLY
@_needs_posix
def test_the_refusal_is_fixed_as_the_message_says(config: Path) -> None:
    path = key_path()
    _write(path, os.urandom(32), 0o644)
    with pytest.raises(nbtasks.StoreError, match="chmod 600"):
        load_key()
    os.chmod(path, 0o600)
    assert load_key() == path.read_bytes()
    path.write_bytes(b"")  # what a crash of an older nbtasks left
    with pytest.raises(nbtasks.StoreError, match="holds 0 bytes"):
        load_key()
    path.unlink()  # "delete it and nbtasks makes a new one"
    key = load_key()
    assert len(key) == MIN_KEY_BYTES and path.read_bytes() == key


# --------------------------------------------------------------------------- NBTASKS_KEY


@pytest.mark.parametrize(
    ("value", "size"), [("", 0), ("a", 1), ("k" * 31, 31), ("é" * 15 + "a", 31)]
)
def test_a_short_nbtasks_key_is_refused(
    value: str, size: int, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBTASKS_KEY", value)
    with pytest.raises(nbtasks.StoreError) as info:
        load_key()
    message = str(info.value)
    what = {0: "set but empty", 1: "only 1 byte long"}.get(size, f"only {size} bytes long")
    assert message.startswith(f"NBTASKS_KEY is {what}; ")
    assert "at least 32 bytes" in message
    assert (
        'export NBTASKS_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))")'
        in message
    )
    assert str(key_path()) in message  # the other way: unset it and use the key file
    assert not config.exists()  # no key file was made instead


@pytest.mark.parametrize("value", ["k" * 32, "é" * 16, "a long passphrase, " * 4])
def test_an_nbtasks_key_of_32_utf8_bytes_or_more_is_used(
    value: str, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBTASKS_KEY", value)
    assert load_key() == value.encode("utf-8")
    assert not config.exists()  # the variable wins: no key file is made


def test_the_codec_still_exposes_key_path() -> None:
    assert _codec.key_path is key_path


# --------------------------------------------------------------------------- the attack, end to end


class Canary:
    """Unpickling it touches a file in the current directory."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (Path(self.name),))


_READER = """
import json, nbtasks
app = nbtasks.App(store={store!r})
try:
    out = {{"value": repr(app.result({task_id!r}).return_value)}}
except nbtasks.NbtasksError as e:
    out = {{"error": type(e).__name__, "message": str(e)}}
app.shutdown()
print(json.dumps(out))
"""


def _forge(app: nbtasks.App, task_id: str, key: bytes) -> None:
    """Replace the task's return value by a canary signed with HMAC-SHA256 under ``key``."""
    data = pickle.dumps(Canary("unpickled"))
    signed = hmac.new(key, data, hashlib.sha256).digest() + data
    app.store.flush()
    rec = app.store.read_record(task_id)
    rec["rv"] = {"p": base64.b64encode(signed).decode("ascii")}
    app.store.cache.set("t:" + task_id, json.dumps(rec), tag=rec["status"])


def _read_in_a_new_process(
    store: Path, task_id: str, config: Path, canaries: Path, nbtasks_key: str | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NBTASKS_KEY"}
    env["XDG_CONFIG_HOME"] = str(config)
    if nbtasks_key is not None:
        env["NBTASKS_KEY"] = nbtasks_key
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_READER.format(store=str(store), task_id=task_id))],
        env=env,
        cwd=str(canaries),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@POSIX_ONLY
@pytest.mark.parametrize(
    "kind",
    [
        *_unsafe_params(["empty", "31 bytes", "mode 0644", "symlink", "another user's"]),
        "NBTASKS_KEY=''",
        "NBTASKS_KEY='a'",
        "safe key file (control)",
    ],
)
def test_a_value_forged_under_the_key_an_attacker_knows_is_never_unpickled(
    kind: str, app: nbtasks.App, store_path: Path, tmp_path: Path
) -> None:
    """The attack of finding 2: with an empty key file (left by a crash, or by a reader that
    raced the writer), anyone can sign a value with HMAC(b"", ...) and have it unpickled. Every
    key an attacker can know or choose is refused instead; the control shows that a value
    signed with the real key is unpickled, so the canary would have seen it."""

    @app.task
    def one() -> tuple[int]:
        return (1,)

    r = one.delay()
    assert r.get(10) == (1,)
    config, canaries = tmp_path / "config", tmp_path / "canaries"
    canaries.mkdir()
    path = config / "nbtasks" / "key"
    env_key: str | None = None
    if kind.startswith("NBTASKS_KEY="):
        env_key = kind.split("=", 1)[1].strip("'")
        known = env_key.encode()
    elif kind == "safe key file (control)":
        known = os.urandom(MIN_KEY_BYTES)
        _write(path, known, 0o600)
    else:
        known = _plant_key_file(kind, path, tmp_path)
    _forge(app, r.id, known)

    out = _read_in_a_new_process(store_path, r.id, config, canaries, env_key)

    if kind == "safe key file (control)":
        assert out == {"value": "None"} and [p.name for p in canaries.iterdir()] == ["unpickled"]
        return
    assert list(canaries.iterdir()) == [], f"the forged value was unpickled: {out}"
    assert out.get("error") == "StoreError", out
    assert ("NBTASKS_KEY" if env_key is not None else str(path)) in out["message"]


# --------------------------------------------------------------------------- creation


_RACER = """
import sys
from nbtasks._key import load_key
print("ready", flush=True)
sys.stdin.readline()  # the go signal: every racer is past its imports
print(load_key().hex(), flush=True)
"""


@POSIX_ONLY
def test_processes_starting_together_on_a_fresh_config_dir_share_one_full_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usual_umask: None
) -> None:
    """Before the fix, 4 processes on a fresh config directory read an empty key in 13 of 15
    trials (the file was created with O_EXCL and written afterwards)."""
    monkeypatch.delenv("NBTASKS_KEY")
    for trial in range(15):
        config = tmp_path / f"config-{trial}"
        monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
        racers = [start_python(_RACER, stdin=subprocess.PIPE) for _ in range(4)]
        for p in racers:
            assert p.stdout is not None and p.stdout.readline() == "ready\n", p.communicate()
        for p in racers:  # release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [p.communicate(timeout=60) for p in racers]
        assert [p.returncode for p in racers] == [0] * 4, results
        keys = {bytes.fromhex(out.strip()) for out, _ in results}
        path = config / "nbtasks" / "key"
        assert keys == {path.read_bytes()}, f"trial {trial}: {keys}"
        assert len(path.read_bytes()) == MIN_KEY_BYTES
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert [p.name for p in path.parent.iterdir()] == ["key"]  # temp files cleaned up


_STOPPED_AT = """
import os, sys
from nbtasks import _key

real = os.{point}


def stop(*args, **kwargs):
    print("stopped", flush=True)
    sys.stdin.readline()  # until the test kills this process
    return real(*args, **kwargs)


os.{point} = stop
_key.load_key()
"""


@pytest.mark.parametrize(
    "point",
    [
        pytest.param("write", id="before-writing-the-temp-file"),
        pytest.param("fsync", id="before-fsync"),
        pytest.param("link", id="before-link"),
        pytest.param("unlink", id="after-link-before-cleanup"),
    ],
)
def test_a_crash_while_creating_the_key_never_leaves_a_short_key(point: str, config: Path) -> None:
    """A process killed (SIGKILL) at each step of creating the key: the key file is absent or
    complete, never short, and the next process gets a full key that stays."""
    crasher = start_python(_STOPPED_AT.format(point=point), stdin=subprocess.PIPE)
    assert crasher.stdout is not None
    assert crasher.stdout.readline() == "stopped\n", crasher.communicate()
    crasher.kill()
    crasher.communicate()
    path = key_path()
    leftovers = [p.name for p in path.parent.iterdir() if p.name != "key"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".key-"), leftovers  # a stray temp
    if point == "unlink":
        assert len(path.read_bytes()) == MIN_KEY_BYTES  # linked: complete
    else:
        assert not path.exists()  # never linked: no key at all, rather than a short one

    # The next process (a real one) makes or reads a full key, and keeps it.
    first = subprocess.run(
        [sys.executable, "-c", "from nbtasks._key import load_key; print(load_key().hex())"],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    key = bytes.fromhex(first.stdout.strip())
    assert len(key) == MIN_KEY_BYTES and path.read_bytes() == key
    assert load_key() == key


@POSIX_ONLY
def test_a_stray_empty_temp_file_is_not_taken_for_the_key(config: Path) -> None:
    folder = key_path().parent
    folder.mkdir(parents=True, mode=0o700)
    for name in (".key-crashed.tmp", ".key-x.tmp"):
        _write(folder / name, b"", 0o600)
    key = load_key()
    assert len(key) == MIN_KEY_BYTES and key_path().read_bytes() == key


def test_a_config_dir_that_cannot_be_made_is_a_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NBTASKS_KEY")
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "not-a-dir"))
    with pytest.raises(nbtasks.StoreError) as info:
        load_key()
    message = str(info.value)
    assert message.startswith(f"nbtasks could not create its key file {key_path()}: ")
    assert "mkdir -p" in message and "export NBTASKS_KEY=" in message


@_needs_posix
def test_without_hard_links_posix_refuses_to_guess(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(nbtasks.StoreError, match="does not support hard links") as info:
        load_key()
    assert "head -c 32 /dev/urandom" in str(info.value)
    assert [p.name for p in key_path().parent.iterdir()] == []  # no key, no temp file


def test_without_hard_links_windows_renames_into_place(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``link`` is unsupported (FAT on Windows), the complete temp file is renamed; on
    Windows ``rename`` fails if the key exists, and then the existing key is read."""

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EINVAL, "Incorrect function")

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(_key, "_WINDOWS", True)
    key = load_key()
    assert len(key) == MIN_KEY_BYTES and key_path().read_bytes() == key
    assert [p.name for p in key_path().parent.iterdir()] == ["key"]
    assert load_key() == key
