"""IPython magics: ``%%task`` and ``%tasks`` (``%load_ext nbtasks``).

``%%task [--name NAME] [-o VAR] [--cache]``
    Run the cell in a background thread of the default app, in the user namespace.  The value
    of the cell's last expression is the task's return value; the names the cell assigns are
    set in the user namespace as the cell body runs (so all of them are there once the task
    finished).  The task's widget is shown under the cell; ``-o VAR`` also stores the
    ``TaskResult`` in ``VAR``.  ``print()`` in the body goes to the task's output, not to the
    cell that happens to run.  Top-level ``await`` works (the body then runs in ``asyncio.run``
    in the task's thread).

    ``--cache`` reuses the result of an earlier run of the same cell (SPEC §6): the key is the
    cell's source (normalised as a function's) and the values of the names it reads from the
    user namespace before assigning them (``cell_reads``; functions by their code identity,
    values by content: ``_codeid``).  On a hit the body does not run, so the names it assigns
    are not set: use the returned value (``-o VAR``, then ``VAR.get()``).  The default name of
    a cached cell is ``cell`` (a key with ``cell[N]`` would change at every execution).

``%tasks [--status S] [--name NAME] [--page-size N]``
    A live dashboard of the store: one row per task, newest first, with filters, paging and a
    cancel button per unfinished task.
``%tasks --timeline [--status S] [--name NAME] [--limit N]``
    What ran when: ``app.timeline()`` of the default app, live while its tasks run.
``%tasks cancel ID``
    Cancel a task; ``ID`` is a full id, the start of one, or the short id shown in widgets (its
    last 8 hex digits): ``_text.match_ids``.
``%tasks purge [--status S] [--older-than D]``
    Delete finished results; ``D`` is seconds or a number with a unit: ``90s``, ``10m``,
    ``2h``, ``7d``, ``1w`` (``_text.parse_duration``).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import inspect
import shlex
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.display import display

from . import _kernel, views
from ._codeid import FIXED_IDENTITY, cell_identity
from ._text import match_ids, parse_duration, parse_status, short_id

if TYPE_CHECKING:
    from ._model import TaskStatus

__all__ = ["NbtasksMagics", "build_cell_function", "cell_reads", "load_ipython_extension"]


class _HelpShown(Exception):
    """``--help`` printed the help: the magic stops there, without an error."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises IPython's UsageError instead of exiting the kernel; ``--help``
    prints the help (argparse's exit with status 0, caught by ``_parse``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}\n{self.format_usage().strip()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status == 0:
            raise _HelpShown
        raise UsageError(message or self.format_help())


def _parse(parser: _Parser, argv: Sequence[str]) -> argparse.Namespace | None:
    """The parsed arguments, or None when ``--help`` printed the help instead."""
    try:
        return parser.parse_args(list(argv))
    except _HelpShown:
        return None


def _task_parser() -> _Parser:
    parser = _Parser(prog="%%task", description="Run this cell as a background task.")
    parser.add_argument("--name", "-n", default=None, help="task name (default: cell[N])")
    parser.add_argument("-o", "--output", default=None, help="store the TaskResult in this name")
    parser.add_argument(
        "--cache",
        action="store_true",
        help="reuse the result of this cell's source run with the same values of what it reads",
    )
    return parser


def _tasks_parser() -> _Parser:
    parser = _Parser(
        prog="%tasks",
        description="A live table of the store's tasks, newest first.",
        epilog="Also: %tasks cancel ID (a full id, its start, or the short id shown); "
        "%tasks purge [--status S] [--older-than D] (D: 90s, 10m, 2h, 7d, 1w).",
    )
    parser.add_argument("--status", "-s", default=None, help="only tasks with this status")
    parser.add_argument(
        "--name", "-n", default=None, help="only tasks whose name contains this (any case)"
    )
    parser.add_argument("--page-size", type=int, default=20, help="rows per page (20)")
    parser.add_argument(
        "--timeline", action="store_true", help="the timeline of the tasks (app.timeline())"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="the timeline's newest N tasks (all)"
    )
    return parser


def _purge_parser() -> _Parser:
    parser = _Parser(prog="%tasks purge", description="Delete finished results.")
    parser.add_argument("--status", "-s", action="append", default=None)
    parser.add_argument("--older-than", default=None)
    return parser


def build_cell_function(
    source: str, namespace: dict[str, Any], filename: str, name: str
) -> Callable[[], Any]:
    """A function that runs ``source`` in ``namespace`` and returns its last expression's value.

    The cell is compiled here, in the cell thread, so a SyntaxError shows in the cell at once.
    """
    tree = ast.parse(source, filename, mode="exec")
    last: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        node = tree.body.pop()
        assert isinstance(node, ast.Expr)
        last = ast.Expression(node.value)
        ast.fix_missing_locations(last)
    # Top-level ``await`` works as in a notebook cell: the body then runs in asyncio.run()
    # inside the task's thread.
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    body_code = compile(tree, filename, "exec", flags=flags)
    last_code = compile(last, filename, "eval", flags=flags) if last is not None else None
    is_async = any(
        c is not None and c.co_flags & inspect.CO_COROUTINE for c in (body_code, last_code)
    )

    def run_sync() -> Any:
        exec(body_code, namespace)
        return eval(last_code, namespace) if last_code is not None else None

    async def run_async() -> Any:
        done = eval(body_code, namespace)
        if inspect.iscoroutine(done):
            await done
        if last_code is None:
            return None
        value = eval(last_code, namespace)
        return await value if inspect.iscoroutine(value) else value

    def run_cell() -> Any:
        return asyncio.run(run_async()) if is_async else run_sync()

    run_cell.__name__ = run_cell.__qualname__ = name
    run_cell.__module__ = "__main__"
    run_cell.__doc__ = f"The body of a %%task cell:\n\n{source}"
    return run_cell


def cell_reads(source: str) -> list[str]:
    """The names a cell reads before it assigns them, in order (``ast``): these come from the
    user namespace. Names local to a function, lambda or comprehension of the cell are not
    reads; a name the cell assigns at top level counts only if loaded before that."""
    reads: dict[str, None] = {}
    _block(ast.parse(source).body, set(), reads)
    return list(reads)


def _block(stmts: list[ast.stmt], bound: set[str], reads: dict[str, None]) -> None:
    """The statements of the cell's top level in order: a name bound by one (an assignment, a
    ``for`` target, an ``import``) is no read in the next ones."""
    for stmt in stmts:
        if isinstance(stmt, (ast.For, ast.AsyncFor)):
            _loads(stmt.iter, frozenset(bound), reads)
            bound |= _stores(stmt.target)
            _block([*stmt.body, *stmt.orelse], bound, reads)
        elif isinstance(stmt, (ast.If, ast.While)):
            _loads(stmt.test, frozenset(bound), reads)
            _block([*stmt.body, *stmt.orelse], bound, reads)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                _loads(item.context_expr, frozenset(bound), reads)
                if item.optional_vars is not None:
                    bound |= _stores(item.optional_vars)
            _block(stmt.body, bound, reads)
        elif isinstance(stmt, ast.Try):
            _block(stmt.body, bound, reads)
            for handler in stmt.handlers:
                if handler.type is not None:
                    _loads(handler.type, frozenset(bound), reads)
                if handler.name:
                    bound.add(handler.name)
                _block(handler.body, bound, reads)
            _block([*stmt.orelse, *stmt.finalbody], bound, reads)
        else:
            _loads(stmt, frozenset(bound), reads)
            bound |= _stores(stmt)


def _loads(node: ast.AST, bound: frozenset[str], reads: dict[str, None]) -> None:
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load) and node.id not in bound:
            reads[node.id] = None
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = node.args
        outer = [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
        if not isinstance(node, ast.Lambda):
            outer += node.decorator_list
        for child in outer:
            _loads(child, bound, reads)
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
        inner = bound | {a.arg for a in params if a is not None}
        body = node.body if isinstance(node.body, list) else [node.body]
        inner |= {n for stmt in body for n in _stores(stmt, nested=True)}
        for stmt in body:
            _loads(stmt, inner, reads)
        return
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        targets = {n for gen in node.generators for n in _stores(gen.target, nested=True)}
        _loads(node.generators[0].iter, bound, reads)  # evaluated in the enclosing scope
        inner = bound | targets
        for i, gen in enumerate(node.generators):
            if i:
                _loads(gen.iter, inner, reads)
            for cond in gen.ifs:
                _loads(cond, inner, reads)
        parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        for part in parts:
            _loads(part, inner, reads)
        return
    for sub in ast.iter_child_nodes(node):
        _loads(sub, bound, reads)


def _stores(node: ast.AST, nested: bool = False) -> set[str]:
    """The names a statement binds in its own scope (not inside the functions it defines,
    unless ``nested``: then everything bound anywhere below, as a function body's locals)."""
    names: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
            if not nested:
                continue
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).partition(".")[0] for a in n.names)
        elif isinstance(n, ast.alias) or (isinstance(n, ast.Lambda) and not nested):
            continue
        todo.extend(ast.iter_child_nodes(n))
    return names


