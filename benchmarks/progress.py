"""Cost of ``ctx.progress(i, N)`` in a running nbtasks task, and how it reaches the store.

    .venv/bin/python benchmarks/progress.py              # 5 runs (~40 s)
    .venv/bin/python benchmarks/progress.py --runs 1
    .venv/bin/python benchmarks/progress.py --monitor thread   # store watched from a thread

What is measured, in each run, with N = 10,000,000 calls in a tight loop:

- a bare ``for i in range(N): pass`` loop (ns per iteration);
- a bare counter method ``obj.progress(i, N)`` that only stores the value (the floor of a call);
- ``tqdm(total=N, file=io.StringIO())`` with ``bar.update(1)`` per iteration;
- nbtasks: a thread task on ``App(store=<temp dir>, workers=2)`` whose first parameter is annotated
  ``nbtasks.Context`` runs ``ctx.progress(i, N)`` N times, then ``ctx.progress(N, N)``. The loop
  is timed inside the task (perf_counter before and after), so dispatch is not included.

The store is watched while the nbtasks loop runs: a monitor opens its own ``nbtasks.App`` on the
same store and reads ``app.result(id).progress`` every 10 ms. By default the monitor is a separate
process (``--monitor process``): it then certainly reads the store, not the owner's memory, and it
does not compete with the loop for the GIL (perf_counter is CLOCK_MONOTONIC, the same clock in
both processes). ``--monitor thread`` runs it in a thread of this process, on a second App object.

From the values the monitor sees:
- store writes/s = (distinct progress values seen while the loop ran - 1) / loop duration: the
  first write comes with the first call, a throttle of 10/s allows one more per 0.1 s after it.
  At 10 ms sampling every write is seen if there are at most ~100/s: exact for the target.
- lag = for each new value first seen at time ts, after value p was in the store: ts minus the
  time of call p+1 (the oldest call the store did not yet reflect). The loop reads the clock
  after every 65,536 calls (~15-40 ms; nothing is added to the calls themselves), and the time
  of call v is interpolated within its chunk. A tight loop does not run at a steady rate on this
  VM: interpolating over the whole loop, as this did at first, was off by up to 0.2 s either way
  (measured), so the lag it gave was off by as much.
  The final value's lag is measured from the end of the loop. Resolution: +10 ms (sampling).

Targets (issue 2): ``progress()`` no slower than ``tqdm.update(1)`` (same-run ratio ≤ 1); at most
10 store writes per second per task; at most 0.2 s from a call to the store.
"""

import argparse
import io
import json
import statistics
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from _common import Report, mmm, run_main, tempdir, try_import_nbtasks, verdict

N = 10_000_000
CHUNK = 1 << 16  # calls between two clock readings of the nbtasks loop
INTERVAL = 0.010
GO = threading.Event()
CONTEXT_CLS: Any = None  # nbtasks.Context, set once nbtasks is imported


class Counter:
    """The floor: a method call that only stores the value."""

    def __init__(self) -> None:
        self.current = 0
        self.total: int | None = None

    def progress(self, current: int, total: int | None = None) -> None:
        self.current = current
        self.total = total


def loop_bare(n: int) -> float:
    t0 = time.perf_counter()
    for _i in range(n):
        pass
    return time.perf_counter() - t0


def loop_method(n: int) -> float:
    c = Counter()
    t0 = time.perf_counter()
    for i in range(n):
        c.progress(i, n)
    return time.perf_counter() - t0


def loop_tqdm(n: int) -> float:
    from tqdm import tqdm

    bar = tqdm(total=n, file=io.StringIO())
    t0 = time.perf_counter()
    for _i in range(n):
        bar.update(1)
    dt = time.perf_counter() - t0
    bar.close()
    return dt


def spin(ctx: Any, n: int) -> dict[str, float]:
    """The nbtasks task: waits for GO (the monitor is ready), then the tight loop."""
    if not isinstance(ctx, CONTEXT_CLS):
        raise TypeError(f"the parameter annotated nbtasks.Context received {type(ctx).__name__}")
    if not GO.wait(120):
        raise TimeoutError("GO was never set")
    progress, clock, marks = ctx.progress, time.perf_counter, []
    t0 = clock()
    for start in range(0, n, CHUNK):  # one clock reading per CHUNK calls: see t_call
        for i in range(start, min(n, start + CHUNK)):
            progress(i, n)
        marks.append(clock())
    t1 = marks[-1] if marks else t0
    ctx.progress(n, n)
    t2 = time.perf_counter()
    return {"t0": t0, "t1": t1, "t2": t2, "marks": marks}


# --------------------------------------------------------------------------- the store monitor


