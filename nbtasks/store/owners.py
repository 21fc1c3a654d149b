"""Owners: each task has one, the process that runs it (DESIGN principle 2), named by a token
(host, pid, process start time: ``store.identity``). When a store is opened, its READY/RUNNING
records whose owner is gone become INTERRUPTED (the sweep); a read-only store shows that verdict
without writing it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any, Final, cast

import diskcache

from .._errors import StoreError
from .._model import TaskRecord, TaskStatus, check_transition
from .disk import explain
from .identity import pid_alive, process_start_time, start_time_like
from .queries import Reader
from .records import DAMAGED, STATUS, UNFINISHED, ending, parse_task_record, record_row
from .writer import upsert

HOST: Final = socket.gethostname()
STALE: Final = 60.0  # seconds without a heartbeat after which an owner on another host is gone


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{HOST}:{pid}:{process_start_time(pid) or '?'}"


def owner_alive(owner: str | None) -> bool:
    """False only when the owner surely is gone: same host, and its pid is dead or reused (its
    start time differs from the token's). Where the start time cannot be read, the pid decides
    (store.identity): a live owner is never taken for a dead one."""
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
    if not pid_alive(pid):
        return False
    if start == "?":
        return True
    now = start_time_like(pid, start)
    if now is None:
        # Cannot tell (it ended meanwhile, or no way to read a start time here, or the token
        # was read another way): trust the pid.
        return pid_alive(pid)
    return now == start


def owner_pid(owner: str | None) -> int | None:
    try:
        return int((owner or "").split(":")[-2])
    except (IndexError, ValueError):
        return None


def describe_owner(owner: str | None) -> str:
    """An owner token (host:pid:start) as a person reads it."""
    owner = owner or "?"
    parts = owner.split(":")
    return f"pid {parts[-2]} on {':'.join(parts[:-2])}" if len(parts) >= 3 else owner


def owner_gone(rec: TaskRecord, now: float) -> bool:
    """On this host: its pid is dead or reused. On another (where pids say nothing): the record
    carries heartbeats (a worker process writes one every few seconds) and the last is stale."""
    owner = rec.get("owner")
    if not owner_alive(owner):
        return True
    beat = rec.get("heartbeat")
    host = (owner or "").rsplit(":", 2)[0]
    return beat is not None and host != HOST and now - beat > STALE


def gone_why(rec: TaskRecord) -> str:
    why = f"its owner process {describe_owner(rec.get('owner'))} is gone"
    beat = rec.get("heartbeat")
    if isinstance(beat, int | float):
        why += f" (last heartbeat {time.strftime('%H:%M:%S', time.localtime(beat))})"
    return why


def interrupt_record(task_id: str, rec: TaskRecord, now: float, why: str) -> None:
    """A committed record whose owner is gone, INTERRUPTED (through the transition table)."""
    check_transition(task_id, STATUS[rec["status"]], TaskStatus.INTERRUPTED)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    rec["status"] = TaskStatus.INTERRUPTED.value
    rec.update(cast(TaskRecord, ending(TaskStatus.INTERRUPTED, f"{why} (found at {when})", now)))


# --------------------------------------------------------------------------- the sweep


def sweep_dead_owners(reader: Reader, cache: Any, path: Path) -> int:
    """READY/RUNNING records whose owner process on this host is gone become INTERRUPTED, in
    one transaction; returns how many. A damaged record is left as it is (it lists as
    damaged)."""
    now = time.time()
    dead = [key for key, rec in _unfinished(reader, path) if owner_gone(rec, now)]
    if not dead:
        return 0
    n = 0
    try:
        with cache.transact():
            for key in dead:
                try:
                    rec = parse_task_record(reader.get(key), key, path)
                except StoreError:
                    continue
                if rec["status"] not in UNFINISHED or not owner_gone(rec, now):
                    continue
                interrupt_record(key[2:], rec, now, gone_why(rec))
                upsert(cache._con, [record_row(key[2:], rec, now)])
                n += 1
    except (diskcache.Timeout, sqlite3.Error) as exc:
        raise StoreError(
            f"could not mark the tasks of dead processes in the store {path} as "
            f"INTERRUPTED: {explain(exc, path)}"
        ) from exc
    return n


def _unfinished(reader: Reader, path: Path) -> list[tuple[str, TaskRecord]]:
    """The READY/RUNNING records, parsed (damaged ones left out)."""
    rows = reader.rows(
        "SELECT key, value FROM Cache WHERE tag IN ('READY', 'RUNNING') "
        "AND key >= 't:' AND key < 't;'",
        [],
    )
    out = []
    for key, text in rows:
        with contextlib.suppress(StoreError):
            out.append((key, parse_task_record(text, key, path)))
    return out


def as_swept(task_id: str, rec: TaskRecord) -> TaskRecord:
    """A record of a read-only store as a sweep would leave it (a copy), nothing written."""
    if rec["status"] in UNFINISHED and owner_gone(rec, time.time()):
        rec = rec.copy()
        interrupt_record(task_id, rec, time.time(), gone_why(rec))
    return rec


def swept_rows(reader: Reader, rows: list[tuple[Any, ...]], path: Path) -> list[tuple[Any, ...]]:
    """A read-only store's listing rows as a sweep would leave them (nothing written); an
    unfinished record that cannot be read lists as DAMAGED (the sweep skips it)."""
    out = []
    for row in rows:
        if row[1] in UNFINISHED:
            try:
                key = row[0]
                rec = as_swept(key[2:], parse_task_record(reader.get(key), key, path))
            except StoreError:
                row = (row[0], DAMAGED, *row[2:])
            else:
                if rec["status"] != row[1]:
                    # swept, or changed by its (live) owner since the listing row was read
                    row = (row[0], rec["status"], *row[2:5], rec.get("finished_at"), row[6])
        out.append(row)
    return out
