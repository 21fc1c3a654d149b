"""Process pools side by side: nbtasks' process executor vs ProcessPoolExecutor, loky, joblib.

    .venv/bin/python benchmarks/processes.py            # 3 runs (~1-2 min)
    .venv/bin/python benchmarks/processes.py --runs 1 --samples 100

Every pool has 2 worker processes. In one run, the script measures for each of them (issue 3):

- **cold start**: from creating the pool (for nbtasks: from ``App(store=...)``) to the first
  task's first line, and to its result back in the caller. Each pool starts on a quiet machine:
  the pools before it keep starting their other workers after their first task returns (a
  spawned interpreter takes ~100 ms of CPU), so each cold start waits for every worker of the
  pool before it to be up (``settle``) and then for SETTLE seconds;
- **submit→start on a warm idle pool** (notes/perf-baselines.md §4c): before each sample every
  pool idles 5-15 ms (uniformly random), then t0 = perf_counter() is taken and one task is
  submitted; the task returns perf_counter() from its first line (CLOCK_MONOTONIC, the same in
  every process). The pools are sampled alternately, in random order at each step, so they see
  the same machine noise;
- **tasks/s**: 2,000 small tasks (``x * x``) submitted one at a time, then every result
  collected; joblib runs ``Parallel(n_jobs=2, backend="loky", batch_size=1)`` over the same 2,000
  calls.

The peers persist nothing. nbtasks runs the full lifecycle with every state change persisted: the
READY record committed at submit, RUNNING and the result committed by the worker (which owns the
record) before it reports back; its task functions are defined in ``__main__``, as in a notebook,
so they travel by value with cloudpickle. ProcessPoolExecutor (spawn, forkserver) cannot ship
``__main__`` functions by value: its workers re-import this script as ``__mp_main__``.

nbtasks is measured on both of its paths (``process_start="fork"``: workers forked by the zygote,
Linux only; ``"spawn"``: each worker a new interpreter, the path of macOS and Windows), each beside
loky in the same run. Targets for each path, judged on the same-run ratios (median over runs): a
delay() loop's tasks/s ≥ 0.5x loky's, one map()'s ≥ 1.0x; submit→start median ≤ 1.2x loky's; p99
< 2 ms (over every sample of every run); cold start < 100 ms on the fork path, ≤ 1.2x loky's own
cold start on the spawn path (median over runs).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import REPO, Report, mmm, percentile, run_main, tempdir, try_import_nbtasks, verdict

WORKERS = 2
NB_MAP = f"nbtasks App(process_workers={WORKERS}), t.map(range(n))"
NB_THREAD = "(reference) nbtasks thread executor, same delay() loop"
JOBLIB = f"joblib Parallel({WORKERS}, loky, batch_size=1)"
N_TASKS = 2000
SAMPLES = 300
SETTLE = 0.5  # seconds of quiet before each cold start
WARMUP = 30


def now() -> float:
    return time.perf_counter()


def square(x: int) -> int:
    return x * x


def rendezvous(folder: str, n: int) -> int:
    """Return once ``n`` calls of it run at the same time, each in a worker of its own (each
    leaves a file named by its pid in ``folder``); its pid."""
    import os

    open(os.path.join(folder, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 30
    while len(os.listdir(folder)) < n and time.monotonic() < deadline:
        time.sleep(0.002)
    return os.getpid()


# --------------------------------------------------------------------------- the pools


class Pool:
    """One framework: how to start it, submit one call and wait, and stop it."""

    name = ""

    def start(self) -> None: ...

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def result(self, handle: Any) -> Any: ...

    def stop(self) -> None: ...

    def many(self, n: int) -> list[Any]:
        handles = [self.submit(square, i) for i in range(n)]
        return [self.result(h) for h in handles]


class PPE(Pool):
    def __init__(self, method: str) -> None:
        self.method = method
        self.name = f"ProcessPoolExecutor({WORKERS}, {method})"
        self.ex: ProcessPoolExecutor | None = None

    def start(self) -> None:
        self.ex = ProcessPoolExecutor(WORKERS, mp_context=mp.get_context(self.method))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.ex is not None
        return self.ex.submit(fn, *args)

    def result(self, handle: Any) -> Any:
        return handle.result(timeout=60)

    def stop(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=True)
            self.ex = None


class Loky(Pool):
    name = f"loky get_reusable_executor({WORKERS})"

    def __init__(self) -> None:
        self.ex: Any = None

    def start(self) -> None:
        from joblib.externals.loky import get_reusable_executor

        self.ex = get_reusable_executor(max_workers=WORKERS, timeout=3600)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.ex.submit(fn, *args)

    def result(self, handle: Any) -> Any:
        return handle.result(timeout=60)

    def stop(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=True, kill_workers=True)
            self.ex = None


def nb_name(start: str) -> str:
    return f"nbtasks App(process_workers={WORKERS}, process_start={start!r})"


def nb_map_name(start: str) -> str:
    return f"{NB_MAP} [{start}]"


class Nbtasks(Pool):
    def __init__(self, nbtasks: Any, store_dir: Any, start: str = "fork") -> None:
        self.start_method = start
        self.name = nb_name(start)
        self.nbtasks = nbtasks
        self.store_dir = store_dir
        self.count = 0
        self.app: Any = None
        self.tasks: dict[Any, Any] = {}  # the function it stands for -> its nbtasks task

    def start(self) -> None:
        self.count += 1
        app = self.nbtasks.App(
            store=self.store_dir / f"s{self.count}",
            process_workers=WORKERS,
            name="bench",
            process_start=self.start_method,
        )
        self.app = app

        # Defined here, in __main__, as a notebook cell would: they travel by value.
        def now_() -> float:
            return time.perf_counter()

        def square_(x: int) -> int:
            return x * x

        self.tasks = {
            now: app.task(now_, executor="process", name="now"),
            square: app.task(square_, executor="process", name="square"),
            rendezvous: app.task(rendezvous, executor="process", name="rendezvous"),
        }

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.tasks[fn].delay(*args)

    def result(self, handle: Any) -> Any:
        return handle.get(timeout=60)

    def stop(self) -> None:
        if self.app is not None:
            self.app.shutdown(wait=True)
            self.app = None

    def thread_many(self, n: int) -> list[Any]:
        """Reference: the same delay() loop on nbtasks' thread executor (same store, same
        per-submit commit), to show what the submit path itself costs."""
        t = self.tasks.get("thread")
        if t is None:
            t = self.tasks["thread"] = self.app.task(lambda x: x * x, name="square_thread")
        handles = [t.delay(i) for i in range(n)]
        return [h.get(timeout=60) for h in handles]

    def map(self, n: int) -> list[Any]:
        """The same tasks submitted with one ``map`` (one commit for all their records)."""
        return self.tasks[square].map(range(n)).get(timeout=60)  # type: ignore[no-any-return]


def joblib_many(n: int) -> list[Any]:
    from joblib import Parallel, delayed

    return Parallel(n_jobs=WORKERS, backend="loky", batch_size=1)(  # type: ignore[no-any-return]
        delayed(square)(i) for i in range(n)
    )


# --------------------------------------------------------------------------- measurements


def settle(pool: Pool, folder: Path) -> None:
    """Wait until every worker of ``pool`` is up: WORKERS tasks, each waiting for all of them
    to run at once, so each runs in a worker of its own."""
    folder.mkdir()
    handles = [pool.submit(rendezvous, str(folder), WORKERS) for _ in range(WORKERS)]
    pids = {pool.result(h) for h in handles}
    assert len(pids) == WORKERS, f"{pool.name}: the settling tasks ran in {len(pids)} workers"


def cold_start(pool: Pool) -> tuple[float, float]:
    """(create → first task's first line, create → its result back), in seconds."""
    t0 = time.perf_counter()
    pool.start()
    h = pool.submit(now)
    started = pool.result(h)
    t1 = time.perf_counter()
    return started - t0, t1 - t0


def latency_samples(pools: list[Pool], samples: int) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {p.name: [] for p in pools}
    for p in pools:  # warm every worker
        for _ in range(WARMUP):
            p.result(p.submit(now))
    for _ in range(samples):
        order = list(pools)
        random.shuffle(order)
        for p in order:
            time.sleep(random.uniform(0.005, 0.015))
            t0 = time.perf_counter()
            h = p.submit(now)
            started = p.result(h)
            t1 = time.perf_counter()
            out[p.name].append((started - t0, t1 - t0))
    return out


def throughput(run: Callable[[int], list[Any]], n: int) -> float:
    t0 = time.perf_counter()
    values = run(n)
    dt = time.perf_counter() - t0
    assert values == [i * i for i in range(n)], "wrong results"
    return n / dt


def compile_sources() -> None:
    """Write .pyc files for nbtasks and this folder, as ``pip install`` does for a package.
    This machine sets PYTHONDONTWRITEBYTECODE=1, so without them every new interpreter (each
    peer's spawned workers, nbtasks' zygote) would compile these sources again (~20 ms)."""
    import compileall

    for folder in (REPO / "nbtasks", REPO / "benchmarks"):
        compileall.compile_dir(str(folder), quiet=1)


def body(rep: Report) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    ap.add_argument("--samples", type=int, default=SAMPLES, help="latency samples per run/pool")
    ap.add_argument("-n", type=int, default=N_TASKS, help="tasks per throughput measurement")
    ap.add_argument("--no-nbtasks", action="store_true", help="peers only")
    args = ap.parse_args()
    compile_sources()
    starts = ["fork", "spawn"]
    nbtasks, nb_err = (None, "skipped (--no-nbtasks)") if args.no_nbtasks else try_import_nbtasks()
    rep.line(
        f"{WORKERS} worker processes per pool; {args.runs} run(s); latency: {args.samples} samples"
        f" per run and pool (idle 5-15 ms before each); throughput: {args.n:,} tasks. Times in µs"
        " unless marked."
    )
    if nbtasks is None:
        rep.line(f"nbtasks NOT MEASURED: {nb_err}")
    else:
        from nbtasks.executors import fork_unavailable

        why = fork_unavailable()
        if why:
            starts = ["spawn"]
            rep.line(f"nbtasks' fork path NOT MEASURED here: {why}")
    rep.line()
    errors: list[str] = []
    cold: dict[str, list[tuple[float, float]]] = {}
    lat: dict[str, list[list[tuple[float, float]]]] = {}
    tput: dict[str, list[float]] = {}
    with tempdir("nbtasks-bench-proc-") as tmp:
        for run in range(args.runs):
            pools: list[Pool] = [PPE("spawn"), PPE("forkserver"), Loky()]
            if nbtasks is not None:
                for start in starts:
                    pools.append(Nbtasks(nbtasks, tmp / f"run{run}-{start}", start))
            started: list[Pool] = []
            try:
                for p in pools:
                    time.sleep(SETTLE)
                    cold.setdefault(p.name, []).append(cold_start(p))
                    started.append(p)
                    settle(p, tmp / f"settle-{run}-{len(started)}")
                for name, s in latency_samples(pools, args.samples).items():
                    lat.setdefault(name, []).append(s)
                for p in pools:
                    tput.setdefault(p.name, []).append(throughput(p.many, args.n))
                    if isinstance(p, Nbtasks):
                        tput.setdefault(nb_map_name(p.start_method), []).append(
                            throughput(p.map, args.n)
                        )
                        if p.start_method == starts[0]:
                            tput.setdefault(NB_THREAD, []).append(throughput(p.thread_many, args.n))
            except Exception:
                errors.append(traceback.format_exc())
            finally:
                for p in started:
                    p.stop()
            try:  # after loky's executor is stopped: joblib makes its own
                tput.setdefault(JOBLIB, []).append(throughput(joblib_many, args.n))
            except Exception:
                errors.append(traceback.format_exc())
            print(f"[run {run + 1}/{args.runs} done]", flush=True)
    report(rep, cold, lat, tput, starts if nbtasks is not None else [])
    if errors:
        rep.line("ERRORS:")
        for e in errors:
            for text in e.splitlines():
                rep.line("    " + text)


def _us(x: float) -> float:
    return x * 1e6


def report(
    rep: Report,
    cold: dict[str, list[tuple[float, float]]],
    lat: dict[str, list[list[tuple[float, float]]]],
    tput: dict[str, list[float]],
    starts: list[str],
) -> None:
    rep.line("Cold start (ms): create the pool, run one task (min / median / max over runs)")
    rows = []
    for name, vals in cold.items():
        s = mmm([v[0] * 1e3 for v in vals])
        r = mmm([v[1] * 1e3 for v in vals])
        rows.append([name, *s, *r])
    rep.table(["pool", "→start min", "median", "max", "→result min", "median", "max"], rows)

    rep.line("Submit→start, one task on a warm idle pool (µs): per-run medians and p99s as")
    rep.line("min / median / max over runs; pooled p99 over every sample of every run")
    rows = []
    for name, runs in lat.items():
        med = mmm([_us(statistics.median([s[0] for s in r])) for r in runs])
        p99 = mmm([_us(percentile([s[0] for s in r], 99)) for r in runs])
        pooled = _us(percentile([s[0] for r in runs for s in r], 99))
        rt = mmm([_us(statistics.median([s[1] for s in r])) for r in runs])
        rows.append([name, *med, *p99, pooled, rt[1]])
    rep.table(
        [
            "pool",
            "median min",
            "median",
            "max",
            "p99 min",
            "p99",
            "max",
            "pooled p99",
            "round trip median",
        ],
        rows,
    )

    rep.line(f"Throughput: {N_TASKS:,}-task figure as tasks/s (min / median / max over runs)")
    rows = [[name, *mmm(vals)] for name, vals in tput.items()]
    rep.table(["pool", "tasks/s min", "median", "max"], rows)

    for start in starts:
        report_targets(rep, start, cold, lat, tput)


def report_targets(
    rep: Report,
    start: str,
    cold: dict[str, list[tuple[float, float]]],
    lat: dict[str, list[list[tuple[float, float]]]],
    tput: dict[str, list[float]],
) -> None:
    """The issue's targets for one path, each beside loky in the same run."""
    nb, loky = nb_name(start), Loky.name
    if nb not in lat or loky not in lat or nb not in tput:
        rep.line(f"Targets [{start}]: NOT RUN")
        return

    def ratios(name: str) -> list[float]:
        return [a / b for a, b in zip(tput[name], tput[loky], strict=True)]

    lat_ratio = statistics.median(
        statistics.median(s[0] for s in a) / statistics.median(s[0] for s in b)
        for a, b in zip(lat[nb], lat[loky], strict=True)
    )
    p99 = _us(percentile([s[0] for r in lat[nb] for s in r], 99))
    cold_ms = statistics.median(v[0] for v in cold[nb]) * 1e3
    loky_cold_ms = statistics.median(v[0] for v in cold[loky]) * 1e3
    rows = []
    for name, what, want in ((nb, "delay() loop", 0.5), (nb_map_name(start), "one map()", 1.0)):
        runs = ratios(name)
        r = statistics.median(runs)
        shown = f"{r:.3f}x (runs: {', '.join(f'{x:.2f}' for x in runs)})"
        rows.append(
            [f"tasks/s, {what}, >= {want}x loky (same-run ratio)", shown, verdict(r >= want)]
        )
    rows += [
        [
            "submit→start median <= 1.2x loky (same-run ratio)",
            f"{lat_ratio:.2f}x",
            verdict(lat_ratio <= 1.2),
        ],
        ["submit→start p99 < 2 ms (pooled)", f"{p99:,.0f} µs", verdict(p99 < 2000)],
    ]
    if start == "fork":
        rows.append(
            [
                "cold start < 100 ms (create → first line)",
                f"{cold_ms:.1f} ms",
                verdict(cold_ms < 100),
            ]
        )
    else:
        rows.append(
            [
                "cold start <= 1.2x loky's own (create → first line)",
                f"{cold_ms:.1f} ms vs {loky_cold_ms:.1f} ms",
                verdict(cold_ms <= 1.2 * loky_cold_ms),
            ]
        )
    rep.line(f"Targets [{start} path]")
    rep.table(["target", "measured", "verdict"], rows)


if __name__ == "__main__":
    run_main("processes", body)
