"""Shared helpers for the benchmark scripts: report/tee, header, tables, statistics.

Not a benchmark itself. Each script in this folder imports it (the script's own folder is on
``sys.path`` when run as ``python benchmarks/NAME.py``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"

PACKAGES = (
    "nbtasks",
    "diskcache",
    "cloudpickle",
    "huey",
    "joblib",
    "dask",
    "distributed",
    "tqdm",
    "psutil",
)


def try_import_nbtasks() -> tuple[Any, str | None]:
    """Import nbtasks from the repo; return (module or None, error text or None)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import nbtasks

        nbtasks.App  # noqa: B018  (the package is only usable once App exists)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return nbtasks, None


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        if name == "nbtasks":
            mod, err = try_import_nbtasks()
            if mod is not None:
                return str(
                    getattr(mod, "__version__", "unknown (not installed, imported from repo)")
                )
            return f"not importable ({err})"
        return "not installed"


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "log", "-1", "--format=%h %cI %s"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    text = out.stdout.strip()
    if not text:
        return "no commit yet"
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "nbtasks"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    return text + (" (+ uncommitted changes under nbtasks/)" if dirty else "")


def header_lines(name: str) -> list[str]:
    """Lines that head every result file: command, date, machine, versions."""
    try:
        script = Path(sys.argv[0]).resolve().relative_to(REPO)
    except ValueError:
        script = Path(sys.argv[0])
    try:
        exe = Path(sys.executable).relative_to(REPO)
    except ValueError:
        exe = Path(sys.executable)
    cmd = shlex.join([str(exe), str(script), *sys.argv[1:]])
    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    return [
        f"# benchmark: {name}",
        f"# command (from the repo root): {cmd}",
        f"# date: {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}",
        f"# machine: {platform.platform()}, {os.cpu_count()} CPUs,"
        f" python {platform.python_version()} ({platform.python_implementation()}),"
        f" sqlite {sqlite3.sqlite_version}",
        f"# repo HEAD: {_git_head()}",
        f"# versions: {versions}",
        "",
    ]


class Report:
    """Print lines as they come and write them all to results/NAME.txt at the end."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        for line in header_lines(name):
            self.line(line)

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, head: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """A plain-text table, columns right-aligned except the first."""
        cells = [[str(c) for c in head]] + [[_cell(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(head))]

        def fmt(r: list[str]) -> str:
            parts = [r[0].ljust(widths[0])] + [
                c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
            ]
            return "  ".join(parts).rstrip()

        self.line(fmt(cells[0]))
        self.line("  ".join("-" * w for w in widths))
        for r in cells[1:]:
            self.line(fmt(r))
        self.line()

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.txt"
        path.write_text("\n".join(self.lines) + "\n")
        print(f"[written to {path.relative_to(REPO)}]", flush=True)
        return path


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def run_main(name: str, body: Callable[[Report], None]) -> None:
    """Run a benchmark body; always save what it reported, with the traceback if it failed."""
    rep = Report(name)
    failed = False
    try:
        body(rep)
    except KeyboardInterrupt:
        rep.line("INTERRUPTED by the user: the figures above are partial.")
        failed = True
    except Exception:
        rep.line("BENCHMARK FAILED with this traceback (figures above are partial):")
        for text in traceback.format_exc().splitlines():
            rep.line("    " + text)
        failed = True
    finally:
        rep.save()
    if failed:
        sys.exit(1)


def report_errors(rep: Report, errors: Sequence[str]) -> None:
    """The tracebacks of the parts that failed, under ``ERRORS:`` at the end of a report."""
    if errors:
        rep.line("ERRORS:")
        for e in errors:
            for text in e.rstrip().splitlines():
                rep.line("    " + text)


def mmm(values: Sequence[float]) -> tuple[float, float, float]:
    """min, median, max."""
    if not values:
        nan = float("nan")
        return nan, nan, nan
    return min(values), statistics.median(values), max(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on the sorted values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "NOT RUN"
    return "PASS" if ok else "MISS"


@contextmanager
def tempdir(prefix: str) -> Iterator[Path]:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
