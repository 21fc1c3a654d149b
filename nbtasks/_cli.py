"""The ``nbtasks`` command: list, show and purge any store; ``demo`` runs the main job.

``list`` and ``show`` read JSON only (nothing is unpickled), so they are safe on a store
written by someone else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ._app import App
from ._errors import NbtasksError
from ._model import Progress, TaskStatus, to_datetime
from ._result import Displayed, TaskResult
from ._text import format_duration, format_usage, match_ids, parse_duration, parse_status


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:  # argparse shows an ArgumentTypeError's message as it is
        raise argparse.ArgumentTypeError(str(exc)) from None


def _store_default() -> str:
    return os.environ.get("NBTASKS_STORE") or ".nbtasks"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nbtasks", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    store_help = "the store directory (default: $NBTASKS_STORE, else ./.nbtasks)"

    lst = sub.add_parser("list", help="list the store's tasks, newest first")
    lst.add_argument("--status", help="only tasks with this status")
    lst.add_argument("--name", help="only tasks with this task name")
    lst.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    lst.add_argument("--store", default=_store_default(), help=store_help)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")

    show = sub.add_parser("show", help="show one task")
    show.add_argument(
        "id", help="the task id, a unique start of it, or its short id (the last 8 digits)"
    )
    show.add_argument("--store", default=_store_default(), help=store_help)
    show.set_defaults(status=None)  # main() reads the filter of list and purge before the App

    purge = sub.add_parser("purge", help="delete finished tasks")
    purge.add_argument("--status", help="only finished tasks with this status")
    purge.add_argument("--older-than", type=_duration_arg, help="e.g. 7d: finished before then")
    purge.add_argument("--store", default=_store_default(), help=store_help)

    demo = sub.add_parser("demo", help="run a small mix of tasks with live progress")
    demo.add_argument("--store", default=_store_default(), help=store_help)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args.store)
        status = None if args.status is None else parse_status(args.status, "--status")
        # Listing and showing never write (SPEC §10) and never unpickle: a store opened
        # read-only lists whoever wrote it, even one this user cannot write.
        app = App(store=args.store, read_only=args.command != "purge")
        if args.command == "list":
            return cmd_list(app, status, args.name, args.limit, args.json)
        if args.command == "show":
            return cmd_show(app, args.id)
        n = app.purge(older_than=args.older_than, status=status)
        print(f"purged {n} finished task(s) from {app.store.path}")
        return 0
    except (NbtasksError, ValueError, TypeError) as exc:  # bad input: said, not a traceback
        print(f"nbtasks: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- list / show


def _when(when: datetime | float | None) -> str:
    dt = to_datetime(when) if isinstance(when, int | float) else when
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def _progress_text(p: Any) -> str:
    prog = Progress.from_json(p)
    if prog is None:
        return ""
    if prog.fraction is not None:
        return f"{prog.fraction * 100:5.1f}%"
    return f"{prog.current:g}"


def cmd_list(
    app: App, status: TaskStatus | None, name: str | None, limit: int, as_json: bool
) -> int:
    by_status = None if status is None else status.value
    rows = app.store.summaries(status=by_status, name=name, limit=limit)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return 0
    total = app.store.count(status=by_status, name=name)
    print(f"{'ID':36}  {'NAME':24} {'STATUS':11} {'PROGRESS':>8}  {'STARTED':19}  DURATION")
    for row in rows:
        start, fin = row["started_at"], row["finished_at"]
        dur = (
            format_duration(fin - start, precise=True)
            if start is not None and fin is not None
            else ""
        )
        print(
            f"{row['id']:36}  {(row['task_name'] or '')[:24]:24} {row['status']:11} "
            f"{_progress_text(row['progress']):>8}  {_when(start):19}  {dur}"
        )
    print(f"({len(rows)} of {total} task(s) in {app.store.path})")
    return 0


def _find(app: App, text: str) -> TaskResult:
    """The task ``text`` names: its id, else the one id ``match_ids`` finds for it."""
    try:
        return app.result(text)
    except (KeyError, ValueError):  # unknown, or the start of several ids: said below
        pass
    hits = match_ids((row["id"] for row in app.store.summaries(limit=None)), text)
    if len(hits) != 1:
        raise NbtasksError(
            f"{'no task' if not hits else f'{len(hits)} tasks'} in {app.store.path} "
            f"with an id that starts or ends with {text!r}"
        )
    return app.result(hits[0])


def cmd_show(app: App, text: str) -> int:
    r = _find(app, text)
    # The arguments' repr is in the record only: the handle offers the arguments themselves,
    # which may be pickles that ``show`` must not load (SPEC §10).
    args_repr = app.store.read_record(r.id).get("args_repr", "")
    lines = [
        ("id", r.id),
        ("task", r.task_name),
        ("status", r.status.value + (f" ({r.reason})" if r.reason else "")),
        ("state", r.state),
        ("arguments", args_repr),
        ("enqueued", _when(r.enqueued_at)),
        ("started", _when(r.started_at)),
        ("finished", _when(r.finished_at)),
        ("attempts", str(r.attempts)),
        ("usage", format_usage(r.usage) or "-"),  # the last attempt's CPU and peak memory
        ("progress", str(r.progress) if r.progress else "-"),
        ("metadata", json.dumps(r.metadata)),
        ("backend", r.backend),
    ]
    lines.append(("displayed", _displayed_line(r.displayed)))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k:>{width}}: {v}")
    for i, err in enumerate(r.errors, 1):
        print(f"\n--- error {i}: {err.exception_class_path}\n{err.traceback.rstrip()}")
    if r.output:
        print(f"\n--- output (tail)\n{r.output.rstrip()}")
    return 0


_TIMES = "\N{MULTIPLICATION SIGN}"


def _displayed_line(displayed: Displayed) -> str:
    """What a task displayed, by type, and how many the bound left out: ``3 (image/png
    \N{MULTIPLICATION SIGN}2, text/html \N{MULTIPLICATION SIGN}1)``."""
    if not displayed.total:
        return "-"
    kinds = ", ".join(f"{mime} {_TIMES}{n}" for mime, n in displayed.by_type().items())
    line = f"{len(displayed)}" + (f" ({kinds})" if kinds else "")
    if displayed.dropped:
        line += f", {displayed.dropped} earlier not kept"
    cleared = displayed.total - len(displayed) - displayed.dropped
    if cleared > 0:
        line += f", {cleared} cleared"
    return line


# --------------------------------------------------------------------------- the demo


def run_demo(store: str) -> int:
    """The main job: a small mix of tasks on the store with a live text progress display
    (progress, metadata, a failure, a retry, a cached re-run), then what the store holds."""
    app = App(store=store, name="demo")

    @app.task(name="demo.train", bind=True)
    def train(self: Any, epochs: int) -> dict[str, float]:
        self.request.meta = {"model": "tiny-mlp", "epochs": epochs}
        loss = 1.0
        for epoch in self.request.track(range(epochs), message="training"):
            time.sleep(0.04)
            loss *= 0.93
            self.update_state(state="PROGRESS", meta={"epoch": epoch, "loss": round(loss, 4)})
        return {"loss": round(loss, 4)}

    @app.task(name="demo.fetch", retries=2, retry_backoff=0.1, bind=True)
    def fetch(self: Any, url: str) -> str:
        self.set_metadata(url=url)
        print(f"attempt {self.request.retries + 1}: GET {url}")
        if self.request.retries == 0:
            raise ConnectionError(f"{url}: connection reset (the demo fails the first attempt)")
        return f"200 OK from {url}"

    @app.task(name="demo.divide")
    def divide(a: float, b: float) -> float:
        return a / b

    @app.task(name="demo.slow_square", cache=True)
    def slow_square(x: int) -> int:
        time.sleep(0.5)
        return x * x

    started = time.monotonic()
    first = slow_square.delay(12)
    results: list[TaskResult] = [
        train.delay(40),
        fetch.delay("https://example.org/data.csv"),
        divide.delay(1, 0),
        first,
    ]
    squares = slow_square.map(range(8))
    _live_display(results, squares.results)
    again = slow_square.delay(12)
    again.wait(10)
    print(
        f"\nslow_square(12) again: {again.get()} (cached={again.cached}, same task "
        f"{again.id == first.id}) in {time.monotonic() - started:.1f}s since the start"
    )
    for r in results:
        r.refresh()
        line = f"  {r.task_name:18} {r.status.value:10}"
        if r.status is TaskStatus.SUCCESSFUL:
            line += f" -> {r.return_value!r}"
        elif r.errors:
            line += f" {r.errors[-1].exception_class_path}: {r.errors[-1].message}"
        if r.attempts > 1:
            line += f" after {r.attempts} attempts"
        print(line)
    app.shutdown()
    print()
    return cmd_list(App(store=store), None, None, 15, False)


def _bar(fraction: float | None, width: int = 24) -> str:
    if fraction is None:
        return " " * width
    filled = round(fraction * width)
    return "#" * filled + "." * (width - filled)


def _live_display(results: list[TaskResult], group: list[TaskResult]) -> None:
    tty = sys.stdout.isatty()
    interval = 0.1 if tty else 0.5
    drawn = 0
    while True:
        for r in (*results, *group):
            r.refresh()
        done = sum(r.is_finished for r in group)
        lines = []
        for r in results:
            p = r.progress
            frac = 1.0 if r.status is TaskStatus.SUCCESSFUL else (p.fraction if p else None)
            text = str(p) if p else ""
            lines.append(f"{r.task_name:18} {r.status.value:11} [{_bar(frac)}] {text}")
        lines.append(f"{'demo.slow_square*8':18} {'map':11} [{_bar(done / len(group))}] {done}/8")
        if tty and drawn:
            sys.stdout.write(f"\x1b[{drawn}F")
        sys.stdout.write("\n".join(f"{line:<80}" for line in lines) + "\n")
        sys.stdout.flush()
        drawn = len(lines)
        if all(r.is_finished for r in (*results, *group)):
            return
        time.sleep(interval)


__all__ = ["main"]
