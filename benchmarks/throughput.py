"""Throughput of trivial tasks: nbtasks' thread executor against its peers, in one run.

    .venv/bin/python benchmarks/throughput.py            # full run (~1 min)
    .venv/bin/python benchmarks/throughput.py --runs 1   # quicker

What is measured (every variant collects every result; each run is one pass over all variants, so
every ratio is taken against the bare pool measured in the same run):

- bare ``concurrent.futures.ThreadPoolExecutor(2)``: submit + result, warm pool, N=20,000 (the
  median of 3 passes in each run: it is the reference of every ratio, so it is kept steady);
- nbtasks ``App(store=<fresh temp dir>, workers=2)``: ``t.map(range(20_000)).get()`` and a
  ``t.delay`` loop of 5,000 then ``get()`` on each. The clock stops after
  ``app.shutdown(wait=True)``, i.e. once the store holds every record (the time at which the
  results were back is shown as well);
- the persisting floor: per task, one READY-sized row (~300 bytes of JSON) committed in its
  own transaction with plain sqlite3 into a store with diskcache's schema (WAL,
  ``synchronous=NORMAL``, the checkpoint after the clock stops), then submit + result on the
  bare pool, N=5,000: what a persisting ``delay()`` costs at the least;
- huey ``SqliteHuey`` (file in a temp dir) with an in-process consumer of 2 threads, polling tuned
  as in notes/perf-baselines.md §4a (initial_delay 1 ms, max_delay 10 ms, result polling
  ≤ 5 ms), N=4,000;
- joblib ``Parallel(n_jobs=2, backend="threading")``, N=20,000;
- dask ``Client(processes=False)`` (1 worker x 2 threads), ``client.map`` + ``gather``, N=2,000.

Each peer with threads of its own (huey's consumer, dask's client) is started before its
measurement and stopped after it, in every run, so that its polling never runs beside another
variant's (start-up and stop are not timed).

Targets: ``map`` ≤ 6x the bare pool's per-task cost and ≥ 10x SqliteHuey's tasks/s; the
``delay`` loop ≤ 12x the bare pool's per-task cost and ≤ 1.5x the persisting floor's.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import random
import signal
import sqlite3
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import Report, mmm, run_main, tempdir, try_import_nbtasks, verdict

#: The persisting floor: a READY row committed per task with plain sqlite3, then the bare pool.
FLOOR = "floor: sqlite commit per task + TPE(2)"
N_MAP = 20_000
N_DELAY = 5_000
N_HUEY = 4_000
N_JOBLIB = 20_000
N_DASK = 2_000
WARMUP = 200
GET_TIMEOUT = 300.0


def ident(x: int) -> int:
    return x


def call_with_timeout(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run fn in a daemon thread; raise TimeoutError naming `what` if it does not return in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    th = threading.Thread(target=target, name=f"bench-{what}", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        raise TimeoutError(f"{what} did not return within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --------------------------------------------------------------------------- bare pool


def bench_tpe(n: int, reps: int = 3) -> float:
    """Seconds for n submit+result on a warm ThreadPoolExecutor(2): the median of `reps` passes."""
    out = []
    with ThreadPoolExecutor(2) as ex:
        for f in [ex.submit(ident, i) for i in range(WARMUP)]:
            f.result()
        for _ in range(reps):
            t0 = time.perf_counter()
            futs = [ex.submit(ident, i) for i in range(n)]
            vals = [f.result() for f in futs]
            out.append(time.perf_counter() - t0)
            assert vals == list(range(n))
    return statistics.median(out)


# --------------------------------------------------------------------------- persisting floor

#: The columns of diskcache's ``Cache`` table that a row needs (the rest have defaults).
_FLOOR_INSERT = (
    "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag,"
    " size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, 1, NULL, ?)"
)


def bench_floor(n: int) -> float:
    """Seconds for n tasks on the persisting floor: per task, a READY-sized record (~300
    bytes of JSON, built per task) committed in its own transaction with plain sqlite3 into a
    store with diskcache's schema (WAL, synchronous=NORMAL; the WAL checkpoint is taken after
    the clock stops, as nbtasks' writer takes it off the submit path), then submit + result
    on the warm bare pool. What any persisting ``delay()`` must at least cost here."""
    import diskcache

    with tempdir("floor-bench-") as d:
        diskcache.Cache(str(d)).close()  # creates the schema, its triggers and settings
        con = sqlite3.connect(str(d / "cache.db"), isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
        base = {
            "task_name": "bench.ident",
            "status": "READY",
            "args_repr": "(1,)",
            "args": {"p": "a" * 40},
            "kwargs": {"p": "b" * 40},
            "backend": "default",
            "errors": [],
            "worker_ids": [],
            "metadata": {},
            "owner": "host:12345:1733570000.12",
            "executor": "thread",
        }
        with ThreadPoolExecutor(2) as ex:
            for f in [ex.submit(ident, i) for i in range(WARMUP)]:
                f.result()
            t0 = time.perf_counter()
            futs = []
            for i in range(n):
                now = time.time()
                text = json.dumps({**base, "id": f"{i:032x}", "enqueued_at": now})
                con.execute("BEGIN IMMEDIATE")
                con.execute(_FLOOR_INSERT, (f"t:{i:032x}", now, now, text))
                con.execute("COMMIT")
                futs.append(ex.submit(ident, i))
            vals = [f.result() for f in futs]
            dt = time.perf_counter() - t0
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (count,) = con.execute("SELECT count(*) FROM Cache WHERE key >= 't:'").fetchone()
        con.close()
    assert vals == list(range(n)) and count == n
    return dt


# --------------------------------------------------------------------------- nbtasks


def _check_store(nbtasks: Any, store: Any, ids: list[str]) -> None:
    """After the App shut down: a fresh App on the same store must see the tasks SUCCESSFUL."""
    app2 = nbtasks.App(store=store, workers=1)
    try:
        sample = [*random.sample(ids, min(200, len(ids))), ids[-1]]
        bad = [(i, str(app2.result(i).status)) for i in sample]
        bad = [b for b in bad if not b[1].endswith("SUCCESSFUL")]
        if bad:
            raise AssertionError(
                f"store check: {len(bad)} of {len(sample)} sampled tasks not SUCCESSFUL: {bad[:5]}"
            )
    finally:
        app2.shutdown(wait=True)


def bench_nbtasks(nbtasks: Any, n: int, mode: str) -> tuple[float, float]:
    """(seconds until all results were back, seconds until the store was flushed) for n tasks."""
    with tempdir("nbtasks-bench-") as d:
        app = nbtasks.App(store=d, workers=2)
        try:
            t = app.task(ident)
            t.map(range(WARMUP)).get(timeout=GET_TIMEOUT)  # warm the pool and the writer
            if mode == "map":
                t0 = time.perf_counter()
                g = t.map(range(n))
                vals = g.get(timeout=GET_TIMEOUT)
                t1 = time.perf_counter()
                ids = [r.id for r in g.results]
            else:
                t0 = time.perf_counter()
                rs = [t.delay(i) for i in range(n)]
                vals = [r.get(timeout=GET_TIMEOUT) for r in rs]
                t1 = time.perf_counter()
                ids = [r.id for r in rs]
            call_with_timeout(
                lambda: app.shutdown(wait=True), GET_TIMEOUT, "app.shutdown(wait=True)"
            )
            t2 = time.perf_counter()
        except BaseException:
            try:
                call_with_timeout(lambda: app.shutdown(wait=False), 30, "app.shutdown(wait=False)")
            except Exception:
                pass
            raise
        if vals != list(range(n)):
            raise AssertionError(f"nbtasks {mode}: wrong results (first items: {vals[:5]!r})")
        _check_store(nbtasks, d, ids)
    return t1 - t0, t2 - t0


def nbtasks_flushed(nbtasks: Any, n: int, mode: str, res: dict[str, tuple[float, float]]) -> float:
    """bench_nbtasks, keeping both figures in res[mode]; returns the time until flushed."""
    res[mode] = bench_nbtasks(nbtasks, n, mode)
    return res[mode][1]


# --------------------------------------------------------------------------- peers


class HueyBench:
    """SqliteHuey with an in-process 2-thread consumer, polling tuned as in perf-baselines §4a."""

    def __init__(self, path: str) -> None:
        from huey import SqliteHuey

        logging.getLogger("huey").setLevel(logging.WARNING)
        self.huey = SqliteHuey(name="bench", filename=path)
        self.task = self.huey.task()(ident)
        self.consumer = self.huey.create_consumer(
            workers=2,
            worker_type="thread",
            periodic=False,
            initial_delay=0.001,
            backoff=1.15,
            max_delay=0.01,
            check_worker_health=False,
        )
        sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
        self._saved = {s: signal.getsignal(s) for s in sigs}
        self.consumer.start()
        self.run(50)

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        rs = [self.task(i) for i in range(n)]
        vals = [r.get(blocking=True, timeout=GET_TIMEOUT, max_delay=0.005) for r in rs]
        dt = time.perf_counter() - t0
        assert vals == list(range(n))
        return dt

    def close(self) -> None:
        self.consumer.stop(graceful=True)
        for s, h in self._saved.items():
            signal.signal(s, h)
        self.huey.storage.close()


def bench_joblib(n: int) -> float:
    from joblib import Parallel, delayed

    t0 = time.perf_counter()
    vals = Parallel(n_jobs=2, backend="threading")(delayed(ident)(i) for i in range(n))
    dt = time.perf_counter() - t0
    assert vals == list(range(n))
    return dt


class DaskBench:
    def __init__(self) -> None:
        for name in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.ERROR)
        from distributed import Client

        t0 = time.perf_counter()
        self.client = Client(
            processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
        )
        self.start_s = time.perf_counter() - t0
        self.run(50)

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        futs = self.client.map(ident, range(n), pure=False)
        vals = self.client.gather(futs)
        dt = time.perf_counter() - t0
        assert vals == list(range(n))
        return dt

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- main


def body(rep: Report) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="passes over every variant (default 3)")
    ap.add_argument("--no-peers", action="store_true", help="skip huey, joblib and dask")
    ap.add_argument("--no-nbtasks", action="store_true", help="skip nbtasks (peers only)")
    args = ap.parse_args()

    nbtasks, nb_err = (None, "skipped (--no-nbtasks)") if args.no_nbtasks else try_import_nbtasks()
    rep.line(f"Trivial task f(x) -> x, all results collected; {args.runs} run(s); 2 vCPUs.")
    if nbtasks is None:
        rep.line(f"nbtasks NOT MEASURED: {nb_err}")
    rep.line()

    # name -> list of (seconds, n) per run
    times: dict[str, list[tuple[float, int]]] = {}
    errors: list[str] = []

    def record(name: str, n: int, fn: Callable[[], float]) -> None:
        try:
            dt = fn()
        except Exception:
            errors.append(f"{name} (N={n}):\n" + traceback.format_exc())
            rep.line(f"  {name}: FAILED (traceback at the end)")
            return
        times.setdefault(name, []).append((dt, n))
        rep.line(
            f"  {name:<44} N={n:>6,}  {dt * 1e3:9.1f} ms  {n / dt:10,.0f} tasks/s"
            f"  {dt / n * 1e6:8.1f} µs/task"
        )

    def with_peer(name: str, n: int, make: Callable[[], Any]) -> None:
        """Start a peer, measure it, stop it: its threads (huey's polling consumer, dask's
        event loop and worker) never run beside another variant's measurement."""
        try:
            peer = make()
        except Exception:
            errors.append(f"{name} set-up:\n" + traceback.format_exc())
            rep.line(f"  {name}: FAILED to start (traceback at the end)")
            return
        try:
            record(name, n, lambda: peer.run(n))
        finally:
            peer.close()

    with tempdir("huey-bench-") as hdir:
        for run in range(1, args.runs + 1):
            rep.line(f"run {run}:")
            record("TPE(2) submit+result", N_MAP, lambda: bench_tpe(N_MAP))
            record(FLOOR, N_DELAY, lambda: bench_floor(N_DELAY))
            if nbtasks is not None:
                res: dict[str, tuple[float, float]] = {}
                for mode, label, n in (("map", "map", N_MAP), ("delay", "delay loop", N_DELAY)):
                    record(
                        f"nbtasks {label}, store flushed",
                        n,
                        functools.partial(nbtasks_flushed, nbtasks, n, mode, res),
                    )
                    if mode in res:
                        times.setdefault(f"nbtasks {label}, results back", []).append(
                            (res[mode][0], n)
                        )
            if not args.no_peers:
                record("joblib Parallel(2, threading)", N_JOBLIB, lambda: bench_joblib(N_JOBLIB))
                path = str(hdir / f"huey-{run}.db")
                with_peer("huey SqliteHuey, 2-thread consumer", N_HUEY, lambda p=path: HueyBench(p))
                with_peer("dask Client(processes=False) map+gather", N_DASK, DaskBench)
    rep.line()

    def per_task(name: str) -> list[float]:
        return [dt / n for dt, n in times.get(name, [])]

    def ratios(name: str, ref: str) -> list[float]:
        """Same-run ratios of per-task cost name/ref (runs where both were measured)."""
        a, b = per_task(name), per_task(ref)
        if len(a) != len(b):
            return []
        return [x / y for x, y in zip(a, b, strict=True)]

    order = [
        ("TPE(2) submit+result", "TPE(2) submit+result"),
        (FLOOR, "TPE(2) submit+result"),
        ("nbtasks map, store flushed", "TPE(2) submit+result"),
        ("nbtasks map, results back", "TPE(2) submit+result"),
        ("nbtasks delay loop, store flushed", "TPE(2) submit+result"),
        ("nbtasks delay loop, results back", "TPE(2) submit+result"),
        ("joblib Parallel(2, threading)", "TPE(2) submit+result"),
        ("huey SqliteHuey, 2-thread consumer", "TPE(2) submit+result"),
        ("dask Client(processes=False) map+gather", "TPE(2) submit+result"),
    ]
    rows = []
    for name, ref in order:
        if name not in times:
            continue
        n = times[name][0][1]
        rate = [n / dt for dt, n in times[name]]
        us = [x * 1e6 for x in per_task(name)]
        r = ratios(name, ref)
        lo, med, hi = mmm(rate)
        rows.append(
            [
                name,
                n,
                len(rate),
                lo,
                med,
                hi,
                statistics.median(us),
                f"{statistics.median(r):.2f}x" if r else "n/a",
            ]
        )
    rep.line(
        "Tasks/s (min / median / max over runs) and per-task cost; 'vs TPE(2)' is the median of the"
    )
    rep.line(
        "same-run ratios of per-task cost against the bare pool"
        " (N=20,000; median of 3 passes per run)."
    )
    rep.table(
        ["variant", "N", "runs", "tasks/s min", "median", "max", "µs/task med", "vs TPE(2)"], rows
    )

    # Peer ratios for nbtasks map (tasks/s of nbtasks / tasks/s of peer, same run).
    peer_rows = []
    nb_rate = [n / dt for dt, n in times.get("nbtasks map, store flushed", [])]
    for peer in (
        "huey SqliteHuey, 2-thread consumer",
        "joblib Parallel(2, threading)",
        "dask Client(processes=False) map+gather",
    ):
        p_rate = [n / dt for dt, n in times.get(peer, [])]
        if nb_rate and len(p_rate) == len(nb_rate):
            rr = [a / b for a, b in zip(nb_rate, p_rate, strict=True)]
            peer_rows.append([f"nbtasks map (flushed) / {peer}", *(f"{x:.2f}x" for x in mmm(rr))])
    if peer_rows:
        rep.line("nbtasks map tasks/s over each peer's tasks/s, same run (min / median / max):")
        rep.table(["ratio", "min", "median", "max"], peer_rows)

    # Targets.
    def judged(values: list[float], limit: float, lower_is_better: bool) -> tuple[str, str]:
        if not values:
            return "n/a", verdict(None)
        med = statistics.median(values)
        ok = med <= limit if lower_is_better else med >= limit
        return f"{med:.2f}x (runs: {', '.join(f'{v:.2f}' for v in values)})", verdict(ok)

    huey_rr: list[float] = []
    h_rate = [n / dt for dt, n in times.get("huey SqliteHuey, 2-thread consumer", [])]
    if nb_rate and len(h_rate) == len(nb_rate):
        huey_rr = [a / b for a, b in zip(nb_rate, h_rate, strict=True)]
    targets = [
        (
            "map: per-task cost ≤ 6x bare TPE(2)",
            *judged(ratios("nbtasks map, store flushed", "TPE(2) submit+result"), 6, True),
        ),
        ("map: tasks/s ≥ 10x SqliteHuey", *judged(huey_rr, 10, False)),
        (
            "delay loop: per-task cost ≤ 12x bare TPE(2)",
            *judged(ratios("nbtasks delay loop, store flushed", "TPE(2) submit+result"), 12, True),
        ),
        (
            "delay loop: per-task cost ≤ 1.5x the persisting floor",
            *judged(ratios("nbtasks delay loop, store flushed", FLOOR), 1.5, True),
        ),
    ]
    rep.line(
        "Targets, judged on the median of the same-run ratios;"
        " the nbtasks clock stops once the store is flushed:"
    )
    rep.table(["target", "measured", "verdict"], targets)

    if errors:
        rep.line("ERRORS:")
        for e in errors:
            for text in e.rstrip().splitlines():
                rep.line("    " + text)


if __name__ == "__main__":
    run_main("throughput", body)
