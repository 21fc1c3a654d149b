"""The group-commit writer: one thread per store that commits the owner's changes in order.

Writes follow DESIGN principle 2: ``Store.create()`` commits READY records at submit (one
transaction for a whole group); after that the owner changes its in-memory record and marks it
dirty, and the writer thread group-commits the latest version of every dirty record, in order
per task, within milliseconds at low load and at most ~0.2 s behind under load (back-pressure
slows the workers down instead). Every 0.1 s the writer also checkpoints the WAL. Storage only:
sampling progress, time limits and acting on cancel requests are the runtime's supervisor's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from .._errors import StoreError
from .._model import MISSING
from .disk import PRAGMAS, explain
from .files import DB_NAME
from .records import Live, record_row

#: Seconds the writer thread waits for a busy database before it tries again next round.
_WRITER_WAIT: Final = 0.1
#: A commit whose busy wait is not cut (the common case: made once, not per commit).
_NO_WAIT_CUT: Final = contextlib.nullcontext()
TICK: Final = 0.1  # seconds between the writer's checkpoints and commits of soon=False changes
COALESCE: Final = 0.002  # seconds the writer lets changes gather before it commits
BACKLOG: Final = 4000  # dirty records past which workers wait for the writer
# WAL checkpoints (copying committed pages into the database, then an fsync) are the writer's
# job (Writer._checkpoint), not a submit's. SQLite's own, inline at a commit, is kept as a
# safety net past WAL_SAFETY pages (another process may be committing too).
WAL_FORCE: Final = 8000  # pages (32 MB): under load, the writer checkpoints past this
WAL_SAFETY: Final = 2 * WAL_FORCE
_WAL_FRAME: Final = 4096 + 24  # a page and its frame header

_log = logging.getLogger("nbtasks")
_forks = 0  # bumped in a forked child: connections made before the fork are not its own


def _after_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):  # no fork (Windows): a connection is always this process's
    os.register_at_fork(after_in_child=_after_fork)

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
#: The listing columns of a row that is not a task's (a cache key's): empty.
_NO_LISTING: Final = (None, None, None, None, None)
_CHUNKS: Final = (512, 64)  # rows per statement, then the rest in one
#: A new record under an id given by the caller: an existing row is an error, not replaced.
_INSERT: Final = _UPSERT[: _UPSERT.index(" ON CONFLICT")]


def _insert(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    for row in rows:
        con.execute(_INSERT, row)


def upsert(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
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


class Writer:
    """The writes of one store: the dirty records and side entries, the connection and lock of
    this process's commits, and the thread that group-commits them."""

    def __init__(
        self,
        cache: Any,
        path: Path,
        live: dict[str, Live],
        lock_timeout: float,
    ) -> None:
        self.cache = cache  # None: a read-only store, nothing is written
        self.path = path
        self.live = live  # the store's live table: a committed finished task leaves it
        self.lock_timeout = lock_timeout
        self.error: BaseException | None = None  # the last commit's or checkpoint's error
        self._failing = False  # commits fail (and the log has said so)
        self._dirty: dict[str, Live] = {}
        self._extra: dict[str, Any] = {}  # key -> value (None deletes), written with the batch
        # The side entries of the batch being committed: still "staged" until the commit ends,
        # so a reader never finds an entry in neither place (a cache key put by a released
        # chain link, a value file) while the writer writes it.
        self._committing: dict[str, Any] = {}
        self._dirty_lock = threading.Lock()
        # One write transaction at a time in this process: SQLite's busy handler sleeps for
        # milliseconds when two connections of one process collide; a lock hands over at once.
        self.lock = threading.Lock()
        self._local = threading.local()
        self._wcon: sqlite3.Connection | None = None  # used under ``lock``, by any thread
        self._wcon_forks = -1
        self._wcon_short = False  # its busy wait is the writer's (short) one
        self._uncheckpointed = 0  # commits since the writer's last checkpoint
        self._wal = str(path / (DB_NAME + "-wal"))
        self._cond = threading.Condition()
        self._drained = threading.Condition()
        self._idle = True
        self._signalled = False  # the idle writer has been notified already
        self._last_commit = 0.0  # monotonic time of the last commit, by anyone
        self._closed = False
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def mark(self, live: Live, soon: bool = True) -> None:
        """Commit this record's latest version with the next batch: within milliseconds, or
        with ``soon=False`` at the next tick (the writer is not woken)."""
        with self._dirty_lock:
            self._dirty[live.id] = live
            backlog = len(self._dirty)
        if self._thread is None:
            self._start()
        if soon and self._idle and not self._signalled:
            self._signalled = True
            with self._cond:
                self._cond.notify()
        if backlog > BACKLOG and threading.current_thread() is not self._thread:
            # Back-pressure: the workers slow down rather than let the store fall behind.
            with self._drained:
                self._drained.wait_for(lambda: len(self._dirty) < BACKLOG // 2, timeout=1.0)

    def stage(self, key: str, value: Any) -> None:
        """Write (or, with None, delete) a side entry with the next batch, whoever commits it
        (the writer is not woken: a record that refers to it is marked next)."""
        with self._dirty_lock:
            self._extra[key] = value

    def staged(self, key: str) -> Any:
        """A side entry waiting for the next batch, or MISSING."""
        with self._dirty_lock:
            value = self._extra.get(key, MISSING)
            return self._committing.get(key, MISSING) if value is MISSING else value

    def put_extra(self, key: str, value: Any) -> None:
        """Write (or, with None, delete) a side entry with the next batch."""
        self.stage(key, value)
        if self._thread is None:
            self._start()
        with self._cond:
            self._cond.notify()

    def settle(self, task_id: str) -> None:
        """Commit what is pending for a task here (or wait for the commit under way that
        carries it)."""
        if task_id in self._dirty:
            self.flush()
        else:
            with self.lock:
                pass

    def _start(self) -> None:
        with self._thread_lock:
            if self._thread is None and not self._closed and self.cache is not None:
                t = threading.Thread(
                    target=_writer_main,
                    args=(weakref.ref(self),),
                    name="nbtasks-writer",
                    daemon=True,
                )
                self._thread = t
                _open_writers.add(self)
                t.start()

    def flush(self) -> int:
        """Commit everything changed so far, in the calling thread; when it returns, a commit
        the writer had under way has finished too (it holds the same lock). Returns how many
        records were written, or -1 (the batch is kept for the next round)."""
        return self.commit([], [], [])

    def commit(
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
        if self.cache is None:  # read-only: Store.create refused anything new
            return 0
        writer = threading.current_thread() is self._thread
        wait = _WRITER_WAIT if writer else self.lock_timeout
        start = time.monotonic()
        if not self.lock.acquire(timeout=wait):
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
            self.lock.release()

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
            self._committing = extra
        try:
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
                    con = self.connection(writer)
                    with _NO_WAIT_CUT if left is None else self._waiting_at_most(con, left):
                        _insert(con, born)
                        upsert(con, rows)
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
                        # Cache keys as rows of the records' own multi-row statement: a 10,000-item
                        # map's keys cost ~30 ms so, against ~270 ms through cache.set.
                        upsert(
                            cache._con,
                            [
                                ("k:" + key, now, now, None, tid, *_NO_LISTING)
                                for key, tid in cache_keys
                            ],
                        )
                        _insert(cache._con, born)
                        upsert(cache._con, rows)
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
                        explain(exc, self.path),
                        len(batch) + len(extra),
                        TICK,
                    )
                if not taken:
                    self.error = exc
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
            self.error = None
            self._uncheckpointed += 1
            self._last_commit = time.monotonic()
            for tid, live in batch.items():
                if live.finished and self.live.get(tid) is live and tid not in self._dirty:
                    del self.live[tid]  # committed: readers find it in the store now
            return len(batch) + len(new)
        finally:
            with self._dirty_lock:
                self._committing = {}

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

    def connection(self, writer: bool = False) -> sqlite3.Connection:
        """The connection every thread's single-statement commits go through (under
        ``lock``): diskcache's own is per thread, looked up with a getpid() per use, and
        its page cache is dropped each time another connection has written. Its settings are
        nbtasks' own (``PRAGMAS``), never what the store's ``Settings`` table says; its busy
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
            for key, value in PRAGMAS.items():
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
                with self.lock:
                    self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
            else:
                self.cache._con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self._uncheckpointed = 0
        except sqlite3.Error as exc:  # busy or failing: the next tick (or SQLite) tries again
            self.error = exc

    def close(self) -> None:
        """Commit what is pending, stop the thread, and close this process's connection
        (diskcache's are the cache's to close)."""
        self.flush()
        self._closed = True
        with self._cond:
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.flush()
        with self.lock:
            if self._wcon is not None and self._wcon_forks == _forks:
                if self._uncheckpointed:
                    # Leave the WAL copied into the database: the next opener reads it directly.
                    with contextlib.suppress(sqlite3.Error):
                        self._wcon.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._wcon.close()
            self._wcon = None
        _open_writers.discard(self)


def _writer_main(ref: weakref.ref[Writer]) -> None:
    """Group-commit dirty records; every 0.1 s, commit what waits for the tick (``soon=False``
    changes) and checkpoint. Holds the writer only weakly between rounds."""
    next_tick = time.monotonic() + TICK
    while True:
        writer = ref()
        if writer is None:
            return
        with writer._cond:
            writer._idle = True
            if not writer._dirty and not writer._extra and not writer._closed:
                writer._cond.wait(timeout=max(0.0, next_tick - time.monotonic()))
            writer._idle = False
            writer._signalled = False
        # Let changes gather for a moment: a burst of finishing tasks shares one commit, and
        # while tasks are being submitted their commits carry the changes along, so the writer
        # stays out of their way. Still within milliseconds at low load.
        while (
            writer._dirty
            and not writer._closed
            and len(writer._dirty) < BACKLOG
            and time.monotonic() - writer._last_commit < COALESCE
        ):
            time.sleep(COALESCE)
        wrote = writer.flush()
        if wrote < 0:
            time.sleep(TICK)  # the store failed (disk full?): retry after a pause
        with writer._drained:
            writer._drained.notify_all()
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + TICK
            writer._checkpoint(paused=now - writer._last_commit >= TICK)
        if writer._closed and not writer._dirty and not writer._extra:
            return
        del writer


_open_writers: weakref.WeakSet[Writer] = weakref.WeakSet()


def flush_all() -> None:
    """At interpreter exit: flush what is pending in every open store."""
    for writer in list(_open_writers):
        with contextlib.suppress(Exception):
            writer.flush()