def _default_app() -> Any:
    from ._app import default_app

    return default_app()


def _find_unfinished(app: Any, text: str) -> list[str]:
    """Ids of the READY/RUNNING tasks that ``text`` names (``match_ids``: the start of an id,
    or its end, as the short id in widgets)."""
    rows = app.store.summaries(status=list(views.UNFINISHED), limit=None)
    return match_ids((row["id"] for row in rows), text)


@magics_class
class NbtasksMagics(Magics):
    """``%%task`` and ``%tasks``."""

    @cell_magic
    def task(self, line: str, cell: str) -> None:
        """Run this cell as a background task; see ``nbtasks._magics``."""
        args = _parse(_task_parser(), shlex.split(line))
        if args is None:
            return
        shell = self.shell
        assert shell is not None
        count = _kernel.execution_count()
        name = args.name or (f"cell[{count}]" if count is not None and not args.cache else "cell")
        source = shell.transform_cell(cell)
        try:
            filename = shell.compile.cache(source, count or 0, raw_code=cell)
        except TypeError:  # IPython < 8.? has no raw_code
            filename = shell.compile.cache(source, count or 0)
        fn = build_cell_function(source, shell.user_ns, filename, name)
        if args.cache:  # keyed on what runs, resolved now: the source and the values it reads
            identity = cell_identity(source, shell.user_ns, cell_reads(source))
            setattr(fn, FIXED_IDENTITY, identity)
        app = _default_app()
        task = app.task(fn, name=name, cache=args.cache)
        result = task.delay()
        if args.output:
            if not args.output.isidentifier():
                raise UsageError(f"-o {args.output!r}: not a Python name")
            shell.user_ns[args.output] = result
        display(result)

    @line_magic
    def tasks(self, line: str = "") -> None:
        """Dashboard of the store's tasks; ``%tasks cancel ID``; ``%tasks purge ...``."""
        argv = shlex.split(line)
        if argv and argv[0] == "cancel":
            self._cancel(argv[1:])
        elif argv and argv[0] == "purge":
            self._purge(argv[1:])
        else:
            args = _parse(_tasks_parser(), argv)
            if args is None:
                return
            status = _status(args.status).value if args.status else None
            app = _default_app()
            if args.timeline:
                try:
                    timeline = app.timeline(limit=args.limit, status=status, task_name=args.name)
                except ValueError as exc:
                    raise UsageError(f"%tasks --timeline: {exc}") from None
                display(timeline)  # a live widget in a kernel, SVG elsewhere
                return
            if not _kernel.in_kernel():  # terminal IPython: text, no widget machinery
                print(
                    views.dashboard_text(app, status=status, name=args.name, limit=args.page_size)
                )
                return
            board = views.live_dashboard(
                app, status=status, name=args.name, page_size=args.page_size
            )
            display(board)

    def _cancel(self, argv: Sequence[str]) -> None:
        if len(argv) != 1:
            raise UsageError("usage: %tasks cancel ID")
        app = _default_app()
        wanted = argv[0]
        try:
            result = app.result(wanted)
        except (KeyError, ValueError):  # unknown, or names several: an unfinished one of them?
            matches = _find_unfinished(app, wanted)
            if not matches:
                raise UsageError(
                    f"%tasks cancel: no unfinished task has the id {wanted!r}"
                ) from None
            if len(matches) > 1:
                raise UsageError(
                    f"%tasks cancel: {wanted!r} matches {len(matches)} tasks; give more of the id"
                ) from None
            result = app.result(matches[0])
        label = f"{result.task_name} {short_id(result.id)}"
        if result.cancel():
            print(f"cancelled {label}")
        else:
            result.refresh()
            print(f"not cancelled: {label} is already {result.status.value}")

    def _purge(self, argv: Sequence[str]) -> None:
        args = _parse(_purge_parser(), argv)
        if args is None:
            return
        statuses = None
        if args.status:
            statuses = [_status(s) for part in args.status for s in part.split(",")]
            bad = [s.value for s in statuses if not s.is_finished]
            if bad:
                raise UsageError(
                    f"--status {', '.join(bad)}: only finished results can be purged "
                    f"({', '.join(sorted(views.TERMINAL))})"
                )
        older = None
        if args.older_than:
            try:
                older = parse_duration(args.older_than)
            except ValueError as exc:
                raise UsageError(f"--older-than: {exc}") from None
        count = _default_app().purge(older_than=older, status=statuses)
        print(f"purged {count} task{'s' if count != 1 else ''}")


def _status(text: str) -> TaskStatus:
    """``parse_status`` for ``--status``, its error as a UsageError."""
    try:
        return parse_status(text.strip(), "--status")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbtasks``: register ``%%task`` and ``%tasks``."""
    _kernel.warn_if_unsupported()
    ipython.register_magics(NbtasksMagics)
