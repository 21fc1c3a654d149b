"""The store: the only user of diskcache, and the owner's live table of its tasks.

Key layout (one diskcache ``Cache`` opened as a store, never as a cache)::

    nbtasks:schema      int   schema version, checked on open
    t:<task id>         str   the task's JSON record, tagged with its status (tag index),
                              its listing fields copied into nbtasks' own columns (below)
    g:<group id>        str   a group's JSON record (member ids)
    v:<task id>:<what>  bytes a large signed pickle (arguments or return value)
    k:<cache key>       str   the id of the task that computed a cached call
    x:<task id>         str   a cancel request, written by anyone, acted on by the owner

Task ids are time-ordered (a UUIDv7-like layout), so ``ORDER BY key DESC`` is newest first
and inserts stay at the end of the B-tree.

Listings (``app.results()``, ``nbtasks list``, ``%tasks``) read a task's name, times and
progress from columns that nbtasks adds to diskcache's ``Cache`` table (``SUMMARY_COLUMNS``,
written with the record in the same row): parsing 100,000 JSON records, in Python or with
SQLite's JSON functions, costs 5-12 µs each here, reading the columns under 2 µs.

Writes follow DESIGN principle 2: ``create()`` commits READY records at submit (one transaction
for a whole group); after that the owner changes its in-memory record and marks it dirty, and
one writer thread group-commits the latest version of every dirty record, in order per task,
within milliseconds at low load and at most ~0.2 s behind under load (back-pressure slows the
workers down instead). Every 0.1 s the writer also checkpoints. Storage only: sampling
progress, time limits and acting on cancel requests (``cancel_requests()``) are the runtime's
supervisor's.

diskcache unpickles what it pickled (CVE-2025-69872), so ``_SafeDisk`` refuses pickle mode:
the store holds JSON text and signed bytes only.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import math
import os
import random
import socket
import sqlite3
import stat
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import diskcache

from ._codec import INLINE_LIMIT, Codec, Signer, _is_plain
from ._errors import StoreError, UnknownTaskId
from ._model import FINISHED, MISSING, TaskStatus, check_transition
from ._storefiles import (
    DB_NAME,
    MARKER,
    O_NOFOLLOW,
    StoreLock,
    check_directory,
    check_own_files,
    make_value_dirs,
    read_value,
    remove_value,
    write_new_file,
)

#: 2: the listing columns (SUMMARY_COLUMNS); a store of schema 1 gains them when it is opened.
SCHEMA: Final = 2
#: Seconds a call waits for the store's lock or a busy database before StoreError says it is
#: locked (``App(lock_timeout=...)``).
LOCK_TIMEOUT: Final = 10.0
#: Seconds the writer thread waits for a busy database before it tries again next round.
_WRITER_WAIT: Final = 0.1
#: A commit whose busy wait is not cut (the common case: made once, not per commit).
_NO_WAIT_CUT: Final = contextlib.nullcontext()
TICK: Final = 0.1  # seconds between the writer's checkpoints and commits of soon=False changes
COALESCE: Final = 0.002  # seconds the writer lets changes gather before it commits
BACKLOG: Final = 4000  # dirty records past which workers wait for the writer
# WAL checkpoints (copying committed pages into the database, then an fsync) are the writer's
# job (Store._checkpoint), not a submit's. SQLite's own, inline at a commit, is kept as a
# safety net past WAL_SAFETY pages (another process may be committing too).
WAL_FORCE: Final = 8000  # pages (32 MB): under load, the writer checkpoints past this
WAL_SAFETY: Final = 2 * WAL_FORCE
_WAL_FRAME: Final = 4096 + 24  # a page and its frame header
#: A pickle this long or longer goes to its own entry (its base64 would pass INLINE_LIMIT).
_INLINE_PICKLE: Final = INLINE_LIMIT * 3 // 4 - 32
_FINISHED_NAMES: Final = tuple(s.value for s in FINISHED)
_STATUS: Final = {s.value: s for s in TaskStatus}
_UNFINISHED: Final = ("READY", "RUNNING")

# --------------------------------------------------------------------------- ids

_rng = random.Random(os.urandom(16))
_forks = 0  # bumped in a forked child: connections made before the fork are not its own


def _after_fork() -> None:
    global _forks
    _forks += 1
    _rng.seed(os.urandom(16))


os.register_at_fork(after_in_child=_after_fork)
_last_ms = 0
_seq = 0
_id_lock = threading.Lock()


def new_id() -> str:
    """A time-ordered id (UUIDv7 layout): 48 bits of milliseconds, a 12-bit counter that keeps
    ids made in the same millisecond in order, then 62 random bits.

    A PRNG seeded once from os.urandom: ``uuid4()`` reads os.urandom per call, which releases
    the GIL and costs 20-40 µs under load (notes/store-findings.md)."""
    global _last_ms, _seq
    with _id_lock:
        ms = int(time.time() * 1000)
        if ms <= _last_ms:
            _seq += 1
            if _seq > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
                _last_ms += 1
                _seq = 0
            ms = _last_ms
        else:
            _last_ms, _seq = ms, _rng.getrandbits(8)
        seq = _seq
    low = _rng.getrandbits(62) | (0b10 << 62)
    return f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-7{seq:03x}-{low >> 48:04x}-{low & (2**48 - 1):012x}"


# --------------------------------------------------------------------------- owners


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), to tell a reused pid; None
    if there is no such process, or only its zombie (it has ended, not been reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None
    return fields[19].decode()


HOST: Final = socket.gethostname()
_log = logging.getLogger("nbtasks")


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{HOST}:{pid}:{_start_time(pid) or '?'}"


def owner_alive(owner: str | None) -> bool:
    """False only when the owner surely is gone: same host, and its pid is dead or reused."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 3:
        return False
    host, pid_text, start = ":".join(parts[:-2]), parts[-2], parts[-1]
    if host != HOST:
        return True  # cannot tell from here
    try:
        pid = int(pid_text)
    except ValueError:  # not a token nbtasks wrote: nobody owns the task
        return False
    if not 0 < pid < 2**22:  # os.kill(0 or -1, ...) would signal a whole process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    if now is None:
        return False
    return start == "?" or now == start


def owner_pid(owner: str | None) -> int | None:
    try:
        return int((owner or "").split(":")[-2])
    except (IndexError, ValueError):
        return None


# --------------------------------------------------------------------------- diskcache


