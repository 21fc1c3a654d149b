"""``Task`` and a submit's options resolved (the canvas is ``_canvas``).

Everything here validates and describes; submitting is the job of ``task.app``, through the
``_ports.Submitter`` seam (the App, or the worker-side app of a process task).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final

from ._canvas import Signature, signatures
from ._codeid import CodeIdentity
from ._errors import NbtasksError
from ._model import (
    CURRENT,
    Metadata,
    Options,
    Request,
    TaskStatus,
    as_metadata,
    check_text,
    to_timestamp,
)
from ._options import (
    CALL_OPTIONS,
    INHERITED,
    check_name,
    check_task_options,
    integer,
    names,
    seconds,
    when,
)

if TYPE_CHECKING:
    from ._context import Context
    from ._ports import AppPort
    from ._result import GroupResult, TaskResult


# --------------------------------------------------------------------------- Task


_DEFAULTS: Final = Options()


class Task:
    """A task: a function (or a ``run`` method) plus its options. Celery's Task base class.

    Subclass it for class-based tasks (``run`` and the four hooks), or pass it as ``base=``.
    Calling the task object runs the plain function; nothing is persisted.
    """

    name: ClassVar[str | None] = None
    bind: bool = False
    # Option defaults: those of _model.Options, the one place they are written.
    executor: str = _DEFAULTS.executor
    retries: int = _DEFAULTS.retries
    retry_backoff: float = _DEFAULTS.retry_backoff
    retry_on: tuple[type[BaseException], ...] = _DEFAULTS.retry_on
    timeout: float | None = _DEFAULTS.timeout
    soft_timeout: float | None = _DEFAULTS.soft_timeout
    priority: int = _DEFAULTS.priority
    cache: bool = _DEFAULTS.cache
    cache_ttl: float | None = _DEFAULTS.cache_ttl
    cache_ignore: tuple[str, ...] = _DEFAULTS.cache_ignore
    cache_mmap: bool = _DEFAULTS.cache_mmap
    detach: bool = _DEFAULTS.detach
    expires: float | datetime | None = _DEFAULTS.expires
    shadow_name: str | None = None

    app: AppPort
    __wrapped__: Callable[..., Any]  # the decorated function, as functools.wraps sets it
    __name__: str
    _fn: Callable[..., Any] | None = None
    _code_identity: CodeIdentity | None = None  # made by the first ``code_hash``
    _default_options: Options | None = None  # delay()'s options, resolved on first use

    # ------------------------------------------------------------------ set-up

    def attach(self, app: AppPort, fn: Callable[..., Any] | None, options: dict[str, Any]) -> None:
        """Make this the task of ``app`` running ``fn`` (None: ``run``) with ``options``
        (validated): what ``App.task`` and ``App.register`` do."""
        if "name" in options:  # again: app.register() takes a class's `name` unchecked
            check_name(options["name"])
        self.app = app
        self._fn = fn
        self._default_options = None
        declared = type(self).max_retries  # a class-based task's `max_retries = 3`
        if not isinstance(declared, property) and declared is not None and "retries" not in options:
            self.retries = check_task_options({"retries": declared})["retries"]
        for key, value in options.items():
            setattr(self, key, value)
        if self.detach and self.executor != "process":
            raise ValueError("detach=True needs executor='process' (a detached task is a process)")
        target = fn if fn is not None else self.run
        self._target = target
        self._is_async = inspect.iscoroutinefunction(target)
        sig = inspect.signature(target)
        params = list(sig.parameters.values())
        self._ctx_param = bool(params) and _is_context_annotation(params[0].annotation, target)
        drop = 1 if (fn is not None and self.bind) or self._ctx_param else 0
        if drop and not params:
            raise TypeError(
                f"task {self.name}: bind=True needs a first parameter for the task (self)"
            )
        self._signature = _caller_signature(sig, drop)
        self._fast_check = _fast_check(params[drop:])
        self.cache_ignore = self.ignored_names(self.cache_ignore)
        self._code_identity = None
        self._hooks = frozenset(
            name
            for name in ("on_success", "on_failure", "on_retry", "after_return")
            if getattr(type(self), name) is not getattr(Task, name)
        )

    @property
    def max_retries(self) -> int:
        """Celery's name for the ``retries`` option (a subclass may set it as a class attribute)."""
        return self.retries

    def adopt(self, app: AppPort) -> None:
        """Give a Task unpickled without its App (``__reduce__`` leaves it behind) to ``app``,
        keeping its options: how a worker's submit becomes the owning App's."""
        self.attach(app, self._fn, {"retries": self.retries})

    @property
    def code_hash(self) -> str:
        """The identity of this task's code, in its cache key (``_codeid``): the function's
        source and what it reads (a class-based task: its class, ``run`` and what they read).
        Computed once, then only checked on each submit: redefining a helper recomputes it."""
        identity = self._code_identity
        if identity is None:
            target = self._fn if self._fn is not None else type(self)
            identity = self._code_identity = CodeIdentity(target)
        return identity.current()

    @property
    def function(self) -> Callable[..., Any] | None:
        """The decorated function (None for a class-based task, whose code is ``run``)."""
        return self._fn

    @property
    def is_async(self) -> bool:
        """True for an ``async def`` task."""
        return self._is_async

    @property
    def call_signature(self) -> inspect.Signature:
        """The signature callers pass arguments to (without ``self`` or the Context)."""
        return self._signature

    @property
    def hooks(self) -> frozenset[str]:
        """The names of the hooks this task overrides (the base class's do nothing)."""
        return self._hooks

    def invoke(self, ctx: Context | None, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Call the task's code for one attempt, giving it ``ctx`` as it asked for it."""
        target = self._target
        if self._ctx_param:
            return target(ctx, *args, **kwargs)
        if self._fn is not None and self.bind:
            return target(self, *args, **kwargs)
        return target(*args, **kwargs)

    def check_args(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """TypeError naming the task and its signature unless the arguments fit it."""
        fast = self._fast_check
        if fast is not None:  # plain parameters: a few comparisons instead of Signature.bind
            names, required = fast
            n = len(args)
            if (
                n <= len(names)
                and (not kwargs or all(k in names[n:] for k in kwargs))
                and (n >= required or all(name in kwargs for name in names[n:required]))
            ):
                return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"arguments for task {self.name} do not match {self.name}{self._signature}: {exc}"
            ) from None

    # ------------------------------------------------------------------ caching (SPEC 6)

    def ignored_names(self, value: Any) -> tuple[str, ...]:
        """``cache_ignore`` checked against this task's signature: a ValueError names an
        argument that is not a parameter (a typo would silently key on everything)."""
        ignored = names(value, "cache_ignore")
        params = self._signature.parameters
        unknown = [name for name in ignored if name not in params]
        if unknown:
            raise ValueError(
                f"cache_ignore names {', '.join(map(repr, unknown))}, which task {self.name} "
                f"does not take; its parameters are {', '.join(params) or 'none'}"
            )
        return ignored

    def cache_arguments(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], ignore: tuple[str, ...]
    ) -> tuple[Sequence[Any], Mapping[str, Any]]:
        """What a call's cache key hashes: its arguments as given, or, with names to
        ``ignore``, the call bound to the signature by name (positional arguments and defaults
        included, so ``f(1)`` and ``f(x=1)`` are one key) with those names left out."""
        if not ignore:
            return args, kwargs
        self.check_args(args, kwargs)  # the TypeError that names the task and its signature
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        params = self._signature.parameters
        named = {
            name: list(value) if params[name].kind is inspect.Parameter.VAR_POSITIONAL else value
            for name, value in bound.arguments.items()
            if name not in ignore
        }
        return (), named

    def cache_clear(self) -> int:
        """Forget this task's reusable results, for every version of its code: they stay in
        the store as results (readable by id) but no submit reuses them again; a run of it in
        flight in this process is not joined by later submits either. Returns how many cache
        entries were forgotten (one transaction)."""
        clear = getattr(self.app, "cache_clear", None)  # the App's; not a worker process's
        if clear is None:
            raise NbtasksError(
                f"task {self.name}: cache_clear() runs where its App is (the notebook or "
                "script), not inside a process task"
            )
        return int(clear(self))

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The body of a class-based task."""
        raise NotImplementedError(f"{type(self).__name__} must define run()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the plain function in the calling thread: nothing is persisted."""
        return self.invoke(CURRENT.get(), args, kwargs)

    def __repr__(self) -> str:
        return f"<@task {self.name} of {self.app.name}>"

    def __reduce__(self) -> tuple[Any, ...]:
        """A task pickles without its App (to run in a worker process, or in a closure that
        calls it there): its class, function and options."""
        state = {k: v for k, v in vars(self).items() if k not in _NOT_PICKLED}
        return (_restore_task, (type(self), state))

    # ------------------------------------------------------------------ hooks (Celery)

    def on_success(
        self, retval: Any, task_id: str, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        """Called after the task is recorded SUCCESSFUL."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: list[Any], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        """Called after the task is recorded FAILED (einfo: a TaskError with the traceback)."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: list[Any], kwargs: dict[str, Any], einfo: Any
    ) -> None:
        """Called when a failed attempt is about to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        """Called after every final status (and after on_success / on_failure)."""

    # ------------------------------------------------------------------ the running request

    @property
    def request(self) -> Context:
        """The running attempt's Context (bind=True: ``self.request.id``, ``.meta``, ...)."""
        ctx: Context | None = CURRENT.get()
        if ctx is None:
            raise NbtasksError(f"task {self.name} is not running: request exists only inside it")
        return ctx

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: Any = None
    ) -> None:
        """Celery's ``update_state``; ``task_id``: see ``Context.update_state``."""
        self.request.update_state(state=state, meta=meta, task_id=task_id)

    def retry(self, *args: Any, **options: Any) -> Any:
        """Celery's ``self.retry`` on a bound task: ``Context.retry`` of the running attempt,
        with its arguments ``(exc=None, countdown=None, max_retries=None, *, eta=None,
        args=None, kwargs=None)``; any other is refused with a TypeError naming it."""
        return self.request.retry(*args, **options)

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        self.request.progress(current, total, message)

    def set_metadata(self, **values: Any) -> None:
        self.request.set_metadata(**values)

    # ------------------------------------------------------------------ submitting

    def delay(self, *args: Any, **kwargs: Any) -> TaskResult:
        """Submit; returns the TaskResult once the READY record is committed."""
        return self.app.submit_call(self, args, kwargs, {})

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskResult:
        """Submit with options: task_id, countdown, eta, expires, priority, link, link_error,
        metadata, executor, timeout, retries and every task option."""
        return self.app.submit_call(self, *_args_kwargs(args, kwargs), options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        throw: bool = False,
    ) -> TaskResult:
        """Run now in the calling thread, persisted; returns the finished TaskResult."""
        a, kw = _args_kwargs(args, kwargs)
        options: dict[str, Any] = {"executor": "inline", "metadata": metadata}
        if task_id is not None:
            options["task_id"] = task_id
        result = self.app.submit_call(self, a, kw, options)
        result.refresh()
        if throw and result.status.value == TaskStatus.FAILED:
            result.get()  # Celery's apply(throw=True): raises what the task raised
        return result

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self, args, kwargs, immutable=True)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        immutable = bool(options.pop("immutable", False))
        a, kw = _args_kwargs(args, kwargs)
        return Signature(self, a, kw, options, immutable=immutable)

    def map(self, iterable: Iterable[Any], **options: Any) -> GroupResult:
        """One task per item: ``f(item)``."""
        return self.app.submit_many(self, [((x,), {}) for x in iterable], options, chunk=False)

    def starmap(self, iterable: Iterable[Sequence[Any]], **options: Any) -> GroupResult:
        """One task per item: ``f(*item)``."""
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for item in iterable:
            if not isinstance(item, Sequence) or isinstance(item, str | bytes):
                raise TypeError(f"starmap items must be tuples of arguments, got {item!r}")
            calls.append((tuple(item), {}))
        return self.app.submit_many(self, calls, options, chunk=False)

    def chunks(self, iterable: Iterable[Sequence[Any]], n: int, **options: Any) -> GroupResult:
        """Celery's chunks: one task per chunk of at most ``n`` argument tuples."""
        integer(n, "n", minimum=1)
        items = []
        for item in iterable:
            if not isinstance(item, Sequence) or isinstance(item, str | bytes):
                raise TypeError(f"chunks items must be tuples of arguments, got {item!r}")
            self.check_args(tuple(item), {})
            items.append(list(item))
        parts = [(items[i : i + n],) for i in range(0, len(items), n)]
        return self.app.submit_many(self, [(p, {}) for p in parts], options, chunk=True)

    def create_request(self, *args: Any, **kwargs: Any) -> Request:
        """Mognet: a Request to fill (``req.metadata[...] = ...``) and pass to ``app.submit``."""
        self.check_args(args, kwargs)
        return Request(task_name=self.name or "", args=list(args), kwargs=dict(kwargs))


