"""diskcache, opened as data: its ``Disk`` and ``Cache`` made safe, and what its errors mean.

diskcache unpickles what it pickled (CVE-2025-69872), so ``_SafeDisk`` refuses pickle mode: the
store holds JSON text and signed bytes only. diskcache also acts on every row of its ``Settings``
table; ``SafeCache`` applies nbtasks' own settings whatever the rows say.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import diskcache

from .._errors import StoreError
from .files import O_NOFOLLOW, Segments, make_value_dirs, read_value, remove_value, write_all

_log = logging.getLogger("nbtasks")


class _SafeDisk(diskcache.Disk):
    """A Disk that never pickles (so never unpickles) and writes its value files itself:
    0600 from the start in 0700 directories (diskcache's follow the umask), in one write
    from the caller's buffer (diskcache iterates a BytesIO line by line), and never left
    half-written (a full disk would otherwise leave a partial file per retry).

    A value file's name comes from a row of the database, which is data: it is read, and
    deleted (``set``, ``delete``, a cull), only once ``files.value_path`` has confined it
    to the store's own layout; values are read only from regular files."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        kind = type(value)
        if kind is Segments:  # a value with out-of-band buffers: written from where they are
            return value.size, diskcache.core.MODE_BINARY, self._write_file(value), None
        if kind not in (str, bytes, int, float) and not read:
            raise TypeError(
                f"internal error: the store holds only JSON text and signed bytes, "
                f"not {type(value).__name__}"
            )
        if (kind is bytes or kind is str) and len(value) >= self.min_file_size:
            data = value.encode("utf-8") if kind is str else value
            filename = self._write_file(data)
            mode = diskcache.core.MODE_TEXT if kind is str else diskcache.core.MODE_BINARY
            return len(data), mode, filename, None
        size, mode, filename, db_value = super().store(value, read, key)
        if filename is not None:  # pragma: no cover - nbtasks stores no file-like values
            os.chmod(os.path.join(self._directory, filename), 0o600)
        return size, mode, filename, db_value

    def __init__(self, directory: str, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self._written = threading.local()

    @contextlib.contextmanager
    def undo_files(self) -> Iterator[None]:
        """Remove the value files written in this block if it fails: its transaction was
        rolled back, nothing refers to them (a commit retried on a full disk would otherwise
        leave one behind per attempt)."""
        files: list[str] = []
        self._written.files = files
        try:
            yield
        except BaseException:
            for path in files:
                with contextlib.suppress(OSError):
                    os.remove(path)
            raise
        finally:
            self._written.files = None

    def _write_file(self, data: bytes | Segments) -> str:
        filename: str  # diskcache is not typed
        filename, full_path = self.filename()
        for attempt in range(10):
            make_value_dirs(self._directory, filename)
            try:
                fd = os.open(full_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o600)
                break
            except FileNotFoundError:  # another process removed the emptied directory
                if attempt == 9:
                    raise
        try:
            if isinstance(data, Segments):
                data.write(fd)
            else:
                write_all(fd, data)
        except BaseException:
            os.close(fd)
            os.unlink(full_path)
            raise
        os.close(fd)
        files = getattr(self._written, "files", None)
        if files is not None:
            files.append(full_path)
        return filename

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        return fetch_value(self._directory, mode, filename, value)

    def remove(self, file_path: str) -> None:
        if not remove_value(self._directory, file_path):
            _log.warning(
                "nbtasks did not delete %r: the store %s names it as a value file, but it is "
                "not one of the store's own",
                file_path,
                self._directory,
            )


def fetch_value(directory: str, mode: int, filename: str | None, value: Any) -> Any:
    """An entry's value from its row (what ``Disk.fetch`` does, without following a row out of
    the store or reading anything but a regular file, and never unpickling)."""
    if mode == diskcache.core.MODE_RAW:
        return bytes(value) if type(value) is sqlite3.Binary else value
    if mode == diskcache.core.MODE_BINARY:
        return read_value(directory, filename)
    if mode == diskcache.core.MODE_TEXT:
        try:
            return read_value(directory, filename).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StoreError(
                f"the value file {filename!r} of the store {directory} is not UTF-8 text: {exc}"
            ) from exc
    if mode == diskcache.core.MODE_PICKLE:
        raise StoreError(
            f"the store {directory} holds a pickled entry that nbtasks did not write; it was "
            "not unpickled. Use a directory of its own for nbtasks."
        )
    raise StoreError(f"the store {directory} holds an entry of unknown mode {mode!r}")


#: Every setting diskcache keeps in its ``Settings`` table, with nbtasks' value: all of them are
#: given when a store is opened, so nothing that the table says is acted on.
SETTINGS: Final[dict[str, Any]] = {
    **diskcache.DEFAULT_SETTINGS,
    "eviction_policy": "none",  # the default evicts past 1 GB and would drop results
    "tag_index": 1,  # status is the tag: listings by status use the index
    "statistics": 0,
    # No cull: nbtasks sets no expiry, and a planted expired row would have diskcache delete it
    # (and its file) at the next set.
    "cull_limit": 0,
    "sqlite_synchronous": 1,
}
#: The connection settings, the same on every connection nbtasks or diskcache makes.
PRAGMAS: Final = {k: v for k, v in SETTINGS.items() if k.startswith("sqlite_")}
#: What diskcache counts in the table (read back, as numbers).
COUNTERS: Final = frozenset(diskcache.core.METADATA)


class SafeCache(diskcache.Cache):
    """diskcache's Cache, opened as a store that is data only.

    diskcache acts on every row of its ``Settings`` table: ``setattr(cache, key, value)`` for
    each (a ``_directory`` row made every other thread's connection open another database) and
    ``PRAGMA key = value`` for each ``sqlite_*`` row, at open and on every new connection. Here
    the rows are checked before diskcache opens the store (in ``opening``), ``reset`` refuses keys
    that are not settings and applies nbtasks' own pragma values whatever a row says, and the
    statements diskcache retries on a busy database wait at most ``lock_timeout`` (its own
    wait is 60 s)."""

    def __init__(self, directory: str, lock_timeout: float) -> None:
        self._nb_wait = lock_timeout
        super().__init__(directory, timeout=lock_timeout, disk=_SafeDisk, **SETTINGS)

    def reset(self, key: str, value: Any = diskcache.core.ENOVAL, update: bool = True) -> Any:
        if key in PRAGMAS:
            value = PRAGMAS[key]
        elif key.startswith("sqlite_"):
            return None  # not a setting of nbtasks': never applied
        elif key not in SETTINGS and key not in COUNTERS:
            raise StoreError(
                f"the store {self._directory} has a setting {key!r} that diskcache would act on: "
                f"it is not one of diskcache's. {remedy(Path(self._directory))}"
            )
        return super().reset(key, value, update)

    @property
    def _sql_retry(self) -> Callable[..., Any]:
        sql = self._sql
        wait = self._nb_wait

        def execute(statement: str, *args: Any, **kwargs: Any) -> Any:
            deadline = time.monotonic() + wait
            while True:
                try:
                    return sql(statement, *args, **kwargs)
                except sqlite3.OperationalError as exc:
                    if str(exc) != "database is locked" or time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)  # diskcache's own pause

        return execute


def remedy(path: Path) -> str:
    return (
        f"Move it aside (mv {path} {path}.broken) and nbtasks will create a new store there; "
        "the old one is kept for inspection."
    )


def explain(exc: BaseException, path: Path) -> str:
    """What a failed SQLite (or file) call means for the store, and what to do about it: a
    full disk or a lock is not damage, and moving the store aside would not help."""
    text = str(exc).rstrip(".")
    if (
        getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL"
        or "disk is full" in text
        or getattr(exc, "errno", None) == errno.ENOSPC
    ):
        return f"{text}: the disk that holds it is full. Free some space and try again"
    if isinstance(exc, diskcache.Timeout) or text == "database is locked":
        return (
            "the store is locked: another process holds its write lock. Try again, or give "
            "nbtasks.App(lock_timeout=...) more seconds"
        )
    if isinstance(exc, StoreError):
        return text
    if isinstance(exc, OSError) or (
        isinstance(exc, sqlite3.OperationalError) and "decode" not in text
    ):
        return text
    return f"{text}. The store is damaged. {remedy(path)}"