class _SafeDisk(diskcache.Disk):  # type: ignore[misc]
    """A Disk that never pickles (so never unpickles) and writes its value files itself:
    0600 from the start in 0700 directories (diskcache's follow the umask), in one write
    from the caller's buffer (diskcache iterates a BytesIO line by line), and never left
    half-written (a full disk would otherwise leave a partial file per retry).

    A value file's name comes from a row of the database, which is data: it is read, and
    deleted (``set``, ``delete``, a cull), only once ``_storefiles.value_path`` has confined it
    to the store's own layout; values are read only from regular files."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        kind = type(value)
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

    def _write_file(self, data: bytes) -> str:
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
            with memoryview(data) as view:
                done = 0
                while done < len(view):
                    done += os.write(fd, view[done:])
        except BaseException:
            os.close(fd)
            os.unlink(full_path)
            raise
        os.close(fd)
        files = getattr(self._written, "files", None)
        if files is not None:
            files.append(full_path)
        return filename  # type: ignore[no-any-return]

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
_SETTINGS: Final[dict[str, Any]] = {
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
_PRAGMAS: Final = {k: v for k, v in _SETTINGS.items() if k.startswith("sqlite_")}
#: What diskcache counts in the table (read back, as numbers).
_COUNTERS: Final = frozenset(diskcache.core.METADATA)


class _SafeCache(diskcache.Cache):  # type: ignore[misc]
    """diskcache's Cache, opened as a store that is data only.

    diskcache acts on every row of its ``Settings`` table: ``setattr(cache, key, value)`` for
    each (a ``_directory`` row made every other thread's connection open another database) and
    ``PRAGMA key = value`` for each ``sqlite_*`` row, at open and on every new connection. Here
    the rows are checked before diskcache opens the store (``_inspect``), ``reset`` refuses keys
    that are not settings and applies nbtasks' own pragma values whatever a row says, and the
    statements diskcache retries on a busy database wait at most ``lock_timeout`` (its own
    wait is 60 s)."""

    def __init__(self, directory: str, lock_timeout: float) -> None:
        self._nb_wait = lock_timeout
        super().__init__(directory, timeout=lock_timeout, disk=_SafeDisk, **_SETTINGS)

    def reset(self, key: str, value: Any = diskcache.core.ENOVAL, update: bool = True) -> Any:
        if key in _PRAGMAS:
            value = _PRAGMAS[key]
        elif key.startswith("sqlite_"):
            return None  # not a setting of nbtasks': never applied
        elif key not in _SETTINGS and key not in _COUNTERS:
            raise StoreError(
                f"the store {self._directory} has a setting {key!r} that diskcache would act on: "
                f"it is not one of diskcache's. {_remedy(Path(self._directory))}"
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


#: nbtasks' columns beside diskcache's in its ``Cache`` table: what a listing shows of a task,
#: copied from its record at every write (the record stays the truth). diskcache names its
#: columns in every statement, so it neither sees nor clears them; other keys leave them NULL.
SUMMARY_COLUMNS: Final = (
    ("nb_name", "TEXT"),
    ("nb_enqueued", "REAL"),
    ("nb_started", "REAL"),
    ("nb_finished", "REAL"),
    ("nb_progress", "TEXT"),  # JSON [current, total, message, rate], or NULL
)
#: The backfill of a store written before the columns existed (schema 1).
_BACKFILL: Final = (
    "UPDATE Cache SET nb_name = json_extract(value, '$.task_name'),"
    " nb_enqueued = json_extract(value, '$.enqueued_at'),"
    " nb_started = json_extract(value, '$.started_at'),"
    " nb_finished = json_extract(value, '$.finished_at'),"
    " nb_progress = json(json_extract(value, '$.progress'))"
    " WHERE key >= 't:' AND key < 't;'"
)

#: diskcache indexes every row's expiry time, NULL for all that nbtasks writes: one B-tree page
#: more to write in every commit (~1 of 7 WAL frames of a submit's), for nothing. This index has
#: diskcache's name, so its ``CREATE INDEX IF NOT EXISTS`` at each open keeps it, and holds only
#: the rows that do expire: diskcache's expiry queries (``expire_time > 0``, ``IS NOT NULL``)
#: still use it. A store of an older nbtasks gets it when opened; that nbtasks works with it.
_EXPIRE_INDEX: Final = (
    "CREATE INDEX Cache_expire_time ON Cache(expire_time) WHERE expire_time IS NOT NULL"
)

#: What a listing reads, as a covering index of the task rows only: the summary of every task
#: reads this (~9 MB for 100,000 tasks) instead of the table's rows (~80 MB: each holds its
#: record). ``listing()``'s key-range query names the same range, so SQLite picks it; the
#: status filters keep diskcache's tag index. Measured: 100,000 rows in a fresh process
#: 233-286 -> 162-210 ms; a delay loop no slower (272 vs 273 µs/task median), map ~4% slower.
_LISTING_INDEX: Final = (
    "CREATE INDEX nb_listing ON Cache("
    "key, tag, nb_name, nb_enqueued, nb_started, nb_finished, nb_progress"
    ") WHERE key >= 't:' AND key < 't;'"
)

#: How an entry is stored, then its value: the last columns of every ``Store._read`` query.
_STORED: Final = "mode, expire_time, filename, value"
#: One entry by a str key (diskcache keeps those raw).
_GET: Final = f"SELECT {_STORED} FROM Cache WHERE key = ? AND raw = 1"

#: Task records are written with one statement each, straight into diskcache's table (its own
#: ``set`` costs ~25 µs more: a SELECT, then INSERT or UPDATE, then a cull check). The row is
#: what ``Cache.set(key, text, tag=status)`` writes for a str key and a str value (mode RAW),
#: so ``Cache.get`` reads it back; the update keeps the rowid, as ``set`` does.
_ROW: Final = "(?, 1, ?, NULL, ?, 0, ?, 0, 1, NULL, ?, ?, ?, ?, ?, ?)"
_UPSERT: Final = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
    " tag, size, mode, filename, value, nb_name, nb_enqueued, nb_started, nb_finished,"
    f" nb_progress) VALUES {_ROW}"
    " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time,"
    " access_time = excluded.access_time, tag = excluded.tag, value = excluded.value,"
    " nb_name = excluded.nb_name, nb_enqueued = excluded.nb_enqueued,"
    " nb_started = excluded.nb_started, nb_finished = excluded.nb_finished,"
    " nb_progress = excluded.nb_progress"
)
_CHUNKS: Final = (512, 64)  # rows per statement, then the rest in one
#: A new record under an id given by the caller: an existing row is an error, not replaced.
_INSERT: Final = _UPSERT[: _UPSERT.index(" ON CONFLICT")]


def _insert(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    for row in rows:
        con.execute(_INSERT, row)


def _upsert(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Write records with multi-row statements: chunks of 512 and 64 rows, then one statement
    for the rest (at most 63 distinct statements to prepare; the connection caches them)."""
    i = 0
    while i < len(rows):
        left = len(rows) - i
        size = next((n for n in _CHUNKS if n <= left), left)
        con.execute(_upsert_sql(size), [v for row in rows[i : i + size] for v in row])
        i += size


_upsert_cache: dict[int, str] = {}


def _upsert_sql(n: int) -> str:
    sql = _upsert_cache.get(n)
    if sql is None:
        sql = _upsert_cache[n] = _UPSERT.replace(_ROW, ", ".join([_ROW] * n))
    return sql


_LAYOUT: Final = {
    "key",
    "raw",
    "store_time",
    "expire_time",
    "access_time",
    "access_count",
    "tag",
    "size",
    "mode",
    "filename",
    "value",
}


def _check_private_layout(cache: diskcache.Cache) -> set[str]:
    """Records are written and queried in diskcache's ``Cache`` table directly (``_sql``):
    fail loudly if its layout changed. Returns the table's columns."""
    cols = {row[1] for row in cache._sql("PRAGMA table_info(Cache)").fetchall()}
    need = _LAYOUT
    if not need <= cols:
        raise StoreError(
            f"diskcache {diskcache.__version__} changed its table layout (has {sorted(cols)}); "
            "nbtasks needs diskcache 5.6.x: pip install 'diskcache>=5.6,<5.7'"
        )
    return cols


def _upgrade_layout(cache: diskcache.Cache, cols: set[str], schema: Any) -> None:
    """Bring the table to this nbtasks' layout, under the store's lock: the listing columns
    (a new store, or one of schema 1: those are filled from the records), the schema mark,
    the partial expiry index and the listing index (a store of an older nbtasks gets them
    here, once; 100,000 tasks: ~0.2 s)."""
    missing = [(name, kind) for name, kind in SUMMARY_COLUMNS if name not in cols]
    indexes = dict(
        cache._sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
            " AND name IN ('Cache_expire_time', 'nb_listing')"
        ).fetchall()
    )
    partial = "WHERE" in (indexes.get("Cache_expire_time") or "")
    listed = "nb_listing" in indexes
    if not missing and schema == SCHEMA and partial and listed:
        return
    with cache.transact():  # bounded: diskcache.Timeout after lock_timeout
        for name, kind in missing:
            cache._sql(f"ALTER TABLE Cache ADD COLUMN {name} {kind}")
        if missing:
            cache._sql(_BACKFILL)
        if not partial:
            cache._sql("DROP INDEX IF EXISTS Cache_expire_time")
            cache._sql(_EXPIRE_INDEX)
        if not listed:
            cache._sql(_LISTING_INDEX)
        cache.set("nbtasks:schema", SCHEMA)


def _remedy(path: Path) -> str:
    return (
        f"Move it aside (mv {path} {path}.broken) and nbtasks will create a new store there; "
        "the old one is kept for inspection."
    )


def _explain(exc: BaseException, path: Path) -> str:
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
    return f"{text}. The store is damaged. {_remedy(path)}"