def watch(
    nbtasks: Any, store: str, task_id: str, ready: Any, limit: float = 120.0
) -> list[list[Any]]:
    """Sample the stored progress every INTERVAL through a fresh App: [[ts, current, status]]."""
    app = nbtasks.App(store=store, workers=1)
    try:
        app.result(task_id)
        ready()
        seen: list[list[Any]] = []
        last: Any = object()
        deadline = time.perf_counter() + limit
        nxt = time.perf_counter()
        while time.perf_counter() < deadline:
            ts = time.perf_counter()
            r = app.result(task_id)
            p = r.progress
            cur = None if p is None else p.current
            if cur != last:
                seen.append([ts, cur, str(r.status)])
                last = cur
            if r.is_finished:
                seen.append([ts, cur, str(r.status)])
                break
            nxt += INTERVAL
            time.sleep(max(0.0, nxt - time.perf_counter()))
        return seen
    finally:
        app.shutdown(wait=True)


def monitor_main(store: str, task_id: str) -> None:
    """Entry point of the monitor subprocess: prints 'ready', then one JSON line of samples."""
    nbtasks, err = try_import_nbtasks()
    if nbtasks is None:
        print(json.dumps({"error": err}), flush=True)
        return
    try:
        seen = watch(nbtasks, store, task_id, lambda: print("ready", flush=True))
        print(json.dumps({"seen": seen}), flush=True)
    except Exception:
        print(json.dumps({"error": traceback.format_exc()}), flush=True)


class Monitor:
    def __init__(self, nbtasks: Any, mode: str, store: Path, task_id: str) -> None:
        self.mode = mode
        self.result: dict[str, Any] = {}
        if mode == "process":
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--_monitor", str(store), task_id],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().strip()
            if line != "ready":
                rest = self.proc.stdout.read()
                self.proc.wait(30)
                raise RuntimeError(f"monitor subprocess did not start: {line}\n{rest}")
        else:
            ev = threading.Event()

            def run() -> None:
                try:
                    self.result = {"seen": watch(nbtasks, str(store), task_id, ev.set)}
                except Exception:
                    self.result = {"error": traceback.format_exc()}
                    ev.set()

            self.thread = threading.Thread(target=run, name="store-monitor", daemon=True)
            self.thread.start()
            if not ev.wait(60):
                raise RuntimeError("monitor thread did not start")

    def collect(self) -> list[list[Any]]:
        if self.mode == "process":
            out, _ = self.proc.communicate(timeout=180)
            self.result = json.loads(out.strip().splitlines()[-1])
        else:
            self.thread.join(180)
        if "error" in self.result:
            raise RuntimeError("store monitor failed:\n" + str(self.result["error"]))
        return self.result["seen"]


def analyse(seen: list[list[Any]], times: dict[str, float], n: int) -> dict[str, Any]:
    """Writes/s and lags from the monitor's samples (see the module docstring)."""
    t0, t1, marks = times["t0"], times["t1"], times["marks"]

    def t_call(v: int) -> float:
        """When call v was made: interpolated within its chunk, whose end the loop recorded."""
        if v >= n:
            return t1
        k = v // CHUNK
        start = t0 if k == 0 else marks[k - 1]
        return start + (marks[k] - start) * (v - k * CHUNK) / (min(n, (k + 1) * CHUNK) - k * CHUNK)

    values = [(ts, cur) for ts, cur, _ in seen if cur is not None]
    distinct: list[tuple[float, int]] = []
    for ts, cur in values:
        if not distinct or cur != distinct[-1][1]:
            distinct.append((ts, cur))
    during = [(ts, v) for ts, v in distinct if v < n]
    lags = []
    prev = -1
    for ts, v in distinct:
        lags.append(ts - t_call(prev + 1))
        prev = v
    final = [ts for ts, v in distinct if v >= n]
    return {
        "writes_during": len(during),
        # A throttled reporter writes at its first call: count the writes after that one.
        "writes_per_s": max(0, len(during) - 1) / (t1 - t0),
        "max_lag": max(lags) if lags else float("nan"),
        "final_lag": (final[0] - t1) if final else float("nan"),
        "final_seen": bool(final),
        "distinct": len(distinct),
    }


# --------------------------------------------------------------------------- main


