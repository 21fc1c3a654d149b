"""``Context``: what a running task sees, and ``current()``.

``progress()`` is on the hot path: it only sets three attributes and checks one flag (DESIGN
principle 7). The runtime's supervisor samples what changed (``snapshot``: progress, output)
every 0.1 s of its clock, so writes stay at <= 10 per second per task, and the last value is
always written when the attempt ends. The same supervisor enforces time limits.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TextIO, TypeVar

from ._codec import Signer
from ._errors import Retry, SoftTimeLimitExceeded, TaskCancelled, TaskTimeout
from ._model import (
    CURRENT,
    Metadata,
    Progress,
    Request,
    RetryCall,
    check_id,
    check_json,
    check_metadata_key,
    check_text,
)
from ._rich import install_display_capture, patch_on_import

if TYPE_CHECKING:
    import asyncio

    from ._attempt import Attempt

T = TypeVar("T")

_current = CURRENT  # the ContextVar behind current(); it lives with the data model

OUTPUT_LIMIT: Final = 64 * 1024  # characters of output kept per task (the tail)
DISPLAY_LIMIT: Final = 50  # displayed bundles kept per task (the newest)
DISPLAY_BYTES: Final = 4 * 1024 * 1024  # characters of their data kept in all (the newest)
_NUMBER: Final = frozenset({int, float})


def current() -> Context | None:
    """The running task's Context anywhere below the task (same thread or coroutine), else None."""
    return _current.get()


_SIGNER: list[Signer] = []  # the signer of displayed bundles, made on a task's first display


def _signer() -> Signer:
    """The HMAC signer of this user's key (the one every store of this process uses)."""
    if not _SIGNER:
        _SIGNER.append(Signer())
    return _SIGNER[0]


