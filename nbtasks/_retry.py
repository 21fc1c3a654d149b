"""What ``ctx.retry()`` asks for (SPEC 4), as Celery's ``Task.retry`` means it.

``build_retry`` checks every argument first, so that a bad one is reported on the last retry
too (where it would otherwise never be used), then the retry count: it gives the ``Retry``
that schedules the next attempt, or past the limit the exception that fails the task.
``retry_delay`` is when that next attempt runs. Where the outcome is recorded, and how the
next attempt's arguments reach it, is the attempt's business (``_attempt``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from ._codec import dumps, unpicklable_argument
from ._errors import MaxRetriesExceededError, Retry
from ._model import Options, RetryCall, to_timestamp

if TYPE_CHECKING:
    from ._attempt import Job

_MAX_SECONDS: Final = 100 * 365.25 * 86400  # as apply_async's countdown


def build_retry(job: Job, call: RetryCall) -> BaseException:
    """What ``ctx.retry()`` raises: a ``Retry``, or past the retry limit (``max_retries``,
    else the task's ``retries``) ``exc`` (else MaxRetriesExceededError), which then fails
    the task."""
    exc, countdown, eta, max_retries, args, kwargs = call
    if exc is not None and not isinstance(exc, BaseException):
        raise TypeError(
            f"retry(exc={exc!r}) must be an exception instance (what fails the task once no "
            "retry is left), or None"
        )
    delay, at = _retry_time(countdown, eta)
    new_args, new_kwargs = _arguments(job, args, kwargs)
    if max_retries is None:
        limit = job.options.retries
    elif isinstance(max_retries, bool) or not isinstance(max_retries, int):
        raise TypeError(f"retry(max_retries={max_retries!r}) must be an int >= 0, or None")
    elif max_retries < 0:
        raise ValueError(f"retry(max_retries={max_retries!r}) must be >= 0")
    else:
        limit = max_retries
    request = job.request
    if request.retries >= limit:
        if exc is not None:
            return exc
        return MaxRetriesExceededError(
            f"task {request.task_name}[{request.id}] asked for a retry after "
            f"{request.retries} retries (max_retries={limit})"
        )
    when = f"at {eta.isoformat()}" if eta is not None else f"in {delay or 0}s"
    return Retry(
        f"retry {when}",
        exc=exc,
        countdown=delay,
        eta=at,
        retry_args=new_args,
        retry_kwargs=new_kwargs,
    )


def retry_delay(error: BaseException, options: Options, retries: int, now: float) -> float:
    """Seconds until the next attempt after ``error`` (``retries``: those done so far;
    ``now``: the clock's wall time): a ``Retry``'s eta or countdown, else the backoff."""
    if isinstance(error, Retry):
        if error.eta is not None:
            return max(0.0, error.eta - now)
        if error.countdown is not None:
            return error.countdown
    return options.retry_backoff * (2**retries) if options.retry_backoff else 0.0


def _retry_time(countdown: float | None, eta: datetime | None) -> tuple[float | None, float | None]:
    """``retry()``'s countdown (seconds) and eta (an aware datetime, as epoch seconds),
    checked as ``apply_async`` checks them."""
    if countdown is not None and eta is not None:
        raise ValueError(
            f"retry(countdown={countdown!r}, eta={eta!r}): give countdown or eta, not both"
        )
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, int | float):
            raise TypeError(f"retry(countdown={countdown!r}) must be a number of seconds")
        if not 0 <= countdown <= _MAX_SECONDS:  # also NaN
            raise ValueError(
                f"retry(countdown={countdown!r}) must be a number of seconds >= 0 and at most "
                "100 years"
            )
        return float(countdown), None
    if eta is not None:
        if not isinstance(eta, datetime):
            raise TypeError(f"retry(eta={eta!r}) must be a timezone-aware datetime")
        return None, to_timestamp(eta, "retry(eta=...): eta")
    return None, None


def _arguments(
    job: Job, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> tuple[tuple[Any, ...] | None, dict[str, Any] | None]:
    """The next attempt's arguments (both None: unchanged). ``args`` replaces the positional
    arguments and ``kwargs`` the keyword ones, each only when given (Celery); they must fit
    the task's signature, and pickle when the next attempt may run in another process."""
    if args is None and kwargs is None:
        return None, None
    name = f"{job.request.task_name}[{job.id}]"
    if job.chunk:
        raise ValueError(
            f"retry(args=..., kwargs=...) cannot replace the arguments of task {name}: it is "
            "a chunks() member, which calls the task once per item of its chunk; retry "
            "without args and kwargs"
        )
    if args is not None and not isinstance(args, tuple | list):
        raise TypeError(
            f"retry(args={args!r}) must be a tuple or list of the next attempt's positional "
            "arguments"
        )
    if kwargs is not None and not (
        isinstance(kwargs, Mapping) and all(isinstance(k, str) for k in kwargs)
    ):
        raise TypeError(
            f"retry(kwargs={kwargs!r}) must be a dict of the next attempt's keyword "
            "arguments, with str keys"
        )
    new_args = job.args if args is None else tuple(args)
    new_kwargs = job.kwargs if kwargs is None else dict(kwargs)
    try:
        job.task.check_args(new_args, new_kwargs)
    except TypeError as exc:
        raise TypeError(f"retry(args=..., kwargs=...): {exc}") from None
    executor = job.options.executor
    if executor in ("process", "dask"):
        try:
            dumps((new_args, new_kwargs))
        except TypeError as exc:
            raise TypeError(
                _unpicklable(job.task, name, new_args, new_kwargs, executor, exc)
            ) from None
    return new_args, new_kwargs


def _unpicklable(
    task: Any,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    executor: str,
    exc: TypeError,
) -> str:
    """A TypeError message naming the retry argument that cannot be pickled, and its type."""
    found = unpicklable_argument(task, args, kwargs)
    what = (
        f"argument {found[0]!r} is a {found[1]}, which cannot be pickled ({found[2]})"
        if found is not None
        else f"an argument {exc}"
    )
    return (
        f"retry(args=..., kwargs=...) of task {name}: {what}; a {executor} task's next "
        "attempt may run in another process, so its arguments must pickle: pass a path or a "
        "picklable value instead"
    )
