"""``Signature`` and the canvas (chain, group, chord), with Celery's meaning.

Everything here describes; submitting is the job of ``task.app``, through the
``_ports.Submitter`` seam (the App, or the worker-side app of a process task).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from ._options import CALL_OPTIONS

if TYPE_CHECKING:
    from ._ports import AppPort
    from ._result import GroupResult, TaskResult
    from ._task import Task


def signatures(value: Any, argument: str) -> list[Signature]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else [value]
    for item in items:
        if not isinstance(item, Signature):
            raise TypeError(
                f"{argument} takes a Signature (task.s(...)) or a list of them, got {item!r}"
            )
    return list(items)


class Signature:
    """A task with arguments and options, to run later or compose (Celery's signature)."""

    def __init__(
        self,
        task: Task,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
    ) -> None:
        # Any Task (no import of _task here: it builds Signatures, so this module is below it).
        if not callable(getattr(task, "apply_async", None)) or not hasattr(task, "app"):
            raise TypeError(f"a Signature needs a task, got {task!r}")
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        unknown = set(self.options) - CALL_OPTIONS
        if unknown:
            raise TypeError(f"signature() got unknown option(s) {', '.join(sorted(unknown))}")

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task.name}{'.si' if self.immutable else '.s'}({args})"

    def set(self, **options: Any) -> Signature:
        self.options.update(options)
        return self

    def clone(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Signature:
        """A copy with ``args`` prepended and ``kwargs`` merged (unless immutable)."""
        if self.immutable:
            return Signature(self.task, self.args, self.kwargs, self.options, immutable=True)
        return Signature(
            self.task,
            (*args, *self.args),
            {**self.kwargs, **(kwargs or {})},
            self.options,
        )

    def apply_async(
        self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> TaskResult:
        sig = self.clone(args, kwargs)
        return self.task.app.submit_call(
            self.task, sig.args, sig.kwargs, {**sig.options, **options}
        )

    def delay(self, *args: Any, **kwargs: Any) -> TaskResult:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> chain:
        return chain(self, other)


class group:
    """Signatures run in parallel; ``apply_async()`` returns a GroupResult."""

    def __init__(self, *tasks: Signature | Iterable[Signature]) -> None:
        items: list[Any] = []
        for t in tasks:
            if isinstance(t, Signature):
                items.append(t)
            elif isinstance(t, Iterable):
                items.extend(t)
            else:
                raise TypeError(f"group() takes signatures, got {t!r}")
        for item in items:
            if not isinstance(item, Signature):
                raise TypeError(f"group() takes signatures (task.s(...)), got {item!r}")
        if not items:
            raise ValueError("group() needs at least one signature")
        self.tasks: list[Signature] = items

    def __repr__(self) -> str:
        return f"group({', '.join(map(repr, self.tasks))})"

    def apply_async(self, **options: Any) -> GroupResult:
        # A group alone is submitted as a group: its handle is a GroupResult.
        return cast("GroupResult", self.tasks[0].task.app.submit_canvas([self], options))

    def delay(self) -> GroupResult:
        return self.apply_async()

    def __or__(self, other: Any) -> chain:
        return chain(self, other)


class chain:
    """Signatures run one after another, each getting the previous return value first."""

    def __init__(self, *tasks: Signature | group | chain | chord) -> None:
        items: list[Signature | group] = []
        for t in tasks:
            if isinstance(t, chain):
                items.extend(t.tasks)
            elif isinstance(t, Signature | group):
                items.append(t)
            elif isinstance(t, chord) and t.body is not None:
                items.extend([t.header, t.body])
            else:  # a chord without its callback would fail only when submitted
                raise TypeError(
                    "chain() takes signatures, groups, chains and chords with a callback, "
                    f"got {t!r}"
                )
        if not items:
            raise ValueError("chain() needs at least one signature")
        self.tasks: list[Signature | group] = items

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.tasks))

    def __or__(self, other: Any) -> chain:
        return chain(self, other)

    def _app(self) -> AppPort:
        first = self.tasks[0]
        return (first.tasks[0] if isinstance(first, group) else first).task.app

    def apply_async(self, **options: Any) -> TaskResult | GroupResult:
        return self._app().submit_canvas(self.tasks, options)

    def delay(self) -> TaskResult | GroupResult:
        return self.apply_async()


class chord:
    """A group (header) whose results, as a list, go to a callback (body)."""

    def __init__(self, header: group | Iterable[Signature], body: Signature | None = None) -> None:
        self.header = header if isinstance(header, group) else group(*header)
        self.body = body

    def __call__(self, body: Signature) -> TaskResult:
        self.body = body
        return self.apply_async()

    def apply_async(self, **options: Any) -> TaskResult:
        if not isinstance(self.body, Signature):
            raise TypeError("chord() needs a callback signature: chord(header, task.s())")
        # A canvas's handle is that of its last item: here, the callback's TaskResult.
        app = self.body.task.app
        return cast("TaskResult", app.submit_canvas([self.header, self.body], options))

    def delay(self) -> TaskResult:
        return self.apply_async()
