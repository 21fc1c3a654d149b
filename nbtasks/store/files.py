"""The files of a store, opened as data (SPEC §10: a store is data, never instructions).

Whatever a store directory holds (a planted symlink, a FIFO, a row naming ``../../notes.txt``),
nbtasks reads, writes and deletes only its own files inside it:

- the store directory itself is not a symbolic link, and its own files (``cache.db`` and its
  ``-wal``/``-shm``, the marker, ``.lock``) are regular files when they exist: checked with
  ``lstat`` before SQLite or nbtasks opens them, and every file nbtasks opens itself is opened
  with ``O_NOFOLLOW`` (new ones with ``O_EXCL`` or ``mkstemp``);
- a value file is named by a row of the database; a name that is not diskcache's own layout
  (``ab/cd/<28 hex digits>.val``) is refused before it is joined to the directory, its two
  directories must be real directories, and a value is read (or mapped) only from a regular
  file (a FIFO would block the reader forever);
- a value with out-of-band buffers is one value file of parts (``Segments``): the pickle
  stream at offset 0, then each buffer at the next multiple of ``ALIGN``, so that a mapping of
  the file gives numpy aligned memory; the parts' offsets and lengths are kept (signed) in the
  record and checked against the file before anything is read (``check_layout``);
- the store's lock is taken with a bounded wait (``App(lock_timeout=...)``), and the process
  that holds it is named where the lock file says so (a pid, read as a number and nothing else).

This module knows nothing of diskcache (``store.disk`` does): it is plain files and locks, written
for Linux, macOS and Windows alike (``fcntl`` where it exists, ``msvcrt`` on Windows:
docs/platforms.md).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import mmap
import os
import re
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from .._errors import StoreError

# The lock's mechanism, chosen by what the system has (not by its name): ``fcntl.flock`` on
# POSIX, ``msvcrt.locking`` on Windows.
_fcntl: ModuleType | None
_msvcrt: ModuleType | None
try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None
try:
    _msvcrt = None if _fcntl is not None else importlib.import_module("msvcrt")
except ImportError:  # pragma: no cover - neither: StoreLock says so when it is taken
    _msvcrt = None

O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_O_EXTRA: Final = getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)

DB_NAME: Final = "cache.db"
MARKER: Final = "nbtasks-store.json"
LOCK: Final = ".lock"
#: A store's own files besides its values: each is a regular file or absent.
OWN_FILES: Final = (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", MARKER, LOCK)

#: diskcache's value file names (``Disk.filename``): two levels of two hex digits, then 28.
_VALUE_NAME: Final = re.compile(r"([0-9a-f]{2})[/\\]([0-9a-f]{2})[/\\]([0-9a-f]{28}\.val)\Z")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _not_ours(path: str | Path, what: str, mode: int, store: str | Path) -> StoreError:
    return StoreError(
        f"{path} in the store {store} is {_kind(mode)}, not {what}: nbtasks never follows links "
        "or opens special files in a store (a store is data, never instructions). If you did "
        f"not put it there, someone else did: remove it (rm {path}) or move the store aside."
    )


# --------------------------------------------------------------------------- the directory


def check_directory(directory: Path, create: bool) -> os.stat_result:
    """The store directory's status, read from the opened directory, after checking it is a
    real directory (created 0700, with its parents, if ``create`` and missing). A symbolic link
    is refused: a link planted where a store is expected (a cloned repository's ``.nbtasks``)
    would send every write elsewhere."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        if not create:
            raise StoreError(
                f"there is no store at {directory}: check the path (nbtasks list --store PATH)"
            ) from None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(directory)
        except OSError as exc:
            raise StoreError(f"cannot create the store directory {directory}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"cannot read the store directory {directory}: {exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        target = os.path.realpath(directory)
        raise StoreError(
            f"the store {directory} is a symbolic link to {target}: nbtasks does not follow a "
            "link to a store (one planted in a repository would send its writes elsewhere). "
            f"If the link is yours, open its target: nbtasks.App(store={target!r})"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            f"the store {directory} is {_kind(st.st_mode)}, not a directory: "
            "point nbtasks at a directory"
        )
    return _opened(directory, st)


def _opened(directory: Path, st: os.stat_result) -> os.stat_result:
    """The directory's ``fstat``, from a descriptor opened without following a link: what the
    owner check reads is what is opened, not what a swap left at the path after ``lstat``."""
    flags = getattr(os, "O_DIRECTORY", 0)
    if not flags:  # pragma: no cover - Windows cannot open a directory: lstat it is
        return st
    try:
        fd = os.open(directory, os.O_RDONLY | flags | O_NOFOLLOW | _O_EXTRA)
    except OSError as exc:
        raise StoreError(f"cannot open the store directory {directory}: {exc}") from exc
    try:
        opened = os.fstat(fd)
    finally:
        os.close(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        raise StoreError(
            f"the store directory {directory} was replaced while it was opened: try again, and "
            "check who else writes there"
        )
    return opened


def check_own_files(directory: Path) -> None:
    """Each of the store's own files is a regular file or absent (``lstat``: links are not
    followed). SQLite opens ``cache.db-wal`` with ``O_CREAT``: a link there would have it write
    its log into the link's target."""
    for name in OWN_FILES:
        path = directory / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"cannot read {path} in the store {directory}: {exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise _not_ours(path, "a regular file", st.st_mode, directory)


def write_new_file(directory: Path, name: str, data: bytes) -> None:
    """Write ``directory/name`` whole: a new temp file (``mkstemp``: ``O_EXCL``, 0600), then
    renamed over ``name`` (a link at ``name`` is replaced, never followed)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------- value files


def value_path(directory: str, filename: object) -> str:
    """The full path of the value file a row names, once the name is one of diskcache's own
    (``ab/cd/<28 hex>.val``) and its two directories are real directories: an absolute name,
    a ``../`` or a link never leads out of the store."""
    match = _VALUE_NAME.match(filename) if isinstance(filename, str) else None
    if match is None:
        raise StoreError(
            f"the store {directory} names a value file {filename!r} that is not one of its own "
            "(ab/cd/<28 hex digits>.val): it was neither read nor deleted. The store is damaged "
            "or was tampered with; its other records still read."
        )
    top, sub, name = match.groups()
    parent = directory
    for part in (top, sub):
        parent = os.path.join(parent, part)
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            break  # a missing value: the caller's open says so
        if not stat.S_ISDIR(st.st_mode):
            raise _not_ours(parent, "a directory", st.st_mode, directory)
    return os.path.join(directory, top, sub, name)


def _open_value(directory: str, filename: object) -> tuple[int, int]:
    """A value file's descriptor and size: opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO does
    not block the open), kept only if ``fstat`` says it is a regular file."""
    path = value_path(directory, filename)
    try:
        fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_NONBLOCK | _O_EXTRA)
    except OSError as exc:
        if os.path.islink(path):
            raise _not_ours(path, "a value file", stat.S_IFLNK, directory) from exc
        raise StoreError(f"the value file {path} of the store {directory}: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_ours(path, "a value file", st.st_mode, directory)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_value(directory: str, filename: object) -> bytes:
    """The bytes of a value file (``_open_value``: confined, a regular file)."""
    fd, size = _open_value(directory, filename)
    try:
        chunks = []
        while chunk := os.read(fd, max(size, 1 << 16)):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- parts of a value

#: Each part of a value file with out-of-band buffers starts at a multiple of this: numpy uses
#: a mapped buffer where it is, and wants it aligned for its dtype (64: a cache line, more than
#: any dtype needs).
ALIGN: Final = 64
_PADDING: Final = bytes(ALIGN)
#: Parts at least this long are read into anonymous memory (``ValueFile.read``).
_ANONYMOUS_MIN: Final = 1 << 20
#: At most this many parts in a value (a layout read from a record is data: bounded).
_MAX_PARTS: Final = 1 << 20


class Segments:
    """A value of parts: the pickle stream, then its out-of-band buffers, each written from
    where it is in memory (the value's own arrays: never joined into one bytes object), at
    the offsets of ``layout`` (``[[offset, length], ...]``, as the record keeps it)."""

    __slots__ = ("layout", "parts", "size")

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        self.parts = tuple(parts)
        self.layout: list[list[int]] = []
        offset = end = 0
        for part in self.parts:
            length = memoryview(part).nbytes
            self.layout.append([offset, length])
            end = offset + length
            offset = -(-end // ALIGN) * ALIGN
        self.size = end

    def write(self, fd: int) -> None:
        """Write the parts to ``fd`` (a new file, at its start), zeros between them."""
        at = 0
        for (offset, length), part in zip(self.layout, self.parts, strict=True):
            if offset > at:
                write_all(fd, _PADDING[: offset - at])
            write_all(fd, part)
            at = offset + length


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` from where it is (``os.write`` may write less than asked)."""
    with memoryview(data) as view, view.cast("B") as flat:
        done = 0
        while done < len(flat):
            done += os.write(fd, flat[done:])


def check_layout(layout: object, where: str, directory: str) -> list[tuple[int, int]]:
    """The parts a record says its value file holds, as ``(offset, length)``: the stream at 0,
    then parts in order, each aligned and after the one before. A layout is data (it is signed
    with the stream, but read before the signature is checked): anything else is refused."""
    parts: list[tuple[int, int]] = []
    end = 0
    if isinstance(layout, list) and 2 <= len(layout) <= _MAX_PARTS:
        for item in layout:
            if not (
                isinstance(item, list)
                and len(item) == 2
                and all(type(n) is int and n >= 0 for n in item)
            ):
                break
            offset, length = item
            if offset < end or offset % ALIGN or (not parts and offset != 0):
                break
            parts.append((offset, length))
            end = offset + length
        else:
            return parts
    raise StoreError(
        f"{where} in the store {directory} has a damaged layout of its parts ({layout!r:.100}): "
        "it was not read. The store is damaged or was tampered with; its other values still read."
    )


class ValueFile:
    """A value file opened for reading its parts (confined and checked as ``read_value``
    does), by offset: read into new memory, or mapped read-only."""

    def __init__(self, directory: str, filename: object, end: int) -> None:
        self.fd, self.size = _open_value(directory, filename)
        if self.size < end:
            os.close(self.fd)
            raise StoreError(
                f"the value file {filename!r} of the store {directory} is {self.size} bytes, "
                f"shorter than its record says ({end}): it was not read. The store is damaged."
            )
        self._file: Any = io.FileIO(self.fd, "rb", closefd=False)

    def read(self, offset: int, length: int) -> bytearray | mmap.mmap:
        """``length`` bytes from ``offset``, read into new writable memory: one copy, from the
        file system's cache into the value's memory. A large part goes into anonymous memory
        (``mmap(-1, n)``: the system hands out zeroed pages as they are first written, where a
        bytearray is zero-filled first, which cost a 200 MB read 40 % more)."""
        out: bytearray | mmap.mmap = (
            mmap.mmap(-1, length) if length >= _ANONYMOUS_MIN else bytearray(length)
        )
        with memoryview(out) as view:
            self._file.seek(offset)
            done = 0
            while done < length:
                n = self._file.readinto(view[done:])
                if not n:
                    raise StoreError(f"the value file of the store was cut short at {done}")
                done += n
        return out

    def map(self) -> mmap.mmap:
        """The whole file, mapped read-only (``ACCESS_READ``: writes to it raise). The
        mapping keeps the file open on its own; it is unmapped when nothing refers to it."""
        return mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)

    def close(self) -> None:
        self._file.close()
        os.close(self.fd)

    def __enter__(self) -> ValueFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_value(directory: str, filename: object) -> bool:
    """Delete a value file and its emptied directories (never beyond the two of the layout).
    A name that is not one of the store's own deletes nothing: False."""
    try:
        path = value_path(directory, filename)
    except StoreError:
        return False
    with contextlib.suppress(OSError):
        os.remove(path)  # a link is removed itself, never its target
    parent = os.path.dirname(path)
    for _ in range(2):
        try:
            os.rmdir(parent)  # only if empty
        except OSError:
            break
        parent = os.path.dirname(parent)
    return True


def make_value_dirs(directory: str, filename: str) -> None:
    """Create (0700) the two directories of a new value file, refusing any that is a link."""
    value_path(directory, filename)  # checks the name and the directories that exist
    top = os.path.join(directory, filename[:2])
    for d in (top, os.path.join(top, filename[3:5])):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode):
            raise _not_ours(d, "a directory", st.st_mode, directory)


# --------------------------------------------------------------------------- the lock


_PID_WIDTH: Final = 16  # the holder's pid, as text padded with spaces


def _try_lock(fd: int) -> bool:
    """Take the lock without waiting: False if another process holds it. ``msvcrt.locking``
    locks a byte range from the file's position, and raises at once (``LK_NBLCK``) when another
    handle holds it: the byte after the pid, so waiters can still read the pid (Windows keeps
    a process from reading a range another one has locked)."""
    try:
        if _fcntl is not None:
            _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        elif _msvcrt is not None:  # pragma: no cover - Windows
            os.lseek(fd, _PID_WIDTH, os.SEEK_SET)
            _msvcrt.locking(fd, _msvcrt.LK_NBLCK, 1)
        else:  # pragma: no cover - neither fcntl nor msvcrt
            raise StoreError("this system has neither fcntl nor msvcrt to lock a store with")
    except OSError:
        return False
    return True


def _write_pid(fd: int) -> None:
    """This process's pid at the start of the lock file: fixed width, in place (no truncation,
    ~0.2 ms, per open)."""
    data = str(os.getpid()).encode().ljust(_PID_WIDTH)
    with contextlib.suppress(OSError):
        if hasattr(os, "pwrite"):
            os.pwrite(fd, data, 0)
        else:  # Windows: no pwrite; the descriptor is this lock's alone
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, data)


def _read_pid(fd: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, _PID_WIDTH, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, _PID_WIDTH)


class StoreLock:
    """The store's inter-process lock (held while a store is created or upgraded), taken with a
    bounded wait. The holder writes its pid into the file, so a waiter that gives up can name
    it; the pid is read as a number and only printed."""

    def __init__(self, directory: Path, timeout: float) -> None:
        self.path = directory / LOCK
        self.directory = directory
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | _O_EXTRA, 0o600)
        except OSError as exc:
            if os.path.islink(self.path):
                raise _not_ours(self.path, "a lock file", stat.S_IFLNK, self.directory) from exc
            raise StoreError(
                f"cannot open the lock {self.path} of the store {self.directory}: {exc}"
            ) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_ours(self.path, "a lock file", st.st_mode, self.directory)
            deadline = time.monotonic() + self.timeout
            pause = 0.001
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"the store {self.directory} is locked{self._holder(fd)}: waited "
                        f"{self.timeout:g} s for {self.path}. Another process is creating or "
                        "upgrading it, or holds the lock: try again, or raise "
                        "nbtasks.App(lock_timeout=...)"
                    )
                time.sleep(pause)  # a lock wait, bounded above
                pause = min(pause * 2, 0.05)
            _write_pid(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        with contextlib.suppress(OSError, ValueError):
            text = _read_pid(fd).strip()
            if text.isdigit():
                return f" by pid {int(text)}"
        return ""

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing releases flock and msvcrt locks alike
