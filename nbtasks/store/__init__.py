"""The store: the only user of diskcache, and the owner's live table of its tasks. Storage
only: it owns every status change (through ``_model.check_transition``) and persists it; it
supervises nothing.

Key layout (one diskcache ``Cache`` opened as a store, never as a cache)::

    nbtasks:schema      int   schema version, checked on open
    t:<task id>         str   the task's JSON record, tagged with its status (tag index),
                              its listing fields copied into nbtasks' own columns
    g:<group id>        str   a group's JSON record (member ids)
    v:<task id>:<what>  bytes a large signed pickle (arguments or return value); a value with
                              out-of-band buffers is one file of parts (``files.Segments``:
                              the stream, then each buffer, 64-byte aligned), mappable
    k:<cache key>       str   the id of the task that computed a cached call
    x:<task id>         str   a cancel request, written by anyone, acted on by the owner
    s:<task id>         str   an update_state request ({"state": ..., "meta": ...} JSON),
                              written by anyone (the newest wins), applied by the owner

The package's modules, each used by the ones after it:

- ``files``: the store directory and its own files, value files, the portable ``StoreLock``;
- ``disk``: diskcache's ``Disk`` and ``Cache`` made safe, and what their errors mean;
- ``opening``: opening and checking a store (schema, layout, ``Settings``, owner);
- ``records``: ids, a record's JSON text and listing row, summaries, ``Live``;
- ``queries``: reading entries and listings;
- ``writer``: the group-commit writer thread;
- ``identity``: process identity on every platform (is a pid alive, its start time);
- ``owners``: owner tokens and the sweep of dead owners' tasks;
- ``cleanup``: deleting finished records (purge) and giving their space back (vacuum).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple, cast

import diskcache

from .._codec import INLINE_LIMIT, Codec, Signer, _is_plain
from .._errors import StoreError, UnknownTaskId
from .._model import (
    FINISHED,
    MISSING,
    Statuses,
    TaskRecord,
    TaskStatus,
    check_id,
    check_json,
    check_text,
    check_transition,
)
from . import cleanup
from .disk import explain
from .files import Segments, ValueFile, check_layout
from .identity import pid_alive, process_start_time
from .opening import LOCK_TIMEOUT, SCHEMA, open_cache, open_reader
from .owners import (
    HOST,
    as_swept,
    describe_owner,
    owner_alive,
    owner_token,
    sweep_dead_owners,
    swept_rows,
)
from .queries import CANCEL_REQUESTS, READ_LISTED, Reader
from .records import (
    DAMAGED,
    LISTING_SQL,
    STATUS,
    Live,
    damaged,
    ending,
    new_id,
    no_gc,
    parse_record,
    parse_task_record,
    summary,
)
from .writer import Writer, flush_all

__all__ = [
    "HOST",
    "LOCK_TIMEOUT",
    "SCHEMA",
    "Live",
    "StateRequest",
    "Store",
    "damaged",
    "describe_owner",
    "flush_all",
    "new_id",
    "no_gc",
    "owner_alive",
    "parse_record",
    "parse_task_record",
    "pid_alive",
    "process_start_time",
    "summary",
]

_log = logging.getLogger("nbtasks")

#: The update_state requests' keys.
_STATE_REQUESTS: Final = "SELECT key FROM Cache WHERE key >= 's:' AND key < 's;'"


class StateRequest(NamedTuple):
    """An update_state request read from the store: for ``task_id``, set ``state`` (None:
    unchanged) and ``meta``; ``raw`` is the entry as read (to delete it once applied)."""

    task_id: str
    state: str | None
    meta: Any
    raw: str


def _parse_state_request(task_id: str, raw: Any) -> StateRequest | str:
    """The request an ``s:`` entry holds, or why it is not one (a str)."""
    if not isinstance(raw, str):
        return f"its value is a {type(raw).__name__}, not JSON text"
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return f"it is not JSON: {exc}"
    if not isinstance(value, dict) or set(value) != {"state", "meta"}:
        return 'it is not a JSON object of the keys "state" and "meta"'
    state, meta = value["state"], value["meta"]
    try:
        check_text(task_id, "task id")
        if state is not None:
            if not isinstance(state, str):
                return f"its state is {type(state).__name__}, not a str"
            check_text(state, "state")
        check_json(meta, "its meta")
    except (TypeError, ValueError) as exc:
        return str(exc)
    return StateRequest(task_id, state, meta, raw)


#: A pickle this long or longer goes to its own entry (its base64 would pass INLINE_LIMIT).
_INLINE_PICKLE: Final = INLINE_LIMIT * 3 // 4 - 32
_FINISHED_VALUES: Final = sorted(s.value for s in FINISHED)
_UNFINISHED: Final = frozenset({TaskStatus.READY.value, TaskStatus.RUNNING.value})
_REUSABLE: Final = _UNFINISHED | {TaskStatus.SUCCESSFUL.value}


#: The record fields a timeline reads besides the listing's (``Store.attempt_records``); the
#: last one is a number, the others lists.
_ATTEMPT_FIELDS: Final = ("worker_ids", "attempt_times", "last_attempted_at")


class Store:
    """One open store: diskcache, the codec, the live table; its reads (``reader``) and
    writes (``writer``)."""

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
        if read_only:
            self.cache: Any = None
            open_reader(self.path, lock_timeout)
        else:
            self.cache = open_cache(self.path, trust, adopt, lock_timeout)
        self.codec = Codec(Signer(), str(self.path), trust)
        self.owner = owner_token()
        self.live: dict[str, Live] = {}
        # Commit at the writer's tick (<= TICK later) rather than at once: a worker process
        # reports its task's state over its pipe, and waking a writer thread per change costs
        # it a GIL hand-off per task.
        self.commit_at_tick = False
        self.reader = Reader(self.path, self.cache, lock_timeout)
        self.writer = Writer(self.cache, self.path, self.live, lock_timeout)
        if sweep and not read_only:  # not in a worker process: its parent swept, and owns its
            self.sweep()  # dead workers' tasks

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @property
    def writer_error(self) -> BaseException | None:
        """The last commit's error (None once a commit works again)."""
        return self.writer.error

    # ------------------------------------------------------------------ reading

    def get_record(self, task_id: str) -> TaskRecord:
        live = self.live.get(task_id)
        if live is not None:
            return live.rec
        return self.read_record(task_id)

    def read_record(self, task_id: str) -> TaskRecord:
        """The committed record (never the in-memory one)."""
        key = "t:" + task_id
        text = self.reader.get(key)
        if text is None:
            raise self._unknown(task_id)
        rec = parse_task_record(text, key, self.path)
        return as_swept(task_id, rec) if self.read_only else rec

    def read_listed(self, task_id: str) -> tuple[TaskRecord, str]:
        """The committed record's listing fields (as ``summary()`` gives them), and its text
        to parse when any other field is wanted: one query, and no parse for a handle that is
        only asked its status (~12 µs, against ~20 to read and parse the whole record)."""
        row = self.reader.row(READ_LISTED, "t:" + task_id)
        if row is None:
            raise self._unknown(task_id)
        *fields, text = row
        return summary(fields), text

    def ids_named(self, text: str, limit: int = 3) -> list[str]:
        """Up to ``limit`` ids of committed tasks (newest first) that ``text`` names as
        ``_text.match_ids`` reads it: the start of the id or its end (the short id views
        show), dashes and case ignored. One query over the task keys: only for a partial id
        (a full one is a key lookup); ``text`` is compared, never a pattern."""
        needle = text.replace("-", "").lower()
        if not needle:
            return []
        self.flush()
        compact = "replace(lower(substr(key, 3)), '-', '')"
        sql = (
            "SELECT substr(key, 3) FROM Cache WHERE key >= 't:' AND key < 't;' AND raw = 1"
            f" AND (substr({compact}, 1, ?) = ? OR substr({compact}, -?) = ?)"
            " ORDER BY key DESC LIMIT ?"
        )
        n = len(needle)
        rows = self.reader.rows(sql, [n, needle, n, needle, max(limit, 0)])
        return [str(key) for (key,) in rows]

    def _unknown(self, task_id: str) -> UnknownTaskId:
        return UnknownTaskId(
            f"no task with id {task_id!r} in the store {self.path}; "
            "check the id, or open the store the task was submitted to"
        )

    def group_members(self, group_id: str) -> list[str]:
        """The ids of a group's tasks, in order (``group_id`` as the user gave it: checked)."""
        return self.group_record(group_id)[0]

    def group_record(self, group_id: str) -> tuple[list[str], set[str]]:
        """A group's members' ids, in order, and those of them its submit reused (cache hits:
        the group's view says how many). A ``reused`` field that is not a list of ids is read
        as none: it only ever labels members."""
        key = "g:" + check_id(group_id, "group_id")
        text = self.reader.get(key)
        if text is None:
            raise UnknownTaskId(f"no group with id {group_id!r} in the store {self.path}")
        rec = parse_record(text, key, self.path)
        members: list[str] = rec["members"]
        reused = rec.get("reused")
        if not isinstance(reused, list) or not all(isinstance(r, str) for r in reused):
            reused = []
        return members, set(reused) & set(members)

    def get_blob(self, key: str) -> bytes:
        pending = self.writer.staged(key)
        if pending is not MISSING:
            return pending  # type: ignore[no-any-return]
        value = self.reader.get(key)
        if value is None:
            raise StoreError(f"the value {key} is missing from the store {self.path}")
        if type(value) is not bytes:
            raise damaged(key, self.path, "it is not a value nbtasks wrote")
        return value

    def encode_value(self, task_id: str, what: str, value: Any) -> dict[str, Any]:
        """Encode a value for a record: JSON, a small signed pickle inline, or a large pickle
        in its own entry (a file) written with the record's next batch (or at once by
        ``create``), its signature in the record. A large pickle is neither base64-ed nor
        copied to be signed: while it is written it is held once, beside the value itself.

        A value with large contiguous buffers (numpy arrays) is pickled with them out of band:
        its file holds the stream, then each buffer written straight from the array's memory
        (``files.Segments``), so storing it holds no copy of the data. The record keeps the
        parts' layout (``"b"``), signed with the stream (docs/security.md)."""
        if _is_plain(value):
            return {"j": value}
        data, buffers = self.codec.pickle_parts(value)
        key = f"v:{task_id}:{what}"
        if buffers:
            segments = Segments([data, *buffers])
            self.writer.stage(key, segments)
            signature = self.codec.signature(data, segments.layout)
            return {"k": key, "s": signature.hex(), "b": segments.layout}
        signature = self.codec.signature(data)
        if len(data) < _INLINE_PICKLE:
            return self.codec.inline(signature, data)
        self.writer.stage(key, data)
        return {"k": key, "s": signature.hex()}

    def decode_value(self, enc: dict[str, Any], what: str, mmap: bool = False) -> Any:
        """A value of a record. ``mmap``: the arrays of a value stored with out-of-band
        buffers are read-only views of its file, mapped, not read (other values read as
        usual: they have nothing to map)."""
        if "b" in enc:
            return self._decode_parts(enc, what, mmap)
        if "k" in enc:
            return self.codec.decode_blob(self.get_blob(enc["k"]), enc.get("s"), what)
        return self.codec.decode(enc, what)

    def _decode_parts(self, enc: dict[str, Any], what: str, mmap: bool) -> Any:
        """A value file of parts (``encode_value``): its stream verified with the layout before
        a buffer is read or anything unpickled; the buffers read into new memory (writable
        arrays, as a pickle gives) or, with ``mmap``, views of the read-only mapped file."""
        key = enc.get("k")
        if not isinstance(key, str):
            raise damaged(f"{what}", self.path, "its value has no entry key")
        layout = check_layout(enc["b"], what, str(self.path))
        (_, n), buffers = layout[0], layout[1:]
        pending = self.writer.staged(key)
        if isinstance(pending, Segments):
            parts = pending.parts
            if not mmap:  # not written yet: copies of the buffers, as a read would give
                return self.codec.decode_layout(
                    parts[0],
                    enc.get("s"),
                    enc["b"],
                    lambda: [bytearray(p) for p in parts[1:]],
                    what,
                )
            self.flush()  # a mapping is of the file: write it first
        filename = self.reader.filename(key)
        if filename is None:
            # Staged, or in the batch the writer is committing: once flushed, it is in the file.
            self.flush()
            filename = self.reader.filename(key)
        if filename is None:
            raise StoreError(f"the value {key} is missing from the store {self.path}")
        end = layout[-1][0] + layout[-1][1]
        with ValueFile(str(self.path), filename, end) as file:
            if mmap:
                view = memoryview(file.map())
                return self.codec.decode_layout(
                    view[:n],
                    enc.get("s"),
                    enc["b"],
                    lambda: [view[o : o + length] for o, length in buffers],
                    what,
                )
            return self.codec.decode_layout(
                file.read(0, n),
                enc.get("s"),
                enc["b"],
                lambda: [file.read(o, length) for o, length in buffers],
                what,
            )

    # ------------------------------------------------------------------ queries

    def listing(
        self,
        status: Statuses = None,
        name: str | None = None,
        offset: int = 0,
        limit: int | None = None,
        *,
        name_part: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Committed tasks, newest first, as rows of ``records.LISTING_SQL`` (nothing parsed
        or unpickled); a read-only store's as the sweep would leave them. ``name_part``: only
        names containing it, in any case."""
        self.flush()
        rows = self.reader.listing(status, name, offset, limit, name_part=name_part)
        return swept_rows(self.reader, rows, self.path) if self.read_only else rows

    def summaries(
        self,
        status: Statuses = None,
        name: str | None = None,
        offset: int = 0,
        limit: int | None = 50,
        *,
        name_part: str | None = None,
    ) -> list[TaskRecord]:
        """The fields a dashboard shows, as dicts (``listing()`` rows, named)."""
        rows = self.listing(status, name, offset, limit, name_part=name_part)
        with no_gc():
            return [summary(row) for row in rows]

    def attempt_records(
        self, status: Statuses = None, name: str | None = None, limit: int | None = None
    ) -> list[TaskRecord]:
        """What a timeline draws of each committed task, newest first: the listing fields plus
        ``worker_ids``, ``attempt_times`` and ``last_attempted_at`` (partial records). Read by
        SQLite from the records (no record parsed here but one kept in a file); a damaged one
        is left out."""
        self.flush()
        paths = _ATTEMPT_FIELDS
        out: list[TaskRecord] = []
        with no_gc():
            for row in self.reader.attempt_rows(status, name, limit, [f"$.{f}" for f in paths]):
                rec = summary(row[:7])
                if rec["status"] == DAMAGED:
                    continue
                if row[-1]:
                    for field, value in zip(paths, row[7:-1], strict=True):
                        if value is not None:
                            rec[field] = json.loads(value) if field != paths[-1] else value  # type: ignore[literal-required]
                else:  # kept in a file, or not JSON that SQLite reads: the whole record
                    try:
                        full = self.read_record(rec["id"])
                    except StoreError:
                        continue
                    for field in paths:
                        if full.get(field) is not None:
                            rec[field] = full[field]  # type: ignore[literal-required]
                out.append(as_swept(rec["id"], rec) if self.read_only else rec)
        return out

    def usages(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``TaskResult.usage`` of these tasks (those that have one), by id: this process's
        from memory, the others' records in a few bulk reads (a dashboard's page)."""
        out: dict[str, dict[str, Any]] = {}
        ask = []
        for tid in ids:
            live = self.live.get(tid)
            if live is None:
                ask.append(tid)
            elif isinstance(live.rec.get("usage"), dict):
                out[tid] = live.rec["usage"]  # type: ignore[assignment]
        for key, text in self.reader.many("key", ["t:" + tid for tid in ask]):
            try:
                usage = parse_task_record(text, key, self.path).get("usage")
            except StoreError:
                continue
            if isinstance(usage, dict):
                out[key[2:]] = usage
        return out

    def count(
        self, status: Statuses = None, name: str | None = None, *, name_part: str | None = None
    ) -> int:
        self.flush()
        return self.reader.count(status, name, name_part=name_part)

    def find_cached(self, keys: Sequence[str]) -> dict[str, str]:
        """The ids of the tasks that computed these cached calls (cache key -> task id), in a
        few bulk queries. An entry that is not one nbtasks wrote (a task id) is a miss: the
        submit computes, and its entry replaces it."""
        rows = self.reader.many("key", ["k:" + key for key in keys])
        found = {key[2:]: tid for key, tid in rows if isinstance(tid, str)}
        for key in keys:  # an entry this process wrote that the next batch commits
            staged = self.writer.staged("k:" + key)
            if isinstance(staged, str):
                found[key] = staged
        return found

    def reusable(self, ids: Iterable[str]) -> dict[str, TaskRecord]:
        """Of these tasks, those a cached submit may reuse (SPEC 6), by id: SUCCESSFUL ones
        (the caller judges their age against ``cache_ttl``), and READY or RUNNING ones whose
        owner process is alive. This process's own tasks are read from the live table;
        the others' listing rows in bulk, a record parsed only to read an unfinished task's
        owner. The values are the live record, or the listing summary."""
        out: dict[str, TaskRecord] = {}
        ask: list[str] = []
        for tid in ids:
            live = self.live.get(tid)
            if live is None:
                ask.append(tid)
            elif live.rec["status"] in _REUSABLE:
                out[tid] = live.rec  # unfinished here: its owner (this process) is alive
        for *fields, text in self.reader.many(LISTING_SQL, ["t:" + tid for tid in ask]):
            rec = summary(fields)
            if rec["status"] in _UNFINISHED:
                try:
                    owner = parse_task_record(text, fields[0], self.path).get("owner")
                except StoreError:
                    continue
                if not owner_alive(owner):
                    continue  # the sweep makes it INTERRUPTED: never reused
            elif rec["status"] != TaskStatus.SUCCESSFUL.value:
                continue
            out[rec["id"]] = rec
        return out

    def cache_clear(self, name: str) -> list[str]:
        """Delete the cache entries (``k:``) of the task ``name``, every code version, in one
        transaction; its records stay. Returns the keys deleted. The keys are found through
        the task's records (their ``cache_key``), by the name column of the listing index."""
        self._writable()
        self.flush()  # records submitted here are committed, so the query sees their keys
        keys = sorted({key for _tid, key in self.reader.cache_keys(name)})
        deleted: list[str] = []
        try:
            with self.cache.transact():
                for key in keys:
                    if self.cache.delete("k:" + key):
                        deleted.append(key)
        except (diskcache.Timeout, sqlite3.Error) as exc:
            raise StoreError(
                f"clearing the cache of {name} in the store {self.path} failed, nothing was "
                f"deleted: {explain(exc, self.path)}"
            ) from exc
        return deleted

    def cancel_requests(self) -> list[str]:
        """The ids of the tasks with a pending cancel request (written by any process)."""
        return [key[2:] for (key,) in self.reader.rows(CANCEL_REQUESTS, [])]

    def state_requests(self) -> list[StateRequest]:
        """The pending update_state requests (written by any process) of tasks that have not
        ended; those of ended tasks are deleted. A store is data, never instructions (SPEC
        10): an entry that is not the JSON ``request_state`` writes is deleted with a
        warning, and nothing else is done with it."""
        out = []
        for (key,) in self.reader.rows(_STATE_REQUESTS, []):
            try:
                raw = self.reader.get(key)
            except StoreError as exc:  # e.g. a row naming a file that is not a regular one
                self._drop_bad_request(key, MISSING, str(exc))
                continue
            if raw is None:
                continue  # deleted meanwhile (applied by its owner)
            request = _parse_state_request(key[2:], raw)
            if isinstance(request, str):
                self._drop_bad_request(key, raw, request)
            elif self._ended(request.task_id):
                # Its task ended (or was purged) after the request was written, before its
                # owner's next tick: nobody will apply it.
                self.drop_state_request(request.task_id, raw)
            else:
                out.append(request)
        return out

    def _ended(self, task_id: str) -> bool:
        live = self.live.get(task_id)
        if live is not None:
            return live.finished
        try:
            return self.read_listed(task_id)[0]["status"] in _FINISHED_VALUES
        except UnknownTaskId:
            return True

    def _drop_bad_request(self, key: str, raw: Any, why: str) -> None:
        _log.warning(
            "nbtasks: the entry %s of the store %s is not an update_state request that "
            "nbtasks wrote (%s); it was ignored and deleted",
            key,
            self.path,
            why,
        )
        self.drop_state_request(key[2:], raw)

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
        groups, cache_keys = list(groups), list(cache_keys)
        if new or groups or cache_keys:
            self._writable()
        if self.writer.commit(new, groups, cache_keys, fresh_ids) < 0:
            exc = self.writer.error
            why = explain(exc, self.path) if exc is not None else "unknown error"
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
        self.writer.settle(live.id)

    def observe(self, live: Live, fields: Mapping[str, object]) -> None:
        """Mirror fields that the task's owner in another process wrote (or is writing): in
        memory only, never written from here. Waiters wake when the status becomes final."""
        status = fields.get("status")
        if status is not None and status != live.rec["status"]:
            check_transition(live.id, TaskStatus(live.rec["status"]), TaskStatus(str(status)))
        live.rec.update(cast(TaskRecord, fields))
        if status is not None and status in FINISHED:
            live.notify_finished()

    def change(
        self, live: Live, status: TaskStatus | None = None, *, soon: bool = True, **fields: Any
    ) -> None:
        """Apply a change in memory (seen at once by this process) and mark it for the writer:
        committed within milliseconds, or with ``soon=False`` at the writer's next tick (0.1 s;
        it does not wake the writer). A status change goes through the transition table."""
        if status is not None:
            check_transition(live.id, STATUS[live.rec["status"]], status)
            fields["status"] = status.value
        live.rec.update(
            cast(TaskRecord, fields)
        )  # one C call: atomic with the writer's json.dumps under the GIL
        self.writer.mark(live, soon and not self.commit_at_tick)
        if status is not None and status in FINISHED:
            live.notify_finished()

    def cancel(self, live: Live, reason: str, now: float, **fields: Any) -> None:
        """READY or RUNNING -> CANCELLED; ``reason`` says why (``cancelled``, ``expired``, a
        failed chain member ...), ``fields`` are recorded with it."""
        self.change(
            live, TaskStatus.CANCELLED, **fields, **ending(TaskStatus.CANCELLED, reason, now)
        )

    def interrupt(self, live: Live, why: str, now: float, **fields: Any) -> None:
        """READY or RUNNING -> INTERRUPTED: the task's attempt was lost (``why``, recorded as
        its reason); ``fields`` are recorded with it."""
        self.change(
            live, TaskStatus.INTERRUPTED, **fields, **ending(TaskStatus.INTERRUPTED, why, now)
        )

    def mark(self, live: Live, soon: bool = True) -> None:
        self.writer.mark(live, soon and not self.commit_at_tick)

    def put_extra(self, key: str, value: Any) -> None:
        """Write (or, with None, delete) a side entry with the next batch."""
        self.writer.put_extra(key, value)

    def request_cancel(self, task_id: str) -> None:
        """A cancel request for a task owned elsewhere: written at once, acted on by the owner."""
        self._writable()
        try:
            self.cache.set("x:" + task_id, str(time.time()))
        except (diskcache.Timeout, sqlite3.Error) as exc:
            raise StoreError(
                f"could not write the cancel request of {task_id} to the store {self.path}: "
                f"{explain(exc, self.path)}"
            ) from exc

    def request_state(self, task_id: str, state: str | None, meta: Any) -> None:
        """An update_state request for a task running elsewhere (``meta``: checked JSON):
        written at once, replacing an earlier one (the newest wins), applied by the task's
        owner at its next tick."""
        self._writable()
        text = json.dumps({"state": state, "meta": meta}, allow_nan=False)
        try:
            self.cache.set("s:" + task_id, text)
        except (diskcache.Timeout, sqlite3.Error) as exc:
            raise StoreError(
                f"could not write the update_state request of {task_id} to the store "
                f"{self.path}: {explain(exc, self.path)}"
            ) from exc

    def drop_state_request(self, task_id: str, raw: Any = MISSING) -> None:
        """Delete the update_state request of ``task_id`` once applied: only if it is still
        ``raw`` (a newer one, written meanwhile, stays for the next tick)."""
        key = "s:" + task_id
        try:
            with self.cache.transact():
                if raw is MISSING or self.reader.get(key) == raw:
                    self.cache.delete(key)
        except StoreError:
            self.cache.delete(key)  # unreadable: nothing to compare, and nothing to keep
        except (diskcache.Timeout, sqlite3.Error) as exc:
            raise StoreError(
                f"could not delete the update_state request of {task_id} from the store "
                f"{self.path}: {explain(exc, self.path)}"
            ) from exc

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(
                f"the store {self.path} was opened read-only (App(read_only=True)): "
                "open it with nbtasks.App(store) to submit, cancel or purge"
            )

    def flush(self) -> None:
        """Commit everything changed so far, in the calling thread; when it returns, a commit
        the writer had under way has finished too (it holds the same lock)."""
        self.writer.flush()

    def close(self) -> None:
        if self.read_only:
            self.reader.close()
            return
        self.writer.close()
        self.cache.close()

    # ------------------------------------------------------------------ recovery and purge

    def sweep(self) -> int:
        """READY/RUNNING records whose owner process on this host is gone become INTERRUPTED.
        A damaged record is left as it is (it lists as damaged); a read-only store is not
        swept (its readers see the sweep's verdict without writing it)."""
        if self.read_only:
            return 0
        return sweep_dead_owners(self.reader, self.cache, self.path)

    def purge(
        self,
        older_than: float | None = None,
        status: Iterable[str] | None = None,
        name: str | None = None,
    ) -> int:
        """Delete finished records (finished before ``older_than``, an epoch time; of the task
        ``name`` if given). A damaged record is left alone: it is not known to be finished."""
        self._writable()
        self.flush()
        statuses = list(status) if status is not None else _FINISHED_VALUES
        return cleanup.purge(self.reader, self.cache, self.path, older_than, statuses, name)

    def vacuum(self, orphan_age: float = 3600.0) -> None:
        """Give the space of deleted records back to the file system (``cleanup.vacuum``)."""
        self._writable()
        self.flush()
        with self.writer.lock:
            cleanup.vacuum(self.reader, self.cache, self.path, orphan_age)
