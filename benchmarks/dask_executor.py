"""nbtasks on Dask against plain Dask, on the same cluster, in one run.

    .venv/bin/python benchmarks/dask_executor.py             # full run (~2 min)
    .venv/bin/python benchmarks/dask_executor.py --runs 1    # quicker

One ``distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1)`` serves every
variant (started once, not in any figure). Each run measures, in alternating order (so neither
side always goes first on a warmer cluster):

- plain Dask: ``[client.submit(f, i, pure=False) for i in range(N)]`` then ``client.gather``
  (the futures are released after the clock stops);
- nbtasks: ``App(store=<fresh temp dir>, dask=client)``, a ``t.delay(i)`` loop of N then
  ``get()`` on each; the clock stops after ``app.shutdown(wait=True)``, i.e. once the store holds
  every record (when the results were back is shown too). The App is warmed with 200 tasks.

Between measurements the scheduler is left to forget every task (none is pending while the next
one runs). The CPU time of every cluster process (client and scheduler, and the two workers)
per task is shown too, as a diagnostic.

``f`` is the trivial ``x -> x + 1``, defined in ``__main__`` (so it travels by value, as a notebook
function does). Every result is checked; after each nbtasks run a new App on the store checks that
200 sampled tasks are SUCCESSFUL there.

Target (issue 5): nbtasks' per-task cost at most 1.5x plain Dask's, judged on the median of the
same-run ratios. ``--map`` adds ``client.map`` + ``gather`` against ``t.map(...).get()``.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# This script is named like the package it measures: with its folder first on sys.path,
# `import dask` would import this file. Its folder goes last (so `_common` is still found,
# also by the worker processes, which start with this sys.path).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from _common import (  # noqa: E402
    Report,
    mmm,
    run_main,
    tempdir,
    try_import_nbtasks,
    verdict,
)

N = 5_000
WARMUP = 200
TARGET = 1.5


def inc(x: int) -> int:
    return x + 1


def cpu_seconds() -> float:
    """CPU time of this process (client and scheduler) and its children (the workers)."""
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system
    return total


def wait_idle(client: Any) -> None:
    """Until the scheduler holds no task: released futures cost nothing in the next figure."""

    def count(dask_scheduler: Any) -> int:
        return len(dask_scheduler.tasks)

    deadline = time.monotonic() + 60
    while client.run_on_scheduler(count) and time.monotonic() < deadline:
        time.sleep(0.05)


def plain_submit(client: Any, n: int) -> tuple[float, float]:
    """(seconds, CPU seconds) for submit + gather; the futures are released after the clock."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    futures = [client.submit(inc, i, pure=False) for i in range(n)]
    out = client.gather(futures)
    dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
    assert out == [i + 1 for i in range(n)]
    del futures
    wait_idle(client)
    return dt, dc


def plain_map(client: Any, n: int) -> float:
    t0 = time.perf_counter()
    futures = client.map(inc, range(n), pure=False)
    out = client.gather(futures)
    dt = time.perf_counter() - t0
    assert out == [i + 1 for i in range(n)]
    del futures
    wait_idle(client)
    return dt


def nbtasks_run(nbtasks: Any, client: Any, n: int, use_map: bool) -> tuple[float, float, float]:
    """(seconds until the store is flushed, seconds until every result was back, CPU seconds)."""
    with tempdir("nbtasks-bench-dask-") as store:
        app = nbtasks.App(store=store / "s", dask=client)
        t = app.task(executor="dask")(inc)
        for r in [t.delay(i) for i in range(WARMUP)]:
            r.get(60)
        wait_idle(client)
        c0, t0 = cpu_seconds(), time.perf_counter()
        if use_map:
            out = t.map(range(n)).get(timeout=600)
        else:
            results = [t.delay(i) for i in range(n)]
            out = [r.get(600) for r in results]
        back = time.perf_counter() - t0
        app.shutdown(wait=True)
        flushed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        assert out == [i + 1 for i in range(n)]
        with nbtasks.App(store=store / "s") as check:
            recs = check.results(task_name=t.name)
            assert len(recs) == n + WARMUP, len(recs)
            sample = random.sample(recs, 200)
            assert all(r.status.value == "SUCCESSFUL" for r in sample)
        wait_idle(client)
        return flushed, back, cpu