def open_cache(
    directory: Path, trust: bool, adopt: bool = False, lock_timeout: float = LOCK_TIMEOUT
) -> diskcache.Cache:
    """Open (creating if needed, owner-only) the diskcache behind a store, under its lock.

    A new store is briefly a 0-byte cache.db; the marker file, written last under the lock,
    tells "being created" from "damaged" (notes/store-findings.md). Before diskcache opens an
    existing store, its schema, ``Settings`` and database objects are checked with plain SQLite
    (``_inspect``): diskcache would act on what they say."""
    st = check_directory(directory, create=True)
    _check_owner(directory, st, trust)
    check_own_files(directory)
    db = directory / DB_NAME
    with StoreLock(directory, lock_timeout):
        fresh = not os.path.lexists(directory / MARKER)
        if fresh:
            size = os.lstat(db).st_size if os.path.lexists(db) else 0
            if size > 0 and not adopt:
                raise StoreError(
                    f"{db} exists but is not an nbtasks store (no {MARKER}). "
                    "Point nbtasks at an empty or new directory."
                )
            if size == 0:
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(db, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, 0o600))
                os.chmod(db, 0o600)
            if size > 0:  # adopting a diskcache: what it says is checked too
                _inspect(db, directory, lock_timeout, read_only=False)
            schema: Any = SCHEMA
        else:
            _check_not_empty(db, directory)
            schema = _inspect(db, directory, lock_timeout, read_only=False)
            _check_schema(schema, db, directory)
        try:
            cache = _SafeCache(str(directory), lock_timeout)
        except (sqlite3.DatabaseError, diskcache.Timeout) as exc:
            raise StoreError(
                f"the store {db} cannot be opened: {_explain(exc, directory)}"
            ) from exc
        try:
            if fresh:
                cache.set("nbtasks:schema", SCHEMA)
                write_new_file(directory, MARKER, json.dumps({"schema": SCHEMA}).encode())
            _upgrade_layout(cache, _check_private_layout(cache), schema)
        except (sqlite3.DatabaseError, diskcache.Timeout, OSError) as exc:
            cache.close()
            raise StoreError(
                f"the store {directory} could not be "
                f"{'created' if fresh else f'upgraded to schema {SCHEMA}'}: "
                f"{_explain(exc, directory)}"
            ) from exc
        except BaseException:
            cache.close()
            raise
        # SQLite made these just now, beside a database checked not to be a link.
        nofollow = os.chmod in os.supports_follow_symlinks  # not on Windows before 3.13
        for name in (DB_NAME + "-wal", DB_NAME + "-shm"):
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.chmod(directory / name, 0o600, follow_symlinks=not nofollow)
        return cache


def _check_not_empty(db: Path, directory: Path) -> None:
    if not os.path.lexists(db) or os.lstat(db).st_size == 0:
        raise StoreError(
            f"the store database {db} is "
            f"{'missing' if not os.path.lexists(db) else 'empty (0 bytes)'}"
            f": the store is damaged and its records are lost. {_remedy(directory)}"
        )


def connect(db: Path, timeout: float, read_only: bool) -> sqlite3.Connection:
    """A plain SQLite connection to a store's database; ``read_only``: opened ``mode=ro``, so
    it never writes the database (SQLite may still create its ``-wal``/``-shm`` beside it, as
    for any reader of a WAL database). Where those cannot be made or opened (a directory this
    user cannot write), the database is read as immutable: a snapshot, as SQLite documents
    for read-only media."""
    if not read_only:
        return sqlite3.connect(db, timeout=timeout, isolation_level=None)
    uri = "file:" + urllib.parse.quote(str(db))
    con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None)
    try:
        con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        con.close()
        con = sqlite3.connect(
            f"{uri}?mode=ro&immutable=1", uri=True, timeout=timeout, isolation_level=None
        )
    return con


#: The database objects a store may hold (diskcache's, then nbtasks'), by type and name.
_OBJECTS: Final = {
    ("table", "Settings"),
    ("table", "Cache"),
    ("index", "sqlite_autoindex_Settings_1"),
    ("index", "Cache_key_raw"),
    ("index", "Cache_expire_time"),
    ("index", "Cache_tag_rowid"),
    ("index", "nb_listing"),
    # diskcache's eviction indexes: a diskcache adopted as a store may have one.
    ("index", "Cache_store_time"),
    ("index", "Cache_access_time"),
    ("index", "Cache_access_count"),
}
#: diskcache's triggers, as it writes them: a trigger runs SQL at every write, so one whose text
#: differs is not diskcache's.
_TRIGGERS: Final = {
    f"Settings_{what}_{when}": (
        f"CREATE TRIGGER Settings_{what}_{when} AFTER {when.upper()} ON Cache FOR EACH ROW "
        f'BEGIN UPDATE Settings SET value = value {change} WHERE key = "{what}"; END'
    )
    for what, when, change in (
        ("count", "insert", "+ 1"),
        ("count", "delete", "- 1"),
        ("size", "insert", "+ NEW.size"),
        ("size", "update", "+ NEW.size - OLD.size"),
        ("size", "delete", "- OLD.size"),
    )
}


def _inspect(db: Path, directory: Path, timeout: float, read_only: bool) -> Any:
    """Check what diskcache would act on, with plain SQLite, before it opens the store: every
    ``Settings`` row is one of its settings with a value of the right kind, every database
    object is one diskcache or nbtasks makes, and the schema mark is a plain number. Returns
    the schema version (None if the mark is missing)."""
    try:
        con = connect(db, timeout, read_only)
        try:
            objects = con.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
            tables = {name for kind, name, _ in objects if kind == "table"}
            settings = (
                con.execute("SELECT key, value FROM Settings").fetchall()
                if "Settings" in tables
                else []
            )
            row = (
                con.execute(
                    "SELECT mode, filename, value FROM Cache"
                    " WHERE key = 'nbtasks:schema' AND raw = 1"
                ).fetchone()
                if "Cache" in tables
                else None
            )
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"the store {db} cannot be opened: {_explain(exc, directory)}") from exc
    for kind, name, sql in objects:
        # (SQLite's ALTER TABLE may rewrite a trigger's "count" as 'count')
        if kind == "trigger" and _TRIGGERS.get(name) == str(sql).replace("'", '"'):
            continue
        if (kind, name) not in _OBJECTS:
            raise StoreError(
                f"the store {db} holds a database {kind} {name!r} that neither diskcache nor "
                f"nbtasks makes, and SQLite would run it: it was not opened. {_remedy(directory)}"
            )
    for key, value in settings:
        if not _setting_ok(key, value):
            raise StoreError(
                f"the store {db} has a Settings row {key!r} = {value!r} that is not one of "
                f"diskcache's settings with a value of its kind, and diskcache would act on it: "
                f"it was not opened. {_remedy(directory)}"
            )
    if row is None:
        return None
    mode, filename, value = row
    if mode != diskcache.core.MODE_RAW or filename is not None or type(value) is not int:
        return f"{value!r} (mode {mode!r})"
    return value


def _setting_ok(key: Any, value: Any) -> bool:
    if key in _COUNTERS:
        return type(value) is int
    default = _SETTINGS.get(key, MISSING) if isinstance(key, str) else MISSING
    if default is MISSING:
        return False
    if isinstance(default, str):
        return isinstance(value, str) and value.replace("-", "").isalpha() and len(value) < 40
    return type(value) is int


def _check_schema(schema: Any, db: Path, directory: Path) -> None:
    if schema is None:
        raise StoreError(f"the store {db} has lost its schema key. {_remedy(directory)}")
    if not isinstance(schema, int):
        raise StoreError(
            f"the store {db} has a schema key that nbtasks did not write ({schema}): it is "
            f"damaged or was tampered with. {_remedy(directory)}"
        )
    if schema > SCHEMA:
        raise StoreError(
            f"the store {directory} was written by a newer nbtasks (schema {schema}; this "
            f"one reads schema {SCHEMA}). Upgrade nbtasks: pip install -U nbtasks"
        )


def _check_owner(directory: Path, st: os.stat_result, trust: bool) -> None:
    if trust or not hasattr(os, "getuid"):  # Windows: see docs/security.md
        return
    if st.st_uid != os.getuid():
        raise StoreError(
            f"the store {directory} belongs to another user (uid {st.st_uid}); its pickles "
            "could run their code as you. Open it with nbtasks.App(store, trust=True) "
            "if you trust them."
        )
    if st.st_mode & 0o022:
        raise StoreError(
            f"the store {directory} can be written by others (mode {st.st_mode & 0o777:o}). "
            f"Run `chmod 700 {directory}`, or open it with nbtasks.App(store, trust=True)."
        )