def _fast_check(params: list[inspect.Parameter]) -> tuple[tuple[str, ...], int] | None:
    """(names, how many are required) when every parameter is plain positional-or-keyword."""
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    required = sum(1 for p in params if p.default is inspect.Parameter.empty)
    return tuple(p.name for p in params), required


#: What a pickled Task leaves behind: its App and what is derived from the function again.
_NOT_PICKLED = frozenset({"app", "_target", "_signature", "_default_options", "_code_identity"})


def _restore_task(cls: type[Task], state: dict[str, Any]) -> Task:
    task = cls.__new__(cls)
    task.__dict__.update(state)
    task._target = task._fn if task._fn is not None else task.run
    # Made again, not pickled: a worker checks retry(args=, kwargs=) against it.
    drop = 1 if (task._fn is not None and task.bind) or task._ctx_param else 0
    task._signature = _caller_signature(inspect.signature(task._target), drop)
    return task


def _caller_signature(sig: inspect.Signature, drop: int) -> inspect.Signature:
    """The signature callers pass arguments to: the first ``drop`` parameters (the task's
    ``self`` or Context) left out."""
    return sig.replace(parameters=list(sig.parameters.values())[drop:])


def _is_context_annotation(annotation: Any, fn: Callable[..., Any]) -> bool:
    if isinstance(annotation, type):  # nbtasks.Context, without importing _context here
        return annotation.__name__ == "Context" and annotation.__module__.startswith("nbtasks")
    if isinstance(annotation, str):
        return annotation in ("Context", "nbtasks.Context", "_context.Context")
    return False