def body(rep: Report) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="passes over every variant (default 3)")
    ap.add_argument("-n", type=int, default=N, help=f"tasks per measurement (default {N})")
    ap.add_argument("--map", action="store_true", help="also client.map against t.map")
    args = ap.parse_args()
    nbtasks, err = try_import_nbtasks()
    import distributed

    n = args.n
    rep.line(
        f"Trivial task f(x) -> x + 1 defined in __main__, N={n:,}, all results collected; "
        f"{args.runs} run(s); 2 workers x 1 thread."
    )
    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(
        processes=True,
        n_workers=2,
        threads_per_worker=1,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )
    client = distributed.Client(cluster, set_as_default=False)
    rep.line(
        f"LocalCluster(processes=True, n_workers=2, threads_per_worker=1) started in "
        f"{time.perf_counter() - t0:.2f} s (not in any figure)"
    )
    rep.line()
    plain_submit(client, WARMUP)
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    map_ratios: list[float] = []
    rows: list[list[object]] = []
    try:
        for run in range(1, args.runs + 1):
            order = ["plain", "nbtasks"] if run % 2 else ["nbtasks", "plain"]
            got: dict[str, tuple[float, float]] = {}
            rep.line(f"run {run}:")
            for which in order:
                if which == "plain":
                    dt, cpu = plain_submit(client, n)
                    got["plain"] = (dt, cpu)
                    rep.line(
                        f"  plain Dask submit+gather             N={n:,}  {dt * 1000:9.1f} ms"
                        f"  {n / dt:8,.0f} tasks/s  {dt / n * 1e6:8.1f} µs/task"
                        f"  (CPU {cpu / n * 1e6:.0f} µs/task)"
                    )
                elif nbtasks is None:
                    rep.line(f"  nbtasks: NOT RUN ({err})")
                else:
                    dt, back, cpu = nbtasks_run(nbtasks, client, n, use_map=False)
                    got["nbtasks"] = (dt, cpu)
                    rep.line(
                        f"  nbtasks delay loop, store flushed    N={n:,}  {dt * 1000:9.1f} ms"
                        f"  {n / dt:8,.0f} tasks/s  {dt / n * 1e6:8.1f} µs/task"
                        f"  (CPU {cpu / n * 1e6:.0f} µs/task; results back at "
                        f"{back * 1000:.0f} ms)"
                    )
            if "nbtasks" in got:
                ratio = got["nbtasks"][0] / got["plain"][0]
                cpu_ratio = got["nbtasks"][1] / got["plain"][1]
                ratios.append(ratio)
                cpu_ratios.append(cpu_ratio)
                rep.line(f"  ratio nbtasks / plain Dask: {ratio:.2f}x (CPU {cpu_ratio:.2f}x)")
                rows.append(
                    [
                        run,
                        got["plain"][0] / n * 1e6,
                        got["nbtasks"][0] / n * 1e6,
                        ratio,
                        got["plain"][1] / n * 1e6,
                        got["nbtasks"][1] / n * 1e6,
                        cpu_ratio,
                    ]
                )
            if args.map and nbtasks is not None:
                pm = plain_map(client, n)
                nm, back, _ = nbtasks_run(nbtasks, client, n, use_map=True)
                map_ratios.append(nm / pm)
                rep.line(
                    f"  plain client.map+gather {pm / n * 1e6:8.1f} µs/task; nbtasks t.map "
                    f"{nm / n * 1e6:8.1f} µs/task (back at {back * 1000:.0f} ms); "
                    f"ratio {nm / pm:.2f}x"
                )
            rep.line()
    finally:
        client.close()
        cluster.close()

    rep.table(
        [
            "run",
            "plain Dask µs/task",
            "nbtasks µs/task",
            "ratio",
            "plain CPU µs/task",
            "nbtasks CPU µs/task",
            "CPU ratio",
        ],
        rows,
    )
    if ratios:
        lo, med, hi = mmm(ratios)
        rep.line(
            f"nbtasks-on-Dask per-task cost / plain Dask's (same run): min {lo:.2f}x, "
            f"median {med:.2f}x, max {hi:.2f}x; target <= {TARGET}x: {verdict(med <= TARGET)}"
        )
        rep.line(
            f"(diagnostic) CPU time of all cluster processes per task, nbtasks / plain: median "
            f"{statistics.median(cpu_ratios):.2f}x; plain's CPU excludes releasing its "
            "futures (done after its clock stops), nbtasks releases each one once recorded"
        )
    else:
        rep.line(f"target <= {TARGET}x: {verdict(None)}")
    if map_ratios:
        rep.line(
            f"map: nbtasks t.map / client.map (same run), median "
            f"{statistics.median(map_ratios):.2f}x (no target)"
        )


if __name__ == "__main__":
    run_main("dask_executor", body)
