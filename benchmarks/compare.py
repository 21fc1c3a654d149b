"""Before and after: one commit against another, in the same run, on this machine.

    .venv/bin/python benchmarks/compare.py BASE [--against REV] [--pairs N] [-n N]

Checks out BASE and REV (default HEAD) into temporary git worktrees, builds one store of ``-n``
finished results with BASE's nbtasks (``t.map``, 1 in 100 FAILED, as benchmarks/store.py does),
then measures, each in a fresh process and alternating BASE / REV (the order flips every pair,
so a machine that speeds up or slows down during the run favours neither):

- ``open``: ``nbtasks.App(store)`` on that store, in ms;
- ``listing``: ``app.results()`` and reading ``status``, ``task_name``, ``finished_at`` and
  ``progress`` of every result, in ms (benchmarks/store.py's "summary of every task");
- ``delay``: a loop of 3,000 ``t.delay()`` of a trivial task on a new store with 2 workers, the
  clock stopped after ``app.shutdown(wait=True)`` (every record flushed), in µs per task.

It prints each side's median and the median of the per-pair ratios REV / BASE (below 1: REV is
faster). This machine's run-to-run spread is 10-30 %, which is why only same-run, alternating
pairs are compared. Results go to ``benchmarks/results/compare.txt``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _common import Report, run_main

REPO = Path(__file__).resolve().parents[1]

_ONE = textwrap.dedent(
    """
    import shutil, sys, tempfile, time
    import nbtasks

    what, store = sys.argv[1], sys.argv[2]
    if what == "open":
        t0 = time.perf_counter()
        app = nbtasks.App(store=store)
        print((time.perf_counter() - t0) * 1e3)
        app.shutdown()
    elif what == "listing":
        app = nbtasks.App(store=store)
        t0 = time.perf_counter()
        seen = [(r.status, r.task_name, r.finished_at, r.progress) for r in app.results()]
        print((time.perf_counter() - t0) * 1e3)
        assert len(seen) > 0
        app.shutdown()
    elif what == "delay":
        d = tempfile.mkdtemp()
        app = nbtasks.App(store=d + "/s", workers=2)

        @app.task
        def inc(x):
            return x + 1

        inc.map(range(200)).get(30)
        n = 3000
        t0 = time.perf_counter()
        for i in range(n):
            inc.delay(i)
        app.shutdown(wait=True)
        print((time.perf_counter() - t0) / n * 1e6)
        shutil.rmtree(d)
    """
)

_BUILD = textwrap.dedent(
    """
    import sys
    import nbtasks

    store, n = sys.argv[1], int(sys.argv[2])
    app = nbtasks.App(store=store, workers=2)

    @app.task(name="work")
    def work(i):
        if i % 100 == 0:
            raise ValueError(i)
        return i

    for start in range(0, n, 10_000):
        work.map(range(start, min(n, start + 10_000))).wait(600)
    app.shutdown(wait=True)
    """
)

UNITS = {"open": "ms", "listing": "ms", "delay": "µs/task"}


def _python(tree: Path, *argv: str) -> str:
    """Run with ``tree``'s nbtasks first on the path (the checkout's own, not the installed)."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def body(rep: Report) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="the commit to compare against (e.g. the one before a change)")
    ap.add_argument("--against", default="HEAD", help="the commit measured against it")
    ap.add_argument("--pairs", type=int, default=15, help="alternating pairs per measure")
    ap.add_argument("-n", type=int, default=100_000, help="results in the listing's store")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbtasks-compare-") as tmp_name:
        tmp = Path(tmp_name)
        trees = {"base": tmp / "base", "rev": tmp / "rev"}
        for side, rev in (("base", args.base), ("rev", args.against)):
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[side]), rev],
                check=True,
                capture_output=True,
            )
        try:
            sha = {
                side: subprocess.run(
                    ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                for side, tree in trees.items()
            }
            rep.line(f"base: {sha['base']}")
            rep.line(f"rev:  {sha['rev']}")
            store = tmp / "store"
            (tmp / "one.py").write_text(_ONE)
            (tmp / "build.py").write_text(_BUILD)
            _python(trees["base"], str(tmp / "build.py"), str(store), str(args.n))
            rep.line(f"store: {args.n:,} results built with base; {args.pairs} pairs per measure")
            rep.line()
            rep.line(f"{'measure':8} {'base median':>14} {'rev median':>14} {'rev/base':>9}")
            for what, unit in UNITS.items():
                got: dict[str, list[float]] = {"base": [], "rev": []}
                ratios = []
                for i in range(args.pairs):
                    pair = {}
                    for side in ("base", "rev") if i % 2 == 0 else ("rev", "base"):
                        out = _python(trees[side], str(tmp / "one.py"), what, str(store))
                        pair[side] = float(out.split()[-1])
                        got[side].append(pair[side])
                    ratios.append(pair["rev"] / pair["base"])
                rep.line(
                    f"{what:8} {statistics.median(got['base']):>9.2f} {unit:4}"
                    f" {statistics.median(got['rev']):>9.2f} {unit:4}"
                    f" {statistics.median(ratios):>8.3f}x"
                )
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    check=False,
                    capture_output=True,
                )


if __name__ == "__main__":
    run_main("compare", body)