def _args_kwargs(
    args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args is not None and not isinstance(args, list | tuple):
        raise TypeError(f"args must be a list or tuple, got {type(args).__name__}")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a dict, got {type(kwargs).__name__}")
    return tuple(args or ()), dict(kwargs or {})


def resolve_options(
    task: Task, call: Mapping[str, Any], now: float
) -> tuple[Options, dict[str, Any]]:
    """Task defaults overridden by per-call options, validated. Returns (Options, extras) with
    extras holding task_id and metadata."""
    if not call and task.expires is None:
        # delay(): the task's own options, resolved once (a relative `expires` cannot be).
        opts = task._default_options
        if opts is None:
            opts = task._default_options = _resolve(task, {}, now)[0]
        return opts, {"metadata": Metadata(), "task_id": None}
    return _resolve(task, call, now)


def _resolve(task: Task, call: Mapping[str, Any], now: float) -> tuple[Options, dict[str, Any]]:
    unknown = set(call) - CALL_OPTIONS
    if unknown:
        raise TypeError(
            f"apply_async() got unknown option(s) {', '.join(sorted(unknown))}; the options are "
            f"{', '.join(sorted(CALL_OPTIONS))}"
        )
    call = dict(call)
    countdown = call.pop("countdown", None)
    eta = call.pop("eta", None)
    link = signatures(call.pop("link", None), "link")
    link_error = signatures(call.pop("link_error", None), "link_error")
    extras: dict[str, Any] = {"metadata": as_metadata(call.pop("metadata", None))}
    task_id = call.pop("task_id", None)
    if task_id is not None:
        if not isinstance(task_id, str) or not task_id.strip():
            raise TypeError(f"task_id must be a non-empty str, got {task_id!r}")
        check_text(task_id, "task_id")  # a key in the store: UTF-8 only
    extras["task_id"] = task_id
    over = check_task_options(call, "apply_async")
    merged = {key: getattr(task, key) for key in INHERITED}
    expires = over.pop("expires", task.expires)
    over.pop("shadow_name", None)
    merged.update(over)
    if "cache_ignore" in over:
        merged["cache_ignore"] = task.ignored_names(over["cache_ignore"])
    if task._is_async and merged["executor"] == "thread":
        merged["executor"] = "aio"
    if merged["detach"] and merged["executor"] != "process":
        raise ValueError("detach=True needs executor='process' (a detached task is a process)")
    if countdown is not None and eta is not None:
        raise ValueError("give countdown or eta, not both")
    start: float | None = None
    if countdown is not None:
        start = now + seconds(countdown, "countdown")
    elif eta is not None:
        if not isinstance(eta, datetime):
            raise TypeError(f"eta must be a timezone-aware datetime, got {eta!r}")
        start = to_timestamp(eta, "eta")
    opts = Options(
        **merged,
        expires=None if expires is None else when(expires, "expires", now),
        eta=start,
        link=link,
        link_error=link_error,
    )
    return opts, extras
