"""Submit-to-start latency of one task on an idle pool: nbtasks' thread executor vs a bare pool.

    .venv/bin/python benchmarks/latency.py             # 3 runs x 500 samples each (~40 s)
    .venv/bin/python benchmarks/latency.py --runs 1

Method (notes/perf-baselines.md §4c): before each sample the pool idles 5-15 ms (uniformly random),
then t0 = perf_counter() is taken and one task is submitted; the task returns perf_counter() from
its first line. submit→start = (that value - t0); round trip = until the result is back in the
caller. The two executors are sampled alternately (in random order at each step) in the same
process, so both see the same machine noise:

- bare ``concurrent.futures.ThreadPoolExecutor(2)``: ``ex.submit(now).result()``;
- the floor: one READY record committed with plain sqlite3 into a diskcache store, then the
  bare pool's ``submit``: what committing before the start costs at least;
- the 1-row floor: one tiny row committed into a one-table WAL database with
  ``synchronous = OFF``, then the bare pool's ``submit``: what any commit at all costs;
- nbtasks ``App(store=<temp dir>, workers=2)``, thread executor: ``t.delay().get()``.

Targets (issue 2): submit→start median ≤ 2x the bare pool's (median of the same-run ratios of the
per-run medians), and p99 < 1 ms (p99 over all samples of all runs).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import Report, mmm, percentile, run_main, tempdir, try_import_nbtasks, verdict

SAMPLES = 500
WARMUP = 20
FLOOR = "floor: commit+TPE"
MINIMAL = "floor: 1-row commit+TPE"


def now() -> float:
    return time.perf_counter()


def sample_tpe(ex: ThreadPoolExecutor) -> tuple[float, float, float]:
    """(submit→start, round trip, time for submit() to return), in seconds."""
    t0 = time.perf_counter()
    f = ex.submit(now)
    ts = time.perf_counter()
    started = f.result()
    t1 = time.perf_counter()
    return started - t0, t1 - t0, ts - t0


def sample_nbtasks(t: Any) -> tuple[float, float, float]:
    """(submit→start, round trip, time for delay() to return), in seconds."""
    t0 = time.perf_counter()
    r = t.delay()
    ts = time.perf_counter()
    started = r.get(timeout=30)
    t1 = time.perf_counter()
    return started - t0, t1 - t0, ts - t0


# The row nbtasks commits at submit, written the way its store does (one statement into
# diskcache's table): the "floor" sampler pays this commit, then submits to a bare pool.
_INSERT = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
    " tag, size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, 'READY', 0, 1, NULL, ?)"
)


def then_pool(ex: ThreadPoolExecutor, t0: float) -> tuple[float, float, float]:
    """A floor sample's second half: submit to the bare pool, as sample_tpe does."""
    f = ex.submit(now)
    ts = time.perf_counter()
    started = f.result()
    t1 = time.perf_counter()
    return started - t0, t1 - t0, ts - t0


class Floor:
    """One READY commit (a ~330-byte JSON record, into a diskcache store opened with nbtasks'
    settings) then ``ThreadPoolExecutor.submit``: what any design that commits the record
    before the task may start must pay at least, measured beside the others."""

    def __init__(self, directory: str, ex: ThreadPoolExecutor) -> None:
        import json
        import sqlite3

        import diskcache

        self.cache = diskcache.Cache(
            directory, eviction_policy="none", tag_index=True, statistics=False
        )
        self.con = sqlite3.connect(
            os.path.join(directory, "cache.db"), isolation_level=None, check_same_thread=False
        )
        self.con.execute("PRAGMA synchronous = 1")
        self.ex = ex
        self.n = 0
        self.dumps = json.dumps
        self.rec = {
            "id": "",
            "task_name": "now",
            "status": "READY",
            "enqueued_at": 0.0,
            "args_repr": "",
            "args": {"j": []},
            "kwargs": {"j": {}},
            "backend": "default",
            "errors": [],
            "worker_ids": [],
            "metadata": {},
            "owner": "host:12345:678901",
            "executor": "thread",
        }

    def sample(self) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        self.n += 1
        key = f"t:{self.n:026d}"
        rec = dict(self.rec, id=key[2:], enqueued_at=time.time())
        self.con.execute(_INSERT, (key, rec["enqueued_at"], rec["enqueued_at"], self.dumps(rec)))
        return then_pool(self.ex, t0)

    def close(self) -> None:
        self.con.close()
        self.cache.close()