def body(rep: Report) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs (default 5)")
    ap.add_argument("-n", type=int, default=N, help=f"calls per loop (default {N:,})")
    ap.add_argument("--monitor", choices=["process", "thread"], default="process")
    ap.add_argument("--no-nbtasks", action="store_true")
    args = ap.parse_args()
    n = args.n

    nbtasks, nb_err = (None, "skipped (--no-nbtasks)") if args.no_nbtasks else try_import_nbtasks()
    rep.line(
        f"{n:,} calls per loop, {args.runs} run(s);"
        f" store monitor: {args.monitor}, every {INTERVAL * 1e3:.0f} ms."
    )
    if nbtasks is None:
        rep.line(f"nbtasks NOT MEASURED: {nb_err}")
    rep.line()

    ns: dict[str, list[float]] = {}
    stores: list[dict[str, Any]] = []
    errors: list[str] = []
    for run in range(1, args.runs + 1):
        line = []
        for name, fn in (
            ("bare loop", loop_bare),
            ("counter method .progress(i, N)", loop_method),
            ("tqdm.update(1)", loop_tqdm),
        ):
            v = fn(n) / n * 1e9
            ns.setdefault(name, []).append(v)
            line.append(f"{name} {v:.1f}")
        if nbtasks is not None:
            try:
                v, st = run_nbtasks(nbtasks, n, args.monitor)
                ns.setdefault("nbtasks ctx.progress(i, N)", []).append(v)
                stores.append(st)
                line.append(
                    f"nbtasks {v:.1f} (store: {st['writes_during']} writes,"
                    f" {st['writes_per_s']:.1f}/s, max lag {st['max_lag'] * 1e3:.0f} ms,"
                    f" final lag {st['final_lag'] * 1e3:.0f} ms)"
                )
            except Exception:
                errors.append(f"nbtasks run {run}:\n" + traceback.format_exc())
                line.append("nbtasks FAILED")
        rep.line(f"  run {run} (ns/call): " + "; ".join(line))
    rep.line()

    rows = []
    for name, vals in ns.items():
        ratio_t = [a / b for a, b in zip(vals, ns["tqdm.update(1)"], strict=False)]
        ratio_b = [a / b for a, b in zip(vals, ns["counter method .progress(i, N)"], strict=False)]
        rows.append(
            [
                name,
                *mmm(vals),
                f"{statistics.median(ratio_t):.2f}x",
                f"{statistics.median(ratio_b):.2f}x",
            ]
        )
    rep.line("ns per call (min / median / max over runs) and the median of the same-run ratios:")
    rep.table(["loop body", "ns min", "median", "max", "vs tqdm.update", "vs counter method"], rows)

    if stores:
        srows = [
            [
                i + 1,
                s["writes_during"],
                s["writes_per_s"],
                s["max_lag"] * 1e3,
                s["final_lag"] * 1e3,
                "yes" if s["final_seen"] else "NO",
            ]
            for i, s in enumerate(stores)
        ]
        rep.line(
            f"What the store showed a second App ({args.monitor} monitor, sampling every 10 ms):"
        )
        rep.table(
            [
                "run",
                "writes in loop",
                "writes/s",
                "max lag ms",
                "final lag ms",
                "final value stored",
            ],
            srows,
        )

    targets: list[list[str]] = []
    if "nbtasks ctx.progress(i, N)" in ns:
        r = [
            a / b
            for a, b in zip(ns["nbtasks ctx.progress(i, N)"], ns["tqdm.update(1)"], strict=False)
        ]
        med = statistics.median(r)
        targets.append(
            ["progress() no slower than tqdm.update(1)", f"{med:.2f}x tqdm", verdict(med <= 1.0)]
        )
    else:
        targets.append(["progress() no slower than tqdm.update(1)", "n/a", verdict(None)])
    if stores:
        wps = max(s["writes_per_s"] for s in stores)
        lag = max(max(s["max_lag"], s["final_lag"]) for s in stores)
        all_final = all(s["final_seen"] for s in stores)
        targets.append(
            ["≤ 10 store writes/s per task (worst run)", f"{wps:.1f}/s", verdict(wps <= 10.0)]
        )
        targets.append(
            [
                "≤ 0.2 s from a call to the store (worst run, +10 ms resolution)",
                f"{lag * 1e3:.0f} ms",
                verdict(lag <= 0.2 and all_final),
            ]
        )
    else:
        targets.append(["≤ 10 store writes/s per task", "n/a", verdict(None)])
        targets.append(["≤ 0.2 s from a call to the store", "n/a", verdict(None)])
    rep.line("Targets (issue 2):")
    rep.table(["target", "measured", "verdict"], targets)

    if errors:
        rep.line("ERRORS:")
        for e in errors:
            for text in e.rstrip().splitlines():
                rep.line("    " + text)


def run_nbtasks(nbtasks: Any, n: int, mode: str) -> tuple[float, dict[str, Any]]:
    """One monitored nbtasks loop: (ns per call, store analysis)."""
    global CONTEXT_CLS
    CONTEXT_CLS = nbtasks.Context
    spin.__annotations__["ctx"] = nbtasks.Context
    GO.clear()
    with tempdir("nbtasks-progress-") as store:
        app = nbtasks.App(store=store, workers=2)
        try:
            t = app.task(spin)
            r = t.delay(n)
            try:
                mon = Monitor(nbtasks, mode, store, r.id)
            finally:
                GO.set()
            times = r.get(timeout=300)
            seen = mon.collect()
        finally:
            app.shutdown(wait=True)
    return (times["t1"] - times["t0"]) / n * 1e9, analyse(seen, times, n)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_monitor":
        monitor_main(sys.argv[2], sys.argv[3])
    else:
        run_main("progress", body)