# --------------------------------------------------------------------------- live records


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic GC while decoding many records: each of its passes walks every object
    made so far, which tripled the time to read 100,000 records (and JSON makes no cycles)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Live:
    """A task in the owner's memory: its record (the truth this process reads first), the
    in-memory values (arguments, return value) and the waiters to wake when it ends."""

    __slots__ = ("_done", "args", "callbacks", "id", "kwargs", "rec", "value")

    def __init__(self, rec: dict[str, Any], args: Any = MISSING, kwargs: Any = MISSING) -> None:
        self.id: str = rec["id"]
        self.rec = rec
        self.args = args
        self.kwargs = kwargs
        self.value: Any = MISSING
        self._done: threading.Event | None = None
        self.callbacks: list[Callable[[Live], None]] = []

    @property
    def finished(self) -> bool:
        return self.rec["status"] in _FINISHED_NAMES

    def wait(self, timeout: float | None) -> bool:
        """Block until the task is finished (False on timeout): woken by a notification."""
        if self.finished:
            return True
        return self.done_event().wait(timeout)

    def done_event(self) -> threading.Event:
        ev = self._done
        if ev is None:
            with _event_lock:
                ev = self._done
                if ev is None:
                    ev = self._done = threading.Event()
        if self.finished:
            ev.set()
        return ev


_event_lock = threading.Lock()


# --------------------------------------------------------------------------- the store


