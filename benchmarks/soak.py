"""Soak: 100,000 tasks through one App in one process; memory stays bounded, purge gives the
disk back.

    .venv/bin/python benchmarks/soak.py            # ~2-4 minutes
    .venv/bin/python benchmarks/soak.py -n 20000   # a shorter run

One thread ``App(store=DIR, workers=2)`` runs ``soak.work`` in batches of 1,000: even batches
with ``t.map(range(...))``, odd ones with a ``t.delay(i)`` loop; each batch is waited for and its
handles are dropped (nothing holds results). Every task reports progress and returns a small
JSON value; every 1,000th returns 40 KB of bytes (a signed pickle in a value file of its own) and
every 500th fails. The process's RSS (after ``gc.collect()``) is sampled at 0 tasks (the App
open, the task declared, one warm-up batch run and purged) and every 10,000 tasks. Then
``app.purge()`` deletes every finished task, and the store's size on disk (``du``: allocated
blocks of every file in the directory) is measured when the store is new, before the purge,
after it, and after ``app.store.vacuum()`` (what ``app.purge(vacuum=True)`` runs after the
purge) when the App has one.

Targets (issue 6): RSS bounded (at 100,000 tasks within 30 MB of its value at 50,000, i.e. no
growth per task), and the store's size after purge back within 1 MB of its size at the start.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path
from typing import Any

from _common import Report, run_main, tempdir, try_import_nbtasks, verdict

BATCH = 1_000


def du(path: Path) -> int:
    """Bytes allocated on disk for every file under ``path`` (like ``du -s``)."""
    total = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.stat(os.path.join(root, n)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def soak(rep: Report, n: int) -> None:
    nbtasks, err = try_import_nbtasks()
    if nbtasks is None:
        rep.line(f"NOT RUN: nbtasks cannot be imported: {err}")
        return
    rep.line(
        f"{n:,} tasks through one App(workers=2), batches of {BATCH:,} (map and delay loops "
        "alternately), handles dropped after each batch."
    )
    rep.line()
    with tempdir("nbtasks-soak-") as tmp:
        store = tmp / "store"
        app = nbtasks.App(store=store, workers=2)

        @app.task(name="soak.work", bind=True)
        def work(self: Any, i: int) -> Any:
            self.progress(1, 1)
            if i % 500 == 499:
                raise ValueError(f"task {i} fails on purpose")
            if i % 1000 == 0:
                return bytes([i % 256]) * 40_000
            return {"i": i, "sq": i * i}

        def batch(start: int, stop: int, k: int) -> None:
            if k % 2 == 0:
                work.map(range(start, stop)).wait(120)
            else:
                handles = [work.delay(i) for i in range(start, stop)]
                for h in handles:
                    h.wait(120)
                del handles

        app.store.flush()
        size0 = du(store)
        rep.line(f"store at the start (new, empty): {mb(size0)}")
        batch(0, BATCH, 0)  # warm-up: imports, threads, caches
        app.purge()
        gc.collect()
        samples = [(0, rss(), 0.0, len(app.store.live))]
        t0 = time.perf_counter()
        for k, start in enumerate(range(0, n, BATCH)):
            batch(start, min(start + BATCH, n), k)
            done = min(start + BATCH, n)
            if done % 10_000 == 0 or done == n:
                gc.collect()
                samples.append((done, rss(), time.perf_counter() - t0, len(app.store.live)))
                rep.line(
                    f"  {done:>7,} tasks  RSS {mb(samples[-1][1])}  "
                    f"{samples[-1][2]:6.1f} s  live records in memory: {samples[-1][3]}"
                )
        elapsed = time.perf_counter() - t0
        app.store.flush()
        rep.line()
        rep.table(
            ["tasks", "RSS", "vs 0 tasks", "elapsed s", "tasks/s so far", "live records"],
            [
                (
                    f"{d:,}",
                    mb(r),
                    f"{(r - samples[0][1]) / 1e6:+.1f} MB",
                    t,
                    d / t if t else 0,
                    live,
                )
                for d, r, t, live in samples
            ],
        )
        counts = {s: app.store.count(status=s) for s in ("SUCCESSFUL", "FAILED")}
        rep.line(f"stored: {counts} in {elapsed:.1f} s ({n / elapsed:,.0f} tasks/s)")
        size1 = du(store)
        t = time.perf_counter()
        purged = app.purge()
        t_purge = time.perf_counter() - t
        size2 = du(store)
        rep.line(f"store before purge: {mb(size1)}")
        rep.line(f"app.purge(): {purged:,} tasks in {t_purge:.1f} s; store after: {mb(size2)}")
        size_final = size2
        vacuum = getattr(app.store, "vacuum", None)
        if vacuum is not None:
            t = time.perf_counter()
            vacuum()
            size_final = du(store)
            rep.line(
                f"app.store.vacuum(): {time.perf_counter() - t:.1f} s; store after: "
                f"{mb(size_final)}"
            )
        left = app.store.count()
        app.shutdown()
        rep.line(f"tasks left in the store: {left}")
        rep.line()

        by = {d: r for d, r, _, _ in samples}
        half = max(d for d in by if d <= n // 2)
        growth = by[n] - by[half]
        ok_rss = growth < 30e6
        rep.line(
            f"RSS at 0 / {half:,} / {n:,} tasks: {mb(by[0])} / {mb(by[half])} / {mb(by[n])}; "
            f"growth over the second half {growth / 1e6:+.1f} MB; target < 30 MB: "
            f"{verdict(ok_rss)}"
        )
        ok_size = size_final - size0 < 1e6
        rep.line(
            f"store size at the start / before purge / after purge"
            f"{' and vacuum' if vacuum else ''}: {mb(size0)} / {mb(size1)} / {mb(size_final)}; "
            f"target within 1 MB of the start: {verdict(ok_size)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="tasks (default 100,000)")
    args = parser.parse_args()
    run_main("soak", lambda rep: soak(rep, args.n))


if __name__ == "__main__":
    main()
