"""Deleting from a store: finished records (purge), then the space they held (vacuum)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import diskcache

from .._errors import StoreError
from .disk import explain
from .files import remove_value
from .queries import Reader, select
from .records import parse_record


def purge(
    reader: Reader,
    cache: Any,
    path: Path,
    older_than: float | None,
    statuses: list[str],
    name: str | None = None,
) -> int:
    """Delete the records of these (finished) statuses, finished before ``older_than`` (an epoch
    time), of the task ``name`` if given, with their values, cancel requests and cache keys, in
    one transaction. A damaged record is left alone: it is not known to be finished.

    A cache key is deleted only while it names the purged task: after ``cache_clear`` a newer
    run of the same call may own it. Groups are never purged by themselves: a group record
    goes when none of its members is left, so a member that a later group reused (a cache hit)
    is deleted only by a purge that matches that task itself."""
    sql, params = select("key, value", statuses, name, order=False)
    rows = reader.rows(sql, params)
    n = 0
    try:
        with cache.transact():
            for key, text in rows:
                try:
                    rec = parse_record(text, key, path)
                except StoreError:
                    continue
                fin = rec.get("finished_at")
                if older_than is not None and (
                    not isinstance(fin, int | float) or fin >= older_than
                ):
                    continue
                tid = key[2:]
                cache.delete(key)
                cache.delete("x:" + tid)
                for what in ("args", "kwargs", "rv", "exc"):
                    cache.delete(f"v:{tid}:{what}")
                if isinstance(rec.get("cache_key"), str):
                    ck = "k:" + rec["cache_key"]
                    with contextlib.suppress(StoreError):  # not a task id: not ours to judge
                        if reader.get(ck) == tid:
                            cache.delete(ck)
                n += 1
            if n:
                _drop_empty_groups(reader, cache, path)
    except (diskcache.Timeout, sqlite3.Error) as exc:
        raise StoreError(
            f"purging the store {path} failed, nothing was deleted: {explain(exc, path)}"
        ) from exc
    return n


def _drop_empty_groups(reader: Reader, cache: Any, path: Path) -> None:
    """Delete the group records none of whose members is left (in purge's transaction)."""
    groups = reader.rows("SELECT key FROM Cache WHERE key >= 'g:' AND key < 'g;'", [])
    if not groups:
        return
    left = reader.rows("SELECT key FROM Cache WHERE key >= 't:' AND key < 't;'", [])
    alive = {key[2:] for (key,) in left}
    for (key,) in groups:
        try:
            members = parse_record(reader.get(key), key, path).get("members")
        except StoreError:
            continue  # damaged: not known to be empty
        if not isinstance(members, list) or not any(m in alive for m in members):
            cache.delete(key)


def vacuum(reader: Reader, cache: Any, path: Path, orphan_age: float) -> None:
    """Give the space of deleted records back to the file system: delete large values whose
    task is gone, value files no entry refers to (older than ``orphan_age`` seconds: one that
    another process is writing is not referred to yet; a process killed mid-write leaves one
    behind), then VACUUM the database and truncate its WAL. It rewrites the whole database:
    other processes' writes wait until it is done (and this process's: the caller holds the
    writer's lock). Only regular files named as diskcache names its value files, in real
    directories of the store, are deleted."""
    try:
        tasks = reader.rows("SELECT key FROM Cache WHERE key >= 't:' AND key < 't;'", [])
        alive = {key[2:] for (key,) in tasks}
        values = reader.rows("SELECT key FROM Cache WHERE key >= 'v:' AND key < 'v;'", [])
        with cache.transact():
            for (key,) in values:
                if key[2:].rpartition(":")[0] not in alive:
                    cache.delete(key)
        con = cache._con
        con.execute("VACUUM")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except (sqlite3.DatabaseError, diskcache.Timeout) as exc:
        raise StoreError(f"vacuuming the store {path} failed: {explain(exc, path)}") from exc
    rows = reader.rows("SELECT filename FROM Cache WHERE filename IS NOT NULL", [])
    referenced = {os.path.normpath(name) for (name,) in rows if isinstance(name, str)}
    cutoff = time.time() - orphan_age
    # os.walk does not descend into links; lstat: a link is never judged by its target
    for root, _dirs, names in os.walk(path, topdown=False):
        rel_root = os.path.relpath(root, path)
        if rel_root == ".":
            continue  # the database, the marker, the lock: never value files
        for name in names:
            rel = os.path.normpath(os.path.join(rel_root, name))
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(root, name))
                if rel not in referenced and stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                    remove_value(str(path), rel)
        with contextlib.suppress(OSError):
            os.rmdir(root)  # only if empty