class Store:
    """One open store: diskcache, the codec, the live table and the writer thread."""

    def __init__(
        self,
        location: str | os.PathLike[str] | diskcache.Cache,
        *,
        trust: bool = False,
        sweep: bool = True,
        read_only: bool = False,
        lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        adopt = isinstance(location, diskcache.Cache)
        if isinstance(location, diskcache.Cache):  # an open Cache: its directory is the store
            location = location.directory
        if not isinstance(location, str | os.PathLike):
            raise TypeError(
                f"store must be a directory (str or PathLike) or a diskcache.Cache, "
                f"got {type(location).__name__}"
            )
        self.path = Path(os.path.abspath(os.fspath(location)))
        self.trust = trust
        self.read_only = read_only
        self.lock_timeout = lock_timeout
        self._local = threading.local()  # read-only: each thread's connection
        self._readers: list[sqlite3.Connection] = []
        if read_only:
            self.cache: Any = None
            open_reader(self.path, lock_timeout)
        else:
            self.cache = open_cache(self.path, trust, adopt, lock_timeout)
        self.codec = Codec(Signer(), str(self.path), trust)
        self.owner = owner_token()
        self.live: dict[str, Live] = {}
        self.writer_error: BaseException | None = None
        self._failing = False  # the writer's commits fail (and it has said so in the log)
        self._dirty: dict[str, Live] = {}
        self._extra: dict[str, Any] = {}  # key -> value (None deletes), written with the batch
        self._dirty_lock = threading.Lock()
        # One write transaction at a time in this process: SQLite's busy handler sleeps for
        # milliseconds when two connections of one process collide; a lock hands over at once.
        self._write_lock = threading.Lock()
        self._wcon: sqlite3.Connection | None = None  # used under _write_lock, by any thread
        self._wcon_forks = -1
        self._wcon_short = False  # its busy wait is the writer's (short) one
        self._uncheckpointed = 0  # commits since the writer's last checkpoint
        self._wal = str(self.path / (DB_NAME + "-wal"))
        self._cond = threading.Condition()
        self._drained = threading.Condition()
        self._idle = True
        self._signalled = False  # the idle writer has been notified already
        # Commit at the writer's tick (<= TICK later) rather than at once: a worker process
        # reports its task's state over its pipe, and waking a writer thread per change costs
        # it a GIL hand-off per task.
        self.commit_at_tick = False
        self._last_commit = 0.0  # monotonic time of the last commit, by anyone
        self._closed = False
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        if sweep and not read_only:  # not in a worker process: its parent swept, and owns its
            self.sweep()  # dead workers' tasks

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ------------------------------------------------------------------ reading

    def get_record(self, task_id: str) -> dict[str, Any]:
        live = self.live.get(task_id)
        if live is not None:
            return live.rec
        return self.read_record(task_id)

    def read_record(self, task_id: str) -> dict[str, Any]:
        """The committed record (never the in-memory one)."""
        key = "t:" + task_id
        text = self._get(key)
        if text is None:
            raise self._unknown(task_id)
        rec = parse_record(text, key, self.path)
        return self._as_swept(rec) if self.read_only else rec

    def read_listed(self, task_id: str) -> tuple[dict[str, Any], str]:
        """The committed record's listing fields (as ``summary()`` gives them), and its text
        to parse when any other field is wanted: one query, and no parse for a handle that is
        only asked its status (~12 µs, against ~20 to read and parse the whole record)."""
        row = self._read(_READ_LISTED, "t:" + task_id)
        if row is None:
            raise self._unknown(task_id)
        *fields, text = row
        return summary(fields), text

    def _unknown(self, task_id: str) -> UnknownTaskId:
        return UnknownTaskId(
            f"no task with id {task_id!r} in the store {self.path}; "
            "check the id, or open the store the task was submitted to"
        )

    def get_group(self, group_id: str) -> dict[str, Any]:
        key = "g:" + group_id
        text = self._get(key)
        if text is None:
            raise UnknownTaskId(f"no group with id {group_id!r} in the store {self.path}")
        return parse_record(text, key, self.path)

    def get_blob(self, key: str) -> bytes:
        with self._dirty_lock:
            pending = self._extra.get(key, MISSING)
        if pending is not MISSING:
            return pending  # type: ignore[no-any-return]
        value = self._get(key)
        if value is None:
            raise StoreError(f"the value {key} is missing from the store {self.path}")
        if type(value) is not bytes:
            raise damaged(key, self.path, "it is not a value nbtasks wrote")
        return value

    def _get(self, key: str) -> Any:
        row = self._read(_GET, key)
        return None if row is None else row[0]

    def _read(self, sql: str, key: str) -> tuple[Any, ...] | None:
        """The row of ``sql`` (whose last columns are ``_STORED``) for ``key``, ending in the
        entry's value as ``Cache.get`` gives it; None if there is none. What nbtasks writes (in
        the row, no expiry) is taken as read: one query, where ``Cache.get`` costs 1-5 µs more
        (of ~20 for one record); a value in a file is read by ``fetch_value``, which confines
        the row's file name to the store and reads only regular files."""
        try:
            row = self._query(sql, (key,)).fetchone()
            if row is None:
                return None
            *head, mode, expires, filename, value = row
            if mode != diskcache.core.MODE_RAW or expires is not None:
                if expires is not None and expires < time.time():
                    return None  # expired, as diskcache would say (nbtasks sets no expiry)
                value = fetch_value(str(self.path), mode, filename, value)
            return (*head, value)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"reading {key} from the store {self.path} failed: {_explain(exc, self.path)}"
            ) from exc

    def encode_value(self, task_id: str, what: str, value: Any) -> dict[str, Any]:
        """Encode a value for a record: JSON, a small signed pickle inline, or a large pickle
        in its own entry (a file) written with the record's next batch (or at once by
        ``create``), its signature in the record. A large pickle is neither base64-ed nor
        copied to be signed: while it is written it is held once, beside the value itself."""
        if _is_plain(value):
            return {"j": value}
        signature, data = self.codec.pickle(value)
        if len(data) < _INLINE_PICKLE:
            return self.codec.inline(signature, data)
        key = f"v:{task_id}:{what}"
        with self._dirty_lock:
            self._extra[key] = data
        return {"k": key, "s": signature.hex()}

    def decode_value(self, enc: dict[str, Any], what: str) -> Any:
        if "k" in enc:
            return self.codec.decode_blob(self.get_blob(enc["k"]), enc.get("s"), what)
        return self.codec.decode(enc, what)

    # ------------------------------------------------------------------ queries

    def listing(
        self,
        status: str | Iterable[str] | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[tuple[Any, ...]]:
        """Committed tasks, newest first, as rows of ``_LISTING_SQL`` (nothing parsed or unpickled).

        By status: one indexed query on diskcache's tag column (private ``_sql``; the layout is
        checked on open). Without: a range scan of the ``t:`` keys, newest first."""
        self.flush()
        sql, params = self._select(_LISTING_SQL, status, name)
        sql += " LIMIT ? OFFSET ?"
        params += _limits(limit, offset)
        with no_gc():  # 100,000 row tuples: ~130 collector passes (one full) while fetched
            rows = self._sql(sql, params)
        if self.read_only:
            rows = self._swept_rows(rows)
        return rows

    def _swept_rows(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """A read-only store's listing rows as a sweep would leave them (nothing written); an
        unfinished record that cannot be read lists as DAMAGED (the sweep skips it)."""
        out = []
        for row in rows:
            if row[1] in _UNFINISHED:
                try:
                    rec = self._as_swept(parse_record(self._get(row[0]), row[0], self.path))
                except StoreError:
                    row = (row[0], DAMAGED, *row[2:])
                else:
                    if rec["status"] != row[1]:
                        row = (row[0], rec["status"], *row[2:5], rec["finished_at"], row[6])
            out.append(row)
        return out

    def summaries(
        self,
        status: str | Iterable[str] | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int | None = 50,
    ) -> list[dict[str, Any]]:
        """The fields a dashboard shows, as dicts (``listing()`` rows, named)."""
        rows = self.listing(status, name, offset, limit)
        with no_gc():
            return [summary(row) for row in rows]

    def count(self, status: str | Iterable[str] | None = None, name: str | None = None) -> int:
        self.flush()
        sql, params = self._select("count(*)", status, name, order=False)
        return int(self._sql(sql, params)[0][0])

    def _select(
        self, cols: str, status: str | Iterable[str] | None, name: str | None, order: bool = True
    ) -> tuple[str, list[Any]]:
        params: list[Any] = []
        if status is None:
            sql = f"SELECT {cols} FROM Cache WHERE key >= 't:' AND key < 't;'"
        else:
            statuses = [status] if isinstance(status, str) else list(status)
            marks = ",".join("?" * len(statuses))
            sql = f"SELECT {cols} FROM Cache WHERE tag IN ({marks}) AND key >= 't:' AND key < 't;'"
            params += statuses
        if name is not None:
            sql += " AND nb_name = ?"
            params.append(name)
        if order:
            sql += " ORDER BY key DESC"
        return sql, params

    def _query(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run a read: diskcache's connection of this thread, or (read-only) one of nbtasks'
        own per thread, opened with ``mode=ro``."""
        cache = self.cache
        if cache is not None:
            return cache._sql(sql, params)  # type: ignore[no-any-return]
        con = getattr(self._local, "reader", None)
        if con is None:
            con = self._local.reader = connect(self.path / DB_NAME, self.lock_timeout, True)
            self._readers.append(con)
        return con.execute(sql, params)

    def _sql(self, sql: str, params: list[Any]) -> list[Any]:
        try:
            return self._query(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"querying the store {self.path} failed: {_explain(exc, self.path)}"
            ) from exc

    def find_cached(self, key: str) -> str | None:
        """The id of the task that computed a cached call, if any. An entry that is not one
        nbtasks wrote (a task id) is a miss: the submit computes, and its entry replaces it."""
        try:
            tid = self._get("k:" + key)
        except StoreError:
            return None
        return tid if isinstance(tid, str) else None

    # ------------------------------------------------------------------ writing

    def create(
        self,
        lives: list[Live],
        groups: Iterable[dict[str, Any]] = (),
        cache_keys: Iterable[tuple[str, str]] = (),
        *,
        fresh_ids: bool = False,
    ) -> None:
        """Commit READY records (and group records, cache index keys) in one transaction,
        then put them in the live table. Raises StoreError and stores nothing on failure;
        with ``fresh_ids`` (ids the caller chose), ValueError if one is in the store already.

        The transaction also carries every change pending for the writer, so a loop of submits
        costs one commit per task, not two (whoever commits takes the batch)."""
        new = [(live.id, live) for live in lives]
        if self._commit(new, list(groups), list(cache_keys), fresh_ids) < 0:
            exc = self.writer_error
            why = _explain(exc, self.path) if exc is not None else "unknown error"
            raise StoreError(
                f"could not commit the new task(s) to the store {self.path}, so nothing was "
                f"stored: {why}"
            ) from exc
        for live in lives:
            self.live[live.id] = live

    def adopt(self, live: Live) -> None:
        self.live[live.id] = live

    # A worker process owns its task's record while it runs it (DESIGN principle 2): this
    # process hands the record over (``release``), then only mirrors what the worker wrote
    # (``observe``). If that process dies, this one owns the record again.

    def release(self, live: Live) -> None:
        """Hand a task's record over to another process: commit what is pending for it here
        (or wait for the commit under way that carries it)."""
        if live.id in self._dirty:
            self.flush()
        else:
            with self._write_lock:
                pass

    def observe(self, live: Live, fields: dict[str, Any]) -> None:
        """Mirror fields that the task's owner in another process wrote (or is writing): in
        memory only, never written from here. Waiters wake when the status becomes final."""
        status = fields.get("status")
        if status is not None and status != live.rec["status"]:
            check_transition(live.id, TaskStatus(live.rec["status"]), TaskStatus(status))
        live.rec.update(fields)
        if status is not None and status in _FINISHED_NAMES:
            self._finished(live)

    def change(
        self, live: Live, status: TaskStatus | None = None, *, soon: bool = True, **fields: Any
    ) -> None:
        """Apply a change in memory (seen at once by this process) and mark it for the writer:
        committed within milliseconds, or with ``soon=False`` at the writer's next tick (0.1 s;
        it does not wake the writer)."""
        if status is not None:
            check_transition(live.id, _STATUS[live.rec["status"]], status)
            fields["status"] = status.value
        live.rec.update(fields)  # one C call: atomic with the writer's json.dumps under the GIL
        self.mark(live, soon)
        if status is not None and status in FINISHED:
            self._finished(live)

    def _finished(self, live: Live) -> None:
        ev = live._done
        if ev is not None:
            ev.set()
        for cb in live.callbacks:
            cb(live)

    def mark(self, live: Live, soon: bool = True) -> None:
        with self._dirty_lock:
            self._dirty[live.id] = live
            backlog = len(self._dirty)
        if self._writer is None:
            self._start_writer()
        if soon and self._idle and not self._signalled and not self.commit_at_tick:
            self._signalled = True
            with self._cond:
                self._cond.notify()
        if backlog > BACKLOG and threading.current_thread() is not self._writer:
            # Back-pressure: the workers slow down rather than let the store fall behind.
            with self._drained:
                self._drained.wait_for(lambda: len(self._dirty) < BACKLOG // 2, timeout=1.0)

    def put_extra(self, key: str, value: Any) -> None:
        """Write (or, with None, delete) a side entry with the next batch."""
        with self._dirty_lock:
            self._extra[key] = value
        if self._writer is None:
            self._start_writer()
        with self._cond:
            self._cond.notify()

    def request_cancel(self, task_id: str) -> None:
        """A cancel request for a task owned elsewhere: written at once, acted on by the owner."""
        self._writable()
        try:
            self.cache.set("x:" + task_id, str(time.time()))
        except (diskcache.Timeout, sqlite3.Error) as exc:
            raise StoreError(
                f"could not write the cancel request of {task_id} to the store {self.path}: "
                f"{_explain(exc, self.path)}"
            ) from exc

    def cancel_requests(self) -> list[str]:
        """The ids of every task with a cancel request in the store (any process wrote it)."""
        rows = self._sql("SELECT key FROM Cache WHERE key >= 'x:' AND key < 'x;'", [])
        return [key[2:] for (key,) in rows]

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(
                f"the store {self.path} was opened read-only (App(read_only=True)): "
                "open it with nbtasks.App(store) to submit, cancel or purge"
            )

    def _start_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None and not self._closed and not self.read_only:
                t = threading.Thread(
                    target=_writer_main,
                    args=(weakref.ref(self),),
                    name="nbtasks-writer",
                    daemon=True,
                )
                self._writer = t
                _open_stores.add(self)
                t.start()

    def _write_batch(self) -> int:
        return self._commit([], [], [])

    def _commit(
        self,
        new: list[tuple[str, Live]],
        groups: list[dict[str, Any]],
        cache_keys: list[tuple[str, str]],
        fresh_ids: bool = False,
    ) -> int:
        """One transaction: side entries, new records, then every dirty record's latest version.
        Returns how many records were written, or -1 (the batch is kept for the next round).

        Waits are bounded: a submit waits at most ``lock_timeout`` in all, for this process's
        write lock and then for SQLite's (what is left of it); the writer thread waits at most
        ``_WRITER_WAIT`` for either and tries again at its next round, so while another process
        holds the database, this one's tasks run on (their changes are kept in memory) and a
        submit is not queued behind the writer. ``fresh_ids``: the new records must not exist
        yet (a ``task_id`` given by the caller): inserted, never upserted, so two submits of
        one id cannot both be accepted (ValueError)."""
        if self.read_only:
            if new or groups or cache_keys:
                self._writable()
            return 0
        writer = threading.current_thread() is self._writer
        wait = _WRITER_WAIT if writer else self.lock_timeout
        start = time.monotonic()
        if not self._write_lock.acquire(timeout=wait):
            if not new:
                return -1
            raise StoreError(
                f"could not commit the new task(s) to the store {self.path}, so nothing was "
                f"stored: the store is locked (another thread of this process has been writing "
                f"to it for {wait:g} s: waiting for another process's lock, or a vacuum). Try "
                "again, or give nbtasks.App(lock_timeout=...) more seconds"
            )
        try:
            # A submit that waited for another thread's commit waits only the rest for SQLite.
            left = None if writer else wait - (time.monotonic() - start)
            if left is not None and left > wait - 0.001:
                left = None  # did not wait: the connections' own busy timeout is the budget
            return self._commit_locked(new, groups, cache_keys, fresh_ids, writer, left)
        finally:
            self._write_lock.release()

    def _commit_locked(
        self,
        new: list[tuple[str, Live]],
        groups: list[dict[str, Any]],
        cache_keys: list[tuple[str, str]],
        fresh_ids: bool,
        writer: bool,
        left: float | None,
    ) -> int:
        with self._dirty_lock:
            batch, self._dirty = self._dirty, {}
            extra, self._extra = self._extra, {}
        if not batch and not extra and not new:
            return 0
        cache = self.cache
        now = time.time()
        born: list[tuple[Any, ...]] = []
        try:
            born = [record_row(tid, live.rec, now) for tid, live in new]
            rows = [record_row(tid, live.rec, now) for tid, live in batch.items()]
            if not fresh_ids:
                born, rows = [], born + rows
            if not extra and not groups and not cache_keys and len(rows) <= _CHUNKS[0]:
                # One statement is one transaction in autocommit mode: the common case
                # (a submit carrying the pending changes) releases the GIL once, not 3+
                # times, and each release costs 20-40 µs to win back under load.
                con = self._write_con(writer)
                with _NO_WAIT_CUT if left is None else self._waiting_at_most(con, left):
                    _insert(con, born)
                    _upsert(con, rows)
            else:
                if writer:
                    self._short_waits()
                with (
                    _NO_WAIT_CUT if left is None else self._waiting_at_most(cache._con, left),
                    cache._disk.undo_files(),
                    cache.transact(),
                ):
                    for key, value in extra.items():
                        if value is None:
                            cache.delete(key)
                        else:
                            cache.set(key, value)
                    for g in groups:
                        cache.set("g:" + g["id"], json.dumps(g))
                    for key, tid in cache_keys:
                        cache.set("k:" + key, tid)
                    _insert(cache._con, born)
                    _upsert(cache._con, rows)
        except Exception as exc:  # disk full, I/O error, locked: keep the batch, retry later
            # A failed COMMIT may leave the transaction open (SQLite: "it is recommended
            # that applications respond to SQLITE_FULL ... by issuing a ROLLBACK"); the
            # next BEGIN would fail.
            with contextlib.suppress(sqlite3.Error):
                if cache._con.in_transaction:
                    cache._con.execute("ROLLBACK")
            taken = isinstance(exc, sqlite3.IntegrityError) and born
            if not new and not self._failing:
                self._failing = True
                _log.warning(
                    "nbtasks could not write to the store %s (%s); %d change(s) are kept "
                    "in memory and written when it works again (retried every %gs)",
                    self.path,
                    _explain(exc, self.path),
                    len(batch) + len(extra),
                    TICK,
                )
            if not taken:
                self.writer_error = exc
            # The failed submit's own values go with it; everyone else's are kept.
            unborn = {tid for tid, _ in new}
            with self._dirty_lock:
                for tid, live in batch.items():
                    self._dirty.setdefault(tid, live)
                for key, value in extra.items():
                    if not (key.startswith("v:") and key.split(":", 2)[1] in unborn):
                        self._extra.setdefault(key, value)
            if taken:
                ids = ", ".join(repr(tid) for tid in unborn)
                raise ValueError(
                    f"task_id={ids} is already used in this store; pick a new id"
                ) from None
            return -1
        if self._failing:
            self._failing = False
            _log.warning("nbtasks writes to the store %s again", self.path)
        self.writer_error = None
        self._uncheckpointed += 1
        self._last_commit = time.monotonic()
        for tid, live in batch.items():
            if live.finished and self.live.get(tid) is live and tid not in self._dirty:
                del self.live[tid]  # committed: readers find it in the store now
        return len(batch) + len(new)

    @contextlib.contextmanager
    def _waiting_at_most(self, con: sqlite3.Connection, seconds: float) -> Iterator[None]:
        """SQLite's busy wait on ``con`` cut to ``seconds`` for one commit."""
        con.execute(f"PRAGMA busy_timeout = {max(1, int(seconds * 1000))}")
        try:
            yield
        finally:
            con.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")

    def _short_waits(self) -> None:
        """The writer thread's own diskcache connection waits at most ``_WRITER_WAIT`` for a
        busy database (it tries again next round), not ``lock_timeout``."""
        if getattr(self._local, "short", None) is not self.cache._con:
            self.cache._con.execute(f"PRAGMA busy_timeout = {int(_WRITER_WAIT * 1000)}")
            self._local.short = self.cache._con

    def _write_con(self, writer: bool = False) -> sqlite3.Connection:
        """The connection every thread's single-statement commits go through (under
        ``_write_lock``): diskcache's own is per thread, looked up with a getpid() per use, and
        its page cache is dropped each time another connection has written. Its settings are
        nbtasks' own (``_PRAGMAS``), never what the store's ``Settings`` table says; its busy
        wait is the writer's short one while the writer commits, else ``lock_timeout``."""
        con = self._wcon
        if con is None or self._wcon_forks != _forks:
            con = sqlite3.connect(
                self.path / DB_NAME,
                timeout=self.lock_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
            for key, value in _PRAGMAS.items():
                con.execute(f"PRAGMA {key[7:]} = {value}")
            con.execute(f"PRAGMA wal_autocheckpoint = {WAL_SAFETY}")
            # A WAL grown under load is cut back to 4 MB when it starts over.
            con.execute(f"PRAGMA journal_size_limit = {4 << 20}")
            self._wcon, self._wcon_forks, self._wcon_short = con, _forks, False
        if writer is not self._wcon_short:
            wait = _WRITER_WAIT if writer else self.lock_timeout
            con.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")
            self._wcon_short = writer
        return con

    def _checkpoint(self, paused: bool) -> None:
        """Copy the WAL into the database (the writer, at its tick), so that it can start over.

        Each checkpoint ends in fsyncs, and while one runs the file system holds up every
        write to the store, a submit's too: a checkpoint after every few hundred commits cost
        a busy submit loop 10-15 % of its time. So: once commits pause for a tick, beside them
        (nothing is held); while they go on, only when the WAL has grown past WAL_FORCE pages:
        first beside them (the bulk of the copying and syncing), then again with this
        process's commits held for what they added meanwhile, since only a checkpoint that no
        commit ran beside lets the WAL start over (a busy loop: 8-10 % faster than holding
        them for the whole checkpoint). ``paused``: no commit in the tick before this one's."""
        if not self._uncheckpointed:
            return
        try:
            if not paused:
                try:
                    size = os.stat(self._wal).st_size
                except OSError:
                    return
                if size < WAL_FORCE * _WAL_FRAME:
                    return
                self.cache._con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                with self._write_lock:
                    self._write_con().execute("PRAGMA wal_checkpoint(PASSIVE)")
            else:
                self.cache._con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._uncheckpointed = 0
        except sqlite3.Error as exc:  # busy or failing: the next tick (or SQLite) tries again
            self.writer_error = exc

    def flush(self) -> None:
        """Commit everything changed so far, in the calling thread; when it returns, a commit
        the writer had under way has finished too (it holds the same lock)."""
        self._write_batch()

    def close(self) -> None:
        if self.read_only:
            for con in self._readers:
                con.close()
            self._readers.clear()
            self._closed = True
            return
        self.flush()
        self._closed = True
        with self._cond:
            self._cond.notify()
        if self._writer is not None and self._writer is not threading.current_thread():
            self._writer.join(timeout=5)
        self._write_batch()
        with self._write_lock:
            if self._wcon is not None and self._wcon_forks == _forks:
                if self._uncheckpointed:
                    # Leave the WAL copied into the database: the next opener reads it directly.
                    with contextlib.suppress(sqlite3.Error):
                        self._wcon.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._wcon.close()
            self._wcon = None
        self.cache.close()
        _open_stores.discard(self)

    # ------------------------------------------------------------------ recovery and purge

    def sweep(self) -> int:
        """READY/RUNNING records whose owner process on this host is gone become INTERRUPTED.
        A damaged record is left as it is (it lists as damaged); a read-only store is not
        swept (its readers see the sweep's verdict without writing it: ``_as_swept``)."""
        if self.read_only:
            return 0
        now = time.time()
        dead = [key for key, rec in self._unfinished() if owner_gone(rec, now)]
        if not dead:
            return 0
        n = 0
        try:
            with self.cache.transact():
                for key in dead:
                    try:
                        rec = parse_record(self._get(key), key, self.path)
                    except StoreError:
                        continue
                    if rec["status"] not in _UNFINISHED or not owner_gone(rec, now):
                        continue
                    interrupt_record(rec, now, _gone_why(rec))
                    _upsert(self.cache._con, [record_row(key[2:], rec, now)])
                    n += 1
        except (diskcache.Timeout, sqlite3.Error) as exc:
            raise StoreError(
                f"could not mark the tasks of dead processes in the store {self.path} as "
                f"INTERRUPTED: {_explain(exc, self.path)}"
            ) from exc
        return n

    def _unfinished(self) -> list[tuple[str, dict[str, Any]]]:
        """The READY/RUNNING records, parsed (damaged ones left out)."""
        rows = self._sql(
            "SELECT key, value FROM Cache WHERE tag IN ('READY', 'RUNNING') "
            "AND key >= 't:' AND key < 't;'",
            [],
        )
        out = []
        for key, text in rows:
            with contextlib.suppress(StoreError):
                out.append((key, parse_record(text, key, self.path)))
        return out

    def _as_swept(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A read-only store's record as a sweep would leave it (a copy), nothing written."""
        if self.read_only and rec["status"] in _UNFINISHED and owner_gone(rec, time.time()):
            rec = dict(rec)
            interrupt_record(rec, time.time(), _gone_why(rec))
        return rec

    def purge(self, older_than: float | None = None, status: Iterable[str] | None = None) -> int:
        """Delete finished records (finished before ``older_than``, an epoch time). A damaged
        record is left alone: it is not known to be finished."""
        self._writable()
        self.flush()
        statuses = list(status) if status is not None else list(_FINISHED_NAMES)
        marks = ",".join("?" * len(statuses))
        rows = self._sql(
            f"SELECT key, value FROM Cache WHERE tag IN ({marks}) AND key >= 't:' AND key < 't;'",
            statuses,
        )
        n = 0
        try:
            with self.cache.transact():
                for key, text in rows:
                    try:
                        rec = parse_record(text, key, self.path)
                    except StoreError:
                        continue
                    fin = rec.get("finished_at")
                    if older_than is not None and (
                        not isinstance(fin, int | float) or fin >= older_than
                    ):
                        continue
                    tid = key[2:]
                    self.cache.delete(key)
                    self.cache.delete("x:" + tid)
                    for what in ("args", "kwargs", "rv", "exc"):
                        self.cache.delete(f"v:{tid}:{what}")
                    if isinstance(rec.get("cache_key"), str):
                        self.cache.delete("k:" + rec["cache_key"])
                    n += 1
                if n:
                    self._drop_empty_groups()
        except (diskcache.Timeout, sqlite3.Error) as exc:
            raise StoreError(
                f"purging the store {self.path} failed, nothing was deleted: "
                f"{_explain(exc, self.path)}"
            ) from exc
        return n

    def _drop_empty_groups(self) -> None:
        """Delete the group records none of whose members is left (in purge's transaction)."""
        groups = self._sql("SELECT key FROM Cache WHERE key >= 'g:' AND key < 'g;'", [])
        if not groups:
            return
        left = self._sql("SELECT key FROM Cache WHERE key >= 't:' AND key < 't;'", [])
        alive = {key[2:] for (key,) in left}
        for (key,) in groups:
            try:
                members = parse_record(self._get(key), key, self.path).get("members")
            except StoreError:
                continue  # damaged: not known to be empty
            if not isinstance(members, list) or not any(m in alive for m in members):
                self.cache.delete(key)

    def vacuum(self, orphan_age: float = 3600.0) -> None:
        """Give the space of deleted records back to the file system: delete large values
        whose task is gone, value files no entry refers to (older than ``orphan_age`` seconds:
        one that another process is writing is not referred to yet; a process killed mid-write
        leaves one behind), then VACUUM the database and truncate its WAL. It rewrites the whole
        database: other processes' writes wait until it is done. Only regular files named as
        diskcache names its value files, in real directories of the store, are deleted."""
        self._writable()
        self.flush()
        with self._write_lock:
            try:
                tasks = self._sql("SELECT key FROM Cache WHERE key >= 't:' AND key < 't;'", [])
                alive = {key[2:] for (key,) in tasks}
                values = self._sql("SELECT key FROM Cache WHERE key >= 'v:' AND key < 'v;'", [])
                with self.cache.transact():
                    for (key,) in values:
                        if key[2:].rpartition(":")[0] not in alive:
                            self.cache.delete(key)
                con = self.cache._con
                con.execute("VACUUM")
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except (sqlite3.DatabaseError, diskcache.Timeout) as exc:
                raise StoreError(
                    f"vacuuming the store {self.path} failed: {_explain(exc, self.path)}"
                ) from exc
            rows = self._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL", [])
            referenced = {os.path.normpath(name) for (name,) in rows if isinstance(name, str)}
            cutoff = time.time() - orphan_age
            # os.walk does not descend into links; lstat: a link is never judged by its target
            for root, _dirs, names in os.walk(self.path, topdown=False):
                rel_root = os.path.relpath(root, self.path)
                if rel_root == ".":
                    continue  # the database, the marker, the lock: never value files
                for name in names:
                    rel = os.path.normpath(os.path.join(rel_root, name))
                    with contextlib.suppress(OSError):
                        st = os.lstat(os.path.join(root, name))
                        if (
                            rel not in referenced
                            and stat.S_ISREG(st.st_mode)
                            and st.st_mtime < cutoff
                        ):
                            remove_value(str(self.path), rel)
                with contextlib.suppress(OSError):
                    os.rmdir(root)  # only if empty


def _gone_why(rec: dict[str, Any]) -> str:
    why = f"its owner process {describe_owner(rec)} is gone"
    beat = rec.get("heartbeat")
    if isinstance(beat, int | float):
        why += f" (last heartbeat {time.strftime('%H:%M:%S', time.localtime(beat))})"
    return why


def open_reader(directory: Path, lock_timeout: float) -> None:
    """Check a store for reading only: nothing is created, locked or written (SPEC §10:
    listing and showing never write), so a store this user can read but not write lists."""
    check_directory(directory, create=False)
    check_own_files(directory)
    db = directory / DB_NAME
    if not os.path.lexists(directory / MARKER):
        raise StoreError(
            f"{directory} is not an nbtasks store (no {MARKER}), or it is being created: "
            "check the path"
        )
    _check_not_empty(db, directory)
    schema = _inspect(db, directory, lock_timeout, read_only=True)
    _check_schema(schema, db, directory)
    if schema < SCHEMA:
        raise StoreError(
            f"the store {directory} was written by an older nbtasks (schema {schema}): open it "
            "once with nbtasks.App(store) to upgrade it, then read it"
        )


STALE: Final = 60.0  # seconds without a heartbeat after which an owner on another host is gone


#: What a listing reads of each task: ``(key, status, name, enqueued_at, started_at,
#: finished_at, progress JSON)``. The casts give each column the type nbtasks writes whatever a
#: row holds (NULL stays NULL), in C: checking the types in ``summary()`` cost ~15 % of it.
_LISTING_SQL: Final = (
    "key, tag, CAST(nb_name AS TEXT), CAST(nb_enqueued AS REAL), CAST(nb_started AS REAL),"
    " CAST(nb_finished AS REAL), nb_progress"
)


#: One task's listing row, then how its record is stored and the record (see ``Store._read``).
_READ_LISTED: Final = f"SELECT {_LISTING_SQL}, {_STORED} FROM Cache WHERE key = ? AND raw = 1"


def parse_record(text: Any, key: str = "", store: Path | str = "") -> dict[str, Any]:
    """A task (or group) record as nbtasks wrote it: a JSON object, and a task's with a status
    and a name. Anything else raises StoreError for this record only."""
    try:
        rec = json.loads(text) if type(text) is str else None
    except ValueError:
        rec = None
    if type(rec) is dict and (
        not key.startswith("t:")
        or (rec.get("status") in _STATUS and type(rec.get("task_name")) is str)
    ):
        return rec
    raise damaged(key, store, "it is not a record nbtasks wrote")


def damaged(key: str, store: Path | str, why: str) -> StoreError:
    return StoreError(
        f"the record {key} in the store {store} is damaged ({why}): it cannot be read, and "
        "lists as DAMAGED; the store's other records read as before. If you did not expect "
        "this, move the store aside and check it (mv STORE STORE.broken)"
    )


DAMAGED: Final = "DAMAGED"  # the status a listing shows for a damaged record
_NUMBERS: Final = (float, int)


def summary(row: Sequence[Any]) -> dict[str, Any]:
    """A ``listing()`` row as the record fields it holds (a partial record). A row whose status
    or progress is not what nbtasks writes is summarised as damaged (status ``DAMAGED``,
    ``damaged``: why), so that one bad record does not stop a listing (its name and times have
    their types already: ``_LISTING_SQL``)."""
    key, status, name, enqueued, started, finished, progress = row
    try:
        progress = None if progress is None else json.loads(progress)
    except (ValueError, TypeError):
        progress = MISSING
    if status not in _STATUS or not (progress is None or _progress_ok(progress)):
        return {
            "id": key[2:],
            "task_name": name,
            "status": DAMAGED,
            "damaged": "it is not a record nbtasks wrote"
            if status == DAMAGED
            else "its listing fields are not what nbtasks writes",
            "progress": None,
            "enqueued_at": None,
            "started_at": None,
            "finished_at": None,
        }
    return {
        "id": key[2:],
        "task_name": name,
        "status": status,
        "progress": progress,
        "enqueued_at": enqueued,
        "started_at": started,
        "finished_at": finished,
    }


def _progress_ok(p: Any) -> bool:
    return (
        type(p) is list
        and 1 <= len(p) <= 4
        and type(p[0]) in _NUMBERS
        and all(v is None or type(v) in _NUMBERS for v in (p[1:2] + p[3:4]))
        and (len(p) < 3 or p[2] is None or type(p[2]) is str)
    )


def owner_gone(rec: dict[str, Any], now: float) -> bool:
    """On this host: its pid is dead or reused. On another (where pids say nothing): the record
    carries heartbeats (a worker process writes one every few seconds) and the last is stale."""
    owner = rec.get("owner")
    if not owner_alive(owner):
        return True
    beat = rec.get("heartbeat")
    host = (owner or "").rsplit(":", 2)[0]
    return beat is not None and host != HOST and now - beat > STALE


# The C encoder behind json.dumps, made once: ``JSONEncoder.encode`` builds a new one (and a
# closure, and a dict for cycle checks) per call. Records hold no cycles: every user value in
# one went through check_json first. allow_nan=False: NaN and Infinity raise ValueError.
_c_encoder: Final = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, None, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, False
)


def _strict_json(value: dict[str, Any] | list[Any]) -> str:
    return "".join(_c_encoder(value, 0))


def record_text(rec: dict[str, Any]) -> str:
    """A record as JSON that SQLite's JSON functions can read. They refuse NaN and Infinity,
    and one such record would make every listing of the store fail: a progress holding one is
    stored as no progress, any other such number as null (the owner's memory keeps them)."""
    try:
        return _strict_json(rec)
    except ValueError:
        clean = _finite(rec)
        if clean.get("progress") != rec.get("progress"):
            clean["progress"] = None
        return _strict_json(clean)


def record_row(task_id: str, rec: dict[str, Any], now: float) -> tuple[Any, ...]:
    """The values ``_UPSERT`` writes for one record: diskcache's columns, then the listing's."""
    progress = rec.get("progress")
    if progress is not None:
        try:
            progress = _strict_json(progress)
        except ValueError:  # NaN or Infinity: stored as no progress, as in the record
            progress = None
    return (
        "t:" + task_id,
        now,
        now,
        rec["status"],
        record_text(rec),
        rec.get("task_name"),
        rec.get("enqueued_at"),
        rec.get("started_at"),
        rec.get("finished_at"),
        progress,
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


_SQL_INT_MAX: Final = 2**63 - 1


def _limits(limit: int | None, offset: int) -> list[int]:
    """LIMIT and OFFSET within SQLite's integers (a larger int would raise OverflowError)."""
    return [
        -1 if limit is None or limit > _SQL_INT_MAX else max(limit, -1),
        min(max(offset, 0), _SQL_INT_MAX),
    ]


def describe_owner(rec: dict[str, Any]) -> str:
    owner = rec.get("owner") or "?"
    parts = owner.split(":")
    return f"pid {parts[-2]} on {':'.join(parts[:-2])}" if len(parts) >= 3 else owner


def interrupt_record(rec: dict[str, Any], now: float, why: str) -> None:
    rec["status"] = TaskStatus.INTERRUPTED.value
    rec["state"] = TaskStatus.INTERRUPTED.value
    rec["finished_at"] = now
    rec["reason"] = f"{why} (found at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))})"


# --------------------------------------------------------------------------- the writer


def _writer_main(ref: weakref.ref[Store]) -> None:
    """Group-commit dirty records; every 0.1 s, commit what waits for the tick and checkpoint.
    Holds the store only weakly between rounds."""
    next_tick = time.monotonic() + TICK
    while True:
        store = ref()
        if store is None:
            return
        with store._cond:
            store._idle = True
            if not store._dirty and not store._extra and not store._closed:
                store._cond.wait(timeout=max(0.0, next_tick - time.monotonic()))
            store._idle = False
            store._signalled = False
        # Let changes gather for a moment: a burst of finishing tasks shares one commit, and
        # while tasks are being submitted their commits carry the changes along, so the writer
        # stays out of their way. Still within milliseconds at low load.
        while (
            store._dirty
            and not store._closed
            and len(store._dirty) < BACKLOG
            and time.monotonic() - store._last_commit < COALESCE
        ):
            time.sleep(COALESCE)
        wrote = store._write_batch()
        if wrote < 0:
            time.sleep(TICK)  # the store failed (disk full?): retry after a pause
        with store._drained:
            store._drained.notify_all()
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + TICK
            store._checkpoint(paused=now - store._last_commit >= TICK)
        if store._closed and not store._dirty and not store._extra:
            return
        del store


_open_stores: weakref.WeakSet[Store] = weakref.WeakSet()


def flush_all() -> None:
    """At interpreter exit: flush what is pending in every open store."""
    for store in list(_open_stores):
        with contextlib.suppress(Exception):
            store.flush()