class Context:
    """The running attempt of a task: its Request, progress, metadata, state, cancellation.

    Attribute access falls through to the Request, so ``ctx.id``, ``ctx.retries`` and
    ``ctx.meta`` work as Celery's ``Task.request`` does.
    """

    def __init__(self, attempt: Attempt) -> None:
        self._attempt: Attempt | None = attempt  # None once the attempt is over
        self.request: Request = attempt.request
        self._cur: float | None = None
        self._total: float | None = None
        self._msg: str | None = None
        self.stop_error: BaseException | None = None
        self.soft_fired = False
        self._out: list[str] = []
        self._out_len = 0
        self._out_total = 0
        self._flushed: tuple[Any, ...] = (None, None, None, 0, 0, ())
        # displayed bundles (SPEC §4 rich output): kept newest first out, bounded; a change
        # bumps _disp_version, which the supervisor's sample compares, as it does output_total
        self._disp: list[dict[str, Any]] = []
        self._disp_sizes: list[int] = []
        self._disp_sigs: list[str] = []  # each kept bundle's HMAC (Signer.bundle_digest)
        self._disp_bytes = 0
        self._disp_total = 0  # bundles displayed in all (the kept ones are the last of them)
        self._disp_dropped = 0  # left out by the bound
        self._disp_version = 0
        self._disp_clear_pending = False  # clear_output(wait=True): clear at the next display
        self._disp_lock = threading.Lock()
        self._rate_base: tuple[float, float] | None = None
        self.thread_id: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._bars: list[Any] = []  # the task's open tqdm bars, outermost (first made) first
        # the open inner bars, as the record's ``bars`` field: (desc, n, total), outermost first
        self._inner: tuple[tuple[str, float, float | None], ...] = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.request, name)

    def __repr__(self) -> str:
        return f"<Context {self.request.task_name}[{self.request.id}] attempt {self.retries + 1}>"

    @property
    def id(self) -> str:
        return self.request.id or ""

    @property
    def meta(self) -> Metadata:
        return self.request.metadata

    @meta.setter
    def meta(self, value: dict[str, Any]) -> None:
        self.request.meta = value

    @property
    def metadata(self) -> Metadata:
        return self.request.metadata

    # ------------------------------------------------------------------ progress (hot path)

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Report progress. Costs a few attribute stores; raises TaskCancelled once cancelled."""
        if self.stop_error is not None:
            self._raise_stop()
        # Every argument is checked before anything is set: a refused call leaves no trace.
        # An int or a float costs one set lookup, anything else takes the slow path; a str
        # message one isascii() call (a flag of the str: O(1)), the full check only if it is
        # not ASCII. The message block is written twice so that no call makes one test more
        # than before these checks: callgrind counts the same instructions per progress(i, N)
        # call as without them, and ~130 more (~5%) per call that passes a message.
        if current.__class__ not in _NUMBER:
            current = _number(current, "current")
        if total is not None:
            if total.__class__ not in _NUMBER:
                total = _number(total, "total")
            if message is not None:
                if message.__class__ is not str or not message.isascii():
                    _check_message(message)
                self._msg = message
            self._total = total
        elif message is not None:
            if message.__class__ is not str or not message.isascii():
                _check_message(message)
            self._msg = message
        self._cur = current

    def track(
        self, iterable: Iterable[T], total: float | None = None, message: str | None = None
    ) -> Iterator[T]:
        """Iterate, reporting progress after each item (total: ``len(iterable)`` if it has one).

        The arguments are checked here, at the call, not at the first item (a generator's body
        would only run then)."""
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        elif total is not None and total.__class__ not in _NUMBER:
            total = _number(total, "total", "track")
        if message is not None:
            _check_message(message, "track")
        return self._track(iter(iterable), total, message)

    def _track(self, items: Iterator[T], total: float | None, message: str | None) -> Iterator[T]:
        self.progress(0, total, message)
        progress = self.progress
        for i, item in enumerate(items, 1):
            yield item
            progress(i)

    # ------------------------------------------------------------------ cancellation

    @property
    def cancelled(self) -> bool:
        return isinstance(self.stop_error, TaskCancelled)

    def check_cancelled(self) -> None:
        """Raise TaskCancelled (or TaskTimeout, SoftTimeLimitExceeded) if asked to stop."""
        if self.stop_error is not None:
            self._raise_stop()

    def _raise_stop(self) -> None:
        stop = self.stop_error
        if isinstance(stop, SoftTimeLimitExceeded):
            self.stop_error = None  # raised once; the task may catch it and clean up
        assert stop is not None
        raise stop

    def request_stop(self, exc: BaseException) -> None:
        if self.stop_error is None or isinstance(self.stop_error, SoftTimeLimitExceeded):
            self.stop_error = exc

    # ------------------------------------------------------------------ metadata and state

    def set_metadata(self, **values: Any) -> None:
        """Merge keys into the stored metadata and commit them now (Mognet)."""
        values = _checked_metadata(values, "set_metadata")
        self._running("set_metadata").merge_metadata(values, flush=True)

    async def aset_metadata(self, **values: Any) -> None:
        """``set_metadata`` without blocking the event loop."""
        values = _checked_metadata(values, "aset_metadata")
        import asyncio  # here: a worker process imports this module without asyncio (~20 ms)

        await asyncio.to_thread(self._running("aset_metadata").merge_metadata, values, True)

    def update_state(
        self, state: str | None = None, meta: Any = None, *, task_id: str | None = None
    ) -> None:
        """Celery's update_state: sets ``TaskResult.state`` and ``.result`` while running (meta
        is the current result, not the metadata); ``request.meta`` keys are saved too.

        ``task_id``: another running task is updated instead, wherever it runs: at once if it
        runs in this process, else by its owner within 0.2 s (the process that runs a task
        writes its record). An unknown id raises UnknownTaskId; a task that is not running
        (queued, or finished), ValueError."""
        if state is not None:
            if not isinstance(state, str):
                raise TypeError(f"update_state(state={state!r}) must be a str")
            check_text(state, "state", "update_state")
        check_json(meta, "update_state(meta=...)")
        attempt = self._running("update_state")
        if task_id is not None:
            check_id(task_id, "task_id", "update_state")
            if task_id != self.request.id:
                attempt.update_other_state(task_id, state, _json_copy(meta))
                return
        attempt.update_state(state, _json_copy(meta))

    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        *,
        eta: datetime | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Retry:
        """Ask for another attempt (Celery): raises ``Retry``; write ``raise ctx.retry(...)``.

        It runs after ``countdown`` seconds or at ``eta`` (an aware datetime; not both), else
        after the task's backoff; with ``args`` and/or ``kwargs`` in place of the current
        arguments (checked against the task's signature). ``max_retries`` overrides the
        task's ``retries``; past it, ``exc`` (else MaxRetriesExceededError) fails the task.
        Any other argument (Celery's ``throw``, ``queue`` ...) is refused: TypeError."""
        if options:
            raise TypeError(unsupported_retry_options(options))
        attempt = self._running("retry")
        raise attempt.make_retry(RetryCall(exc, countdown, eta, max_retries, args, kwargs))

    def _running(self, call: str) -> Attempt:
        attempt = self._attempt
        if attempt is None:
            raise RuntimeError(
                f"{call}() was called on the Context of task {self.request.task_name}"
                f"[{self.request.id}] after that attempt ended; call it while the task runs"
            )
        return attempt

    # ------------------------------------------------------------------ output

    def write_output(self, text: str, total: int | None = None) -> None:
        """Add text to the task's output (what it printed or logged, or a worker's pipe).
        ``total``: the count of everything written so far, where a process elsewhere kept it
        (its tail may have skipped some)."""
        self._out.append(text)
        n = len(text)
        self._out_len += n
        self._out_total = self._out_total + n if total is None else total
        if self._out_len > 2 * OUTPUT_LIMIT:
            tail = "".join(self._out)[-OUTPUT_LIMIT:]
            self._out = [tail]
            self._out_len = len(tail)

    def add_display(self, bundle: dict[str, Any]) -> None:
        """Keep a bundle the task displayed (``_rich`` made it, in the task's thread). The
        newest ``DISPLAY_LIMIT`` are kept, within ``DISPLAY_BYTES``; the others are counted."""
        size = sum(len(v) if isinstance(v, str) else 64 for v in bundle.values())
        sig = _signer().bundle_digest(bundle)  # here, in the task's thread or process
        with self._disp_lock:
            if self._disp_clear_pending:
                self._clear_display()
            self._disp.append(bundle)
            self._disp_sigs.append(sig)
            self._disp_sizes.append(size)
            self._disp_bytes += size
            self._disp_total += 1
            while len(self._disp) > 1 and (
                len(self._disp) > DISPLAY_LIMIT or self._disp_bytes > DISPLAY_BYTES
            ):
                del self._disp[0]
                del self._disp_sigs[0]
                self._disp_bytes -= self._disp_sizes.pop(0)
                self._disp_dropped += 1
            self._disp_version += 1

    def clear_display(self, wait: bool = False) -> None:
        """``clear_output()`` in the task: what it displayed so far is no longer shown (with
        ``wait``, at its next display, so that a live plot never flickers empty)."""
        with self._disp_lock:
            if wait:
                self._disp_clear_pending = True
            else:
                self._clear_display()
                self._disp_version += 1

    def _clear_display(self) -> None:
        self._disp_clear_pending = False
        self._disp = []
        self._disp_sigs = []
        self._disp_sizes = []
        self._disp_bytes = 0

    def display_fields(self) -> dict[str, Any]:
        """The displayed bundles as record fields: ``displayed`` (a new list: the record's
        own), their signatures ``displayed_sigs``, ``displayed_total`` and
        ``displayed_dropped``."""
        with self._disp_lock:
            return {
                "displayed": list(self._disp),
                "displayed_sigs": list(self._disp_sigs),
                "displayed_total": self._disp_total,
                "displayed_dropped": self._disp_dropped,
            }

    @property
    def reported(self) -> tuple[float | None, float | None, str | None]:
        """The progress reported so far: (current, total, message)."""
        return self._cur, self._total, self._msg

    def set_reported(self, current: float | None, total: float | None, message: str | None) -> None:
        """Progress as reported by the task's process elsewhere (a Dask worker)."""
        self._cur, self._total, self._msg = current, total, message

    def detach(self) -> None:
        """The attempt is over: drop the reference to it (no cycle context <-> attempt)."""
        self._attempt = None

    def output(self) -> str:
        text = "".join(self._out)
        return text[-OUTPUT_LIMIT:]

    # ------------------------------------------------------------------ the supervisor's sample

    def snapshot(self, now: float) -> dict[str, Any] | None:
        """What changed since the last flush, as record fields (None if nothing did)."""
        cur, total, msg, out_total = self._cur, self._total, self._msg, self._out_total
        version, inner = self._disp_version, self._inner
        if (cur, total, msg, out_total, version, inner) == self._flushed:
            return None
        fields: dict[str, Any] = {}
        if cur is not None and (cur, total, msg) != self._flushed[:3]:
            stored = _storable(cur)
            value = float(stored)
            base = self._rate_base
            if not math.isfinite(value):  # no rate from it, and no base: a later value has one
                rate = None
            elif base is None:
                self._rate_base = (now, value)
                rate = None
            else:
                dt = now - base[0]
                rate = (value - base[1]) / dt if dt > 0 else None
                if rate is not None and not math.isfinite(rate):  # from -1e308 to 1e308
                    rate = None  # a non-finite rate would cost the record its progress
            fields["progress"] = Progress(stored, _storable(total), msg, rate).to_json()
        if out_total != self._flushed[3]:
            fields["output"] = self.output()
            fields["output_total"] = out_total
        if version != self._flushed[4]:
            fields.update(self.display_fields())
        if inner != self._flushed[5]:
            fields["bars"] = [list(b) for b in inner]
        self._flushed = (cur, total, msg, out_total, version, inner)
        return fields


def unsupported_retry_options(options: Mapping[str, Any]) -> str:
    """The TypeError message for ``retry()`` arguments nbtasks does not support."""
    given = ", ".join(f"{k}={v!r}" for k, v in options.items())
    hint = (
        " (throw=False, scheduling without raising, is not supported: write `raise ctx.retry(...)`)"
        if "throw" in options
        else ""
    )
    return (
        f"retry() got {given}, which nbtasks does not support{hint}; retry() takes exc, "
        "countdown, eta, max_retries, args and kwargs: leave the others out"
    )


def _number(value: Any, name: str, call: str = "progress") -> float:
    """The slow path of progress()'s numbers: any real number but a bool, as a float."""
    import numbers

    if not isinstance(value, bool) and isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:  # past float's range (an int subclass, a Fraction): infinite,
            return -math.inf if value < 0 else math.inf  # stored as no progress, as inf is
    raise TypeError(f"{call}({name}={value!r}) must be a number (int or float)")


def _check_message(message: Any, call: str = "progress") -> None:
    if message.__class__ is not str:
        raise TypeError(f"{call}(message={message!r}) must be a str")
    check_text(message, "message", call)


def _storable(value: Any) -> Any:
    """A progress number as the record holds it: an int past float's range (progress(10**400)
    takes the int fast path unchecked) becomes an infinite float, which the store keeps as no
    progress, as it does inf and NaN; readers never divide or format such an int."""
    if value.__class__ is int and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
        return math.inf if value > 0 else -math.inf
    return value


_FLOAT_MAX: Final = sys.float_info.max


def _checked_metadata(values: dict[str, Any], call: str) -> dict[str, Any]:
    """set_metadata's keys and values, all checked before any is stored, as a JSON copy: it
    reads as it will from the store (a tuple is a list at once), and changing a value after the
    call (making it contain itself, say) cannot break the record that holds it."""
    for key, value in values.items():
        check_metadata_key(key, f"{call}()")
        check_json(value, f"{call}({key}=...)")
    copy: dict[str, Any] = _json_copy(values)
    return copy


def _json_copy(value: Any) -> Any:
    """A copy of a value check_json accepted, as JSON reads it back."""
    if value is None or value.__class__ in _SCALAR:
        return value
    return json.loads(json.dumps(value))


_SCALAR: Final = frozenset({str, int, float, bool})


# --------------------------------------------------------------------------- output capture


class _TaskStream:
    """Stands in for sys.stdout/sys.stderr: text written by a running task's own thread (or
    coroutine) goes to that task's output; everything else goes where it went before."""

    def __init__(self, wrapped: TextIO) -> None:
        self._wrapped = wrapped

    def write(self, text: str) -> int:
        ctx = _current.get()
        if ctx is not None:
            ctx.write_output(text)
            return len(text)
        return self._wrapped.write(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._wrapped.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


_install_lock = threading.Lock()


def install_capture() -> None:
    """Put the stream proxies in place (again, if something replaced them) and route
    StreamHandlers that write to the standard streams (basicConfig's included); route the
    displays of tasks to them (``_rich``, once)."""
    install_display_capture()
    if isinstance(sys.stdout, _TaskStream) and isinstance(sys.stderr, _TaskStream):
        return
    with _install_lock:
        if not isinstance(sys.stdout, _TaskStream):
            sys.stdout = _TaskStream(sys.stdout)
        if not isinstance(sys.stderr, _TaskStream):
            sys.stderr = _TaskStream(sys.stderr)
        _patch_logging()


_logging_patched = False


def _patch_logging() -> None:
    """A handler configured before the task holds the old stream object, bypassing the
    proxies (notes/store-findings.md): capture at the handler, for standard streams only."""
    global _logging_patched
    if _logging_patched:
        return
    _logging_patched = True
    original_emit = logging.StreamHandler.emit

    def emit(self: logging.StreamHandler[Any], record: logging.LogRecord) -> None:
        ctx = _current.get()
        if ctx is not None and _is_std_stream(self.stream):
            try:
                ctx.write_output(self.format(record) + self.terminator)
            except Exception:
                self.handleError(record)
            return
        original_emit(self, record)

    logging.StreamHandler.emit = emit  # type: ignore[method-assign,assignment]


def _is_std_stream(stream: Any) -> bool:
    if isinstance(stream, _TaskStream):
        return True
    std = (sys.__stdout__, sys.__stderr__)
    for s in (sys.stdout, sys.stderr):
        if stream is s or stream is getattr(s, "_wrapped", None):
            return True
    return stream in std


# --------------------------------------------------------------------------- tqdm bridge

_tqdm_patched = False


def install_tqdm_bridge() -> None:
    """Make tqdm bars drive the running task's progress: now if tqdm is loaded, else as soon
    as it is imported (a task may import it itself)."""
    if not _tqdm_patched:
        patch_on_import("tqdm.std", _patch_tqdm)


def _patch_tqdm(std: Any) -> None:
    global _tqdm_patched
    if _tqdm_patched:
        return
    _tqdm_patched = True
    cls = std.tqdm
    original_init = cls.__init__
    original_update = cls.update
    original_close = cls.close

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        ctx = _current.get()
        if ctx is not None and not getattr(self, "disable", False):
            ctx._bars.append(self)  # made in this order: an inner loop's bar comes later

    def update(self: Any, n: float | None = 1) -> Any:
        out = original_update(self, n)
        ctx = _current.get()
        if ctx is not None:
            _tqdm_progress(ctx, self)
        return out

    def close(self: Any) -> Any:
        ctx = _current.get()
        if ctx is not None and not getattr(self, "disable", False):
            _tqdm_progress(ctx, self)
            bars = ctx._bars
            if self in bars:
                bars.remove(self)
                if bars:
                    _tqdm_progress(ctx, bars[0])  # the message without the closed inner bar
                else:
                    ctx._inner = ()
        return original_close(self)

    cls.__init__ = init
    cls.update = update
    cls.close = close


def _tqdm_progress(ctx: Context, bar: Any) -> None:
    """A tqdm bar moved (tqdm calls ``update`` at its display rate, not per item).

    Nested bars in one task (epochs, then batches) used to overwrite each other's progress.
    The outermost open bar drives the task's progress; the inner ones are named after it in
    the message ("epochs · batch 30/100"), which the widget, ``%tasks`` and the static HTML
    all show, and kept as the record's ``bars`` (``TaskResult.inner_bars``), which the widget
    draws as sub-bars under the task's own. A bar made before nbtasks saw it (outside the
    task) drives it as before."""
    bars = ctx._bars
    outer = bars[0] if bar in bars else bar
    ctx._cur, ctx._total = outer.n, outer.total
    ctx._inner = tuple(_bar_row(b) for b in bars[1:]) if bar in bars else ()
    words = [_bar_text(b, b is outer) for b in (bars if bar in bars else [bar])]
    message = " · ".join(w for w in words if w)
    if message:
        ctx._msg = message


def _bar_row(bar: Any) -> tuple[str, float, float | None]:
    """An inner bar as the record keeps it: (its description, n, total or None)."""
    n, total = _finite(bar.n), _finite(bar.total)
    return (str(bar.desc or "").rstrip(": ")[:200], n or 0.0, total)


def _finite(value: Any) -> float | None:
    """A bar's count as JSON can hold it (a record holds no NaN or infinity), else None."""
    try:
        number = float(_storable(value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _bar_text(bar: Any, outer: bool) -> str:
    desc = str(bar.desc or "").rstrip(": ")
    if outer:
        return desc
    count = f"{bar.n:g}" if bar.total is None else f"{bar.n:g}/{bar.total:g}"
    return f"{desc} {count}" if desc else count


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    """Best effort: raise ``exc_type`` asynchronously in a thread (soft time limits)."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )


def clear_async_exc(thread_id: int) -> None:
    """Withdraw an asynchronous exception posted to a thread that has not fired yet."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


__all__ = ["Context", "SoftTimeLimitExceeded", "TaskCancelled", "TaskTimeout", "current"]
