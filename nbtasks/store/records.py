"""Task records: their ids, their JSON text and listing row, their summaries, and ``Live``, a
task in its owner's memory.

A record is the task's JSON object (status, name, times, progress, metadata, encoded values),
stored under ``t:<task id>``; its listing fields are copied into nbtasks' own columns of the same
row (``opening.SUMMARY_COLUMNS``). Task ids are time-ordered (a UUIDv7-like layout), so ``ORDER
BY key DESC`` is newest first and inserts stay at the end of the B-tree.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

from .._errors import damaged
from .._model import FINISHED, MISSING, TaskRecord, TaskStatus

#: A status's name -> the status.
STATUS: Final = {s.value: s for s in TaskStatus}
UNFINISHED: Final = (TaskStatus.READY, TaskStatus.RUNNING)

# --------------------------------------------------------------------------- ids

_rng = random.Random(os.urandom(16))


def _reseed() -> None:
    """A forked child makes ids of its own, not its parent's next ones."""
    _rng.seed(os.urandom(16))


if hasattr(os, "register_at_fork"):  # no fork (Windows): no forked child to reseed
    os.register_at_fork(after_in_child=_reseed)
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


# --------------------------------------------------------------------------- records

#: What a listing reads of each task: ``(key, status, name, enqueued_at, started_at,
#: finished_at, progress JSON)``. The casts give each column the type nbtasks writes whatever a
#: row holds (NULL stays NULL), in C: checking the types in ``summary()`` cost ~15 % of it.
LISTING_SQL: Final = (
    "key, tag, CAST(nb_name AS TEXT), CAST(nb_enqueued AS REAL), CAST(nb_started AS REAL),"
    " CAST(nb_finished AS REAL), nb_progress"
)


def parse_record(text: Any, key: str = "", store: Path | str = "") -> dict[str, Any]:
    """A task (or group) record as nbtasks wrote it: a JSON object, and a task's with a status
    and a name. Anything else raises StoreError for this record only."""
    try:
        rec = json.loads(text) if type(text) is str else None
    except ValueError:
        rec = None
    if type(rec) is dict and (
        not key.startswith("t:")
        or (rec.get("status") in STATUS and type(rec.get("task_name")) is str)
    ):
        return rec
    raise damaged(key, store, "it is not a record nbtasks wrote")


DAMAGED: Final = "DAMAGED"  # the status a listing shows for a damaged record
_NUMBERS: Final = (float, int)


def parse_task_record(text: Any, key: str, store: Path | str = "") -> TaskRecord:
    """``parse_record`` of a task's key (``t:<id>``): its checks make it a TaskRecord."""
    return cast(TaskRecord, parse_record(text, key, store))


def summary(row: Sequence[Any]) -> TaskRecord:
    """A ``listing()`` row as the record fields it holds (a partial record). A row whose status
    or progress is not what nbtasks writes is summarised as damaged (status ``DAMAGED``,
    ``damaged``: why), so that one bad record does not stop a listing (its name and times have
    their types already: ``LISTING_SQL``)."""
    key, status, name, enqueued, started, finished, progress = row
    try:
        progress = None if progress is None else json.loads(progress)
    except (ValueError, TypeError):
        progress = MISSING
    if status not in STATUS or not (progress is None or _progress_ok(progress)):
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


# The C encoder behind json.dumps, made once: ``JSONEncoder.encode`` builds a new one (and a
# closure, and a dict for cycle checks) per call. Records hold no cycles: every user value in
# one went through check_json first. allow_nan=False: NaN and Infinity raise ValueError.
_c_encoder: Final = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, None, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, False
)


def _strict_json(value: Mapping[str, Any] | list[Any]) -> str:
    return "".join(_c_encoder(value, 0))


def record_text(rec: TaskRecord) -> str:
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


def record_row(task_id: str, rec: TaskRecord, now: float) -> tuple[Any, ...]:
    """The values ``writer.upsert`` writes for one record: diskcache's columns, then the
    listing's."""
    progress: str | None = None
    value = rec.get("progress")
    if value is not None:
        try:
            progress = _strict_json(value)
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


def ending(status: TaskStatus, reason: str, now: float) -> dict[str, Any]:
    """The fields of a task that ends without an outcome of its own (CANCELLED, INTERRUPTED),
    besides its status: ``reason`` says why."""
    return {"state": status.value, "finished_at": now, "reason": reason}


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

    def __init__(self, rec: TaskRecord, args: Any = MISSING, kwargs: Any = MISSING) -> None:
        self.id: str = rec["id"]
        self.rec = rec
        self.args = args
        self.kwargs = kwargs
        self.value: Any = MISSING
        self._done: threading.Event | None = None
        self.callbacks: list[Callable[[Live], None]] = []

    @property
    def finished(self) -> bool:
        return self.rec["status"] in FINISHED

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

    def notify_finished(self) -> None:
        """Wake the waiters and run the callbacks: the task has just ended."""
        ev = self._done
        if ev is not None:
            ev.set()
        for cb in self.callbacks:
            cb(self)


_event_lock = threading.Lock()