class MinimalFloor:
    """The least any commit costs here: one 40-byte row into a one-table WAL database (no
    index but its key, no trigger, ``synchronous = OFF``), then ``ThreadPoolExecutor.submit``.
    If this alone is over 2x the bare pool, no design that commits before the start can meet
    that target on this machine."""

    def __init__(self, path: str, ex: ThreadPoolExecutor) -> None:
        import sqlite3

        self.con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.con.execute("PRAGMA journal_mode = wal")
        self.con.execute("PRAGMA synchronous = 0")
        self.con.execute("CREATE TABLE t(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
        self.ex = ex
        self.n = 0

    def sample(self) -> tuple[float, float, float]:
        t0 = time.perf_counter()
        self.n += 1
        self.con.execute("INSERT INTO t VALUES (?, 'READY')", (f"{self.n:026d}",))
        return then_pool(self.ex, t0)

    def close(self) -> None:
        self.con.close()


def body(rep: Report) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--runs", type=int, default=3, help="runs of --samples samples each (default 3)"
    )
    ap.add_argument(
        "--samples",
        type=int,
        default=SAMPLES,
        help=f"samples per run and executor (default {SAMPLES})",
    )
    ap.add_argument("--no-nbtasks", action="store_true", help="bare pool only")
    args = ap.parse_args()

    nbtasks, nb_err = (None, "skipped (--no-nbtasks)") if args.no_nbtasks else try_import_nbtasks()
    rep.line(
        f"One task on an idle pool (idle 5-15 ms before each sample); {args.runs} run(s)"
        f" x {args.samples} samples per executor, executors sampled alternately. Times in µs."
    )
    if nbtasks is None:
        rep.line(f"nbtasks NOT MEASURED: {nb_err}")
    rep.line()

    # name -> per run: list of (start latency, round trip) in seconds
    data: dict[str, list[list[tuple[float, float, float]]]] = {"TPE(2)": []}
    errors: list[str] = []
    rng = random.Random(12345)
    with tempdir("nbtasks-latency-") as store, ThreadPoolExecutor(2) as ex:
        app = t = None
        if nbtasks is not None:
            try:
                app = nbtasks.App(store=store, workers=2)
                t = app.task(now)
                data["nbtasks thread"] = []
            except Exception:
                errors.append("nbtasks set-up:\n" + traceback.format_exc())
        samplers: dict[str, Any] = {"TPE(2)": lambda: sample_tpe(ex)}
        floor = Floor(os.path.join(store, "floor"), ex)
        samplers[FLOOR] = floor.sample
        data[FLOOR] = []
        minimal = MinimalFloor(os.path.join(store, "minimal.db"), ex)
        samplers[MINIMAL] = minimal.sample
        data[MINIMAL] = []
        if t is not None:
            samplers["nbtasks thread"] = lambda: sample_nbtasks(t)
        try:
            for _ in range(WARMUP):
                for fn in samplers.values():
                    fn()
            for run in range(1, args.runs + 1):
                per_run: dict[str, list[tuple[float, float, float]]] = {k: [] for k in samplers}
                for _ in range(args.samples):
                    names = list(samplers)
                    rng.shuffle(names)
                    for name in names:
                        time.sleep(rng.uniform(0.005, 0.015))
                        per_run[name].append(samplers[name]())
                for name, vals in per_run.items():
                    data[name].append(vals)
                    st = [s * 1e6 for s, *_ in vals]
                    rep.line(
                        f"  run {run}: {name:<15} submit→start median"
                        f" {statistics.median(st):7.1f} µs, p99 {percentile(st, 99):7.1f} µs"
                    )
        except Exception:
            errors.append("sampling:\n" + traceback.format_exc())
        finally:
            if app is not None:
                app.shutdown(wait=True)
            floor.close()
            minimal.close()
    rep.line()

    rows = []
    summary: dict[str, dict[str, Any]] = {}
    for name, runs in data.items():
        if not runs:
            continue
        med_s = [statistics.median([s for s, *_ in r]) * 1e6 for r in runs]
        p99_s = [percentile([s for s, *_ in r], 99) * 1e6 for r in runs]
        med_rt = [statistics.median([rt for _, rt, _ in r]) * 1e6 for r in runs]
        back = [statistics.median([rt - s for s, rt, _ in r]) * 1e6 for r in runs]
        sub = [statistics.median([x for *_, x in r]) * 1e6 for r in runs]
        pooled = [s * 1e6 for r in runs for s, *_ in r]
        summary[name] = {"med": med_s, "pooled_p99": percentile(pooled, 99)}
        rows.append(
            [
                name,
                len(pooled),
                "{:.0f} / {:.0f} / {:.0f}".format(*mmm(med_s)),
                "{:.0f} / {:.0f} / {:.0f}".format(*mmm(p99_s)),
                f"{percentile(pooled, 99):.0f}",
                f"{max(pooled):.0f}",
                "{:.0f} / {:.0f} / {:.0f}".format(*mmm(med_rt)),
                f"{statistics.median(sub):.0f}",
                f"{statistics.median(back):.0f}",
            ]
        )
    rep.line("Per-run figures as min / median / max over runs; 'pooled' is over every sample")
    rep.line("of every run; 'start→back' is the median time from the task's first line to the")
    rep.line("result back in the caller; 'submit returns' the median time for submit()/delay()")
    rep.line("to return (nbtasks commits the READY record there). The floor row commits one")
    rep.line("READY record to a diskcache store with plain sqlite3, then submits to the bare pool:")
    rep.line("the least that committing before the task may start costs on this machine. The")
    rep.line("1-row floor commits one tiny row to a one-table database (no indexes, no triggers,")
    rep.line("synchronous=OFF) first: the least that any commit costs here.")
    rep.table(
        [
            "executor",
            "samples",
            "start median",
            "start p99",
            "pooled p99",
            "max",
            "round trip median",
            "submit returns",
            "start→back",
        ],
        rows,
    )

    targets: list[list[str]] = []
    if "nbtasks thread" in summary and summary["nbtasks thread"]["med"]:
        nb, ref = summary["nbtasks thread"], summary["TPE(2)"]
        ratios = [a / b for a, b in zip(nb["med"], ref["med"], strict=True)]
        med_ratio = statistics.median(ratios)
        targets.append(
            [
                "submit→start median ≤ 2x TPE(2)'s",
                f"{med_ratio:.2f}x (runs: {', '.join(f'{r:.2f}' for r in ratios)})",
                verdict(med_ratio <= 2),
            ]
        )
        targets.append(
            [
                "submit→start p99 < 1 ms (pooled)",
                f"{nb['pooled_p99']:.0f} µs",
                verdict(nb["pooled_p99"] < 1000),
            ]
        )
    else:
        targets.append(["submit→start median ≤ 2x TPE(2)'s", "n/a", verdict(None)])
        targets.append(["submit→start p99 < 1 ms (pooled)", "n/a", verdict(None)])
    for name, what in ((FLOOR, "The floor"), (MINIMAL, "The 1-row floor")):
        if not summary.get(name, {}).get("med"):
            continue
        floor_ratios = [
            a / b for a, b in zip(summary[name]["med"], summary["TPE(2)"]["med"], strict=True)
        ]
        rep.line(
            f"{what}'s submit→start median is {statistics.median(floor_ratios):.2f}x"
            f" TPE(2)'s (runs: {', '.join(f'{r:.2f}' for r in floor_ratios)})."
        )
    rep.line()
    rep.line("Targets (issue 2):")
    rep.table(["target", "measured", "verdict"], targets)

    if errors:
        rep.line("ERRORS:")
        for e in errors:
            for text in e.rstrip().splitlines():
                rep.line("    " + text)


if __name__ == "__main__":
    run_main("latency", body)
