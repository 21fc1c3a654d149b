"""Opening a store: its directory, lock, schema, table layout and ``Settings``, checked before
diskcache acts on them (SPEC §10: a store is data, never instructions).

A new store is briefly a 0-byte cache.db; the marker file, written last under the lock, tells
"being created" from "damaged" (notes/store-findings.md). Listings read a task's name, times and
progress from columns that nbtasks adds to diskcache's ``Cache`` table (``SUMMARY_COLUMNS``,
written with the record in the same row): parsing 100,000 JSON records, in Python or with
SQLite's JSON functions, costs 5-12 µs each here, reading the columns under 2 µs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Final

import diskcache

from .._errors import StoreError
from .._model import MISSING
from .disk import COUNTERS, SETTINGS, SafeCache, explain, remedy
from .files import (
    DB_NAME,
    MARKER,
    O_NOFOLLOW,
    StoreLock,
    check_directory,
    check_own_files,
    write_new_file,
)
from .winacl import check_windows_owner

#: 2: the listing columns (SUMMARY_COLUMNS); a store of schema 1 gains them when it is opened.
SCHEMA: Final = 2
#: Seconds a call waits for the store's lock or a busy database before StoreError says it is
#: locked (``App(lock_timeout=...)``).
LOCK_TIMEOUT: Final = 10.0

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
            cache = SafeCache(str(directory), lock_timeout)
        except (sqlite3.DatabaseError, diskcache.Timeout) as exc:
            raise StoreError(f"the store {db} cannot be opened: {explain(exc, directory)}") from exc
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
                f"{explain(exc, directory)}"
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
            f": the store is damaged and its records are lost. {remedy(directory)}"
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
        raise StoreError(f"the store {db} cannot be opened: {explain(exc, directory)}") from exc
    for kind, name, sql in objects:
        # (SQLite's ALTER TABLE may rewrite a trigger's "count" as 'count')
        if kind == "trigger" and _TRIGGERS.get(name) == str(sql).replace("'", '"'):
            continue
        if (kind, name) not in _OBJECTS:
            raise StoreError(
                f"the store {db} holds a database {kind} {name!r} that neither diskcache nor "
                f"nbtasks makes, and SQLite would run it: it was not opened. {remedy(directory)}"
            )
    for key, value in settings:
        if not _setting_ok(key, value):
            raise StoreError(
                f"the store {db} has a Settings row {key!r} = {value!r} that is not one of "
                f"diskcache's settings with a value of its kind, and diskcache would act on it: "
                f"it was not opened. {remedy(directory)}"
            )
    if row is None:
        return None
    mode, filename, value = row
    if mode != diskcache.core.MODE_RAW or filename is not None or type(value) is not int:
        return f"{value!r} (mode {mode!r})"
    return value


def _setting_ok(key: Any, value: Any) -> bool:
    if key in COUNTERS:
        return type(value) is int
    default = SETTINGS.get(key, MISSING) if isinstance(key, str) else MISSING
    if default is MISSING:
        return False
    if isinstance(default, str):
        return isinstance(value, str) and value.replace("-", "").isalpha() and len(value) < 40
    return type(value) is int


def _check_schema(schema: Any, db: Path, directory: Path) -> None:
    if schema is None:
        raise StoreError(f"the store {db} has lost its schema key. {remedy(directory)}")
    if not isinstance(schema, int):
        raise StoreError(
            f"the store {db} has a schema key that nbtasks did not write ({schema}): it is "
            f"damaged or was tampered with. {remedy(directory)}"
        )
    if schema > SCHEMA:
        raise StoreError(
            f"the store {directory} was written by a newer nbtasks (schema {schema}; this "
            f"one reads schema {SCHEMA}). Upgrade nbtasks: pip install -U nbtasks"
        )


def _check_owner(directory: Path, st: os.stat_result, trust: bool) -> None:
    """SPEC §10: a store that another user owns or that others can write to is refused unless
    trusted. POSIX: its uid and mode bits; Windows: its owner SID and ACL (``store.winacl``)."""
    if trust:
        return
    if sys.platform == "win32":  # pragma: no cover - Windows
        why = check_windows_owner(directory)
        if why is not None:
            raise StoreError(
                f"the store {directory} {why}; its pickles could run their code as you. Make it "
                f'yours alone (icacls "{directory}" /inheritance:r /grant:r "%USERNAME%":(OI)(CI)F)'
                ", or open it with nbtasks.App(store, trust=True) if you trust who can write it."
            )
        return
    if not hasattr(os, "getuid"):  # neither uids nor Windows ACLs: nothing to check
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
