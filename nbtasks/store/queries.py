"""Reading a store: one entry by its key, and the listings (``app.results()``, ``nbtasks list``,
``%tasks``), all in SQL on diskcache's ``Cache`` table, nothing parsed or unpickled.

By status, a listing is one indexed query on diskcache's tag column (the layout is checked on
open); without, a range scan of the ``t:`` keys, newest first, which reads the covering index
``nb_listing`` (``opening``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import diskcache

from .._errors import StoreError
from .disk import explain, fetch_value
from .files import DB_NAME
from .opening import connect
from .records import LISTING_SQL, no_gc

if TYPE_CHECKING:
    from .._model import Statuses

#: How an entry is stored, then its value: the last columns of every ``Reader.row`` query.
STORED: Final = "mode, expire_time, filename, value"
#: One entry by a str key (diskcache keeps those raw).
_GET: Final = f"SELECT {STORED} FROM Cache WHERE key = ? AND raw = 1"
#: How an entry is stored (a value file of parts: binary, in a file).
_FILE: Final = "SELECT mode, filename FROM Cache WHERE key = ? AND raw = 1"
#: One task's listing row, then how its record is stored and the record (see ``Reader.row``).
READ_LISTED: Final = f"SELECT {LISTING_SQL}, {STORED} FROM Cache WHERE key = ? AND raw = 1"
#: The cancel requests' keys.
CANCEL_REQUESTS: Final = "SELECT key FROM Cache WHERE key >= 'x:' AND key < 'x;'"

_SQL_INT_MAX: Final = 2**63 - 1
#: Keys per ``IN (...)`` query of ``Reader.many`` (well under SQLite's 32,766 parameters).
_MANY: Final = 500


class Reader:
    """The reads of one store: on diskcache's connection of the calling thread, or (a
    read-only store, ``cache`` None) on one of nbtasks' own per thread, opened ``mode=ro``."""

    def __init__(self, path: Path, cache: diskcache.Cache | None, lock_timeout: float) -> None:
        self.path = path
        self.cache = cache
        self.lock_timeout = lock_timeout
        self._local = threading.local()  # read-only: each thread's connection
        self._readers: list[sqlite3.Connection] = []

    def query(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        cache = self.cache
        if cache is not None:
            cursor: sqlite3.Cursor = cache._sql(sql, params)  # diskcache is not typed
            return cursor
        con = getattr(self._local, "reader", None)
        if con is None:
            con = self._local.reader = connect(self.path / DB_NAME, self.lock_timeout, True)
            self._readers.append(con)
        return con.execute(sql, params)

    def rows(self, sql: str, params: list[Any]) -> list[Any]:
        try:
            return self.query(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"querying the store {self.path} failed: {explain(exc, self.path)}"
            ) from exc

    def get(self, key: str) -> Any:
        """An entry's value, as ``Cache.get`` gives it; None if there is none."""
        row = self.row(_GET, key)
        return None if row is None else row[0]

    def filename(self, key: str) -> str | None:
        """The name of the value file an entry is stored in (as its row says: the caller
        confines it with ``files.value_path``), None if there is no such entry; StoreError if
        the entry is not a binary value file (a row nbtasks did not write)."""
        try:
            row = self.query(_FILE, (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"reading {key} from the store {self.path} failed: {explain(exc, self.path)}"
            ) from exc
        if row is None:
            return None
        mode, filename = row
        if mode != diskcache.core.MODE_BINARY or not isinstance(filename, str):
            raise StoreError(
                f"the entry {key} of the store {self.path} is not a value file that nbtasks "
                "wrote: it was not read. The store is damaged or was tampered with."
            )
        return filename

    def row(self, sql: str, key: str) -> tuple[Any, ...] | None:
        """The row of ``sql`` (whose last columns are ``STORED``) for ``key``, ending in the
        entry's value as ``Cache.get`` gives it; None if there is none. What nbtasks writes (in
        the row, no expiry) is taken as read: one query, where ``Cache.get`` costs 1-5 µs more
        (of ~20 for one record); a value in a file is read by ``fetch_value``, which confines
        the row's file name to the store and reads only regular files."""
        try:
            row = self.query(sql, (key,)).fetchone()
            return None if row is None else self._value(row)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"reading {key} from the store {self.path} failed: {explain(exc, self.path)}"
            ) from exc

    def _value(self, row: Sequence[Any]) -> tuple[Any, ...] | None:
        """A row of ``... STORED`` with its value as ``Cache.get`` gives it (None: expired)."""
        *head, mode, expires, filename, value = row
        if mode != diskcache.core.MODE_RAW or expires is not None:
            if expires is not None and expires < time.time():
                return None  # expired, as diskcache would say (nbtasks sets no expiry)
            value = fetch_value(str(self.path), mode, filename, value)
        return (*head, value)

    def many(self, cols: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """``SELECT cols, STORED`` of the entries of these keys (those that exist, in no given
        order), each ending in its value as ``row`` gives it, or None for one that cannot be
        read (a row naming a file that is not a regular one of the store): a few queries of
        ``_MANY`` keys each, where ``row`` per key would cost one round trip each (a cached
        ``map`` of 10,000 items looks up 10,000 keys)."""
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), _MANY):
            part = keys[start : start + _MANY]
            sql = (
                f"SELECT {cols}, {STORED} FROM Cache"
                f" WHERE key IN ({','.join('?' * len(part))}) AND raw = 1"
            )
            with no_gc():
                rows = self.rows(sql, list(part))
            for row in rows:
                try:
                    decoded = self._value(row)
                except StoreError:
                    decoded = (*row[:-4], None)
                if decoded is not None:
                    out.append(decoded)
        return out

    def listing(
        self,
        status: Statuses,
        name: str | None,
        offset: int,
        limit: int | None,
        *,
        name_part: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Committed tasks, newest first, as rows of ``LISTING_SQL``."""
        sql, params = select(LISTING_SQL, status, name, name_part=name_part)
        sql += " LIMIT ? OFFSET ?"
        params += _limits(limit, offset)
        with no_gc():  # 100,000 row tuples: ~130 collector passes (one full) while fetched
            return self.rows(sql, params)

    def count(self, status: Statuses, name: str | None, *, name_part: str | None = None) -> int:
        sql, params = select("count(*)", status, name, order=False, name_part=name_part)
        return int(self.rows(sql, params)[0][0])

    def attempt_rows(
        self, status: Statuses, name: str | None, limit: int | None, paths: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """Committed tasks, newest first, as ``LISTING_SQL`` rows followed by the record's
        fields at these JSON ``paths`` (SQLite's ``json_extract``: arrays come back as JSON
        text) and whether they could be read (0 for a record kept in a file, as diskcache
        keeps a large one, or not JSON: the caller reads that one whole)."""
        readable = "(raw = 1 AND typeof(value) = 'text' AND json_valid(value))"
        extracts = "".join(f", CASE WHEN {readable} THEN json_extract(value, ?) END" for _ in paths)
        sql, params = select(f"{LISTING_SQL}{extracts}, {readable}", status, name)
        params = [*paths, *params]
        sql += " LIMIT ? OFFSET ?"
        params += _limits(limit, 0)
        with no_gc():
            return self.rows(sql, params)

    def cache_keys(self, name: str) -> list[tuple[str, str]]:
        """(task id, cache key) of every record of the task ``name`` submitted with
        ``cache``: one query on the listing index's name column, the keys read out of the
        records by SQLite (``json_extract``), none parsed here. A record that is not JSON text
        is skipped (``json_valid`` guards the extraction), so it names no key."""
        sql, params = select("key, json_extract(value, '$.cache_key')", None, name, order=False)
        sql += " AND raw = 1 AND typeof(value) = 'text' AND json_valid(value)"
        return [(key[2:], ck) for key, ck in self.rows(sql, params) if isinstance(ck, str) and ck]

    def close(self) -> None:
        """Close the read-only connections (diskcache's are the cache's to close)."""
        for con in self._readers:
            con.close()
        self._readers.clear()


def select(
    cols: str,
    status: Statuses,
    name: str | None,
    order: bool = True,
    *,
    name_part: str | None = None,
) -> tuple[str, list[Any]]:
    """A query of the task rows (by status and name, when given) and its parameters.

    ``name_part``: names that contain it, in any case (``%tasks``' filter as you type). SQLite's
    ``lower()`` folds ASCII only, so the text is also looked for as typed: "Élan" finds "Élan"."""
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
    if name_part:
        sql += " AND (instr(lower(nb_name), ?) > 0 OR instr(nb_name, ?) > 0)"
        params += [name_part.lower(), name_part]
    if order:
        sql += " ORDER BY key DESC"
    return sql, params


def _limits(limit: int | None, offset: int) -> list[int]:
    """LIMIT and OFFSET within SQLite's integers (a larger int would raise OverflowError)."""
    return [
        -1 if limit is None or limit > _SQL_INT_MAX else max(limit, -1),
        min(max(offset, 0), _SQL_INT_MAX),
    ]
