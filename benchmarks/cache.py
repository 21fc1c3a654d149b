"""Caching large values (issue 16, part B), against joblib in the same run.

    .venv/bin/python benchmarks/cache.py            # ~1-2 min
    .venv/bin/python benchmarks/cache.py --runs 5

1. **Key of a big argument**: the cache key of a call with one 200 MB float64 array
   (``nbtasks._codec.cache_key``, what ``delay()`` computes for ``cache=True``) vs
   ``joblib.hash`` of the same array, alternately, ``--runs`` times each.
2. **A hit after a restart**: a task returning a 200 MB float64 array (``cache=True``) is run
   once into a store, and a ``joblib.Memory`` cached function returning the same array is called
   once into a cache directory. Then, each in a fresh process (so both read from disk; the page
   cache is warm for both, since both were just written), the clock runs from the call to the
   value in hand: nbtasks ``f.delay(seed).get()`` vs joblib ``f(seed)``; and with mapping,
   ``f.delay(seed).get(mmap=True)`` vs ``Memory(mmap_mode="r")``'s ``f(seed)``. Opening the App
   / making the Memory and the imports (numpy's included) are not timed; the first ``delay()``
   of a process computes the task's code hash (``inspect.getsource``), which is. The processes
   alternate.
3. **Peak memory while storing** a 200 MB result: a fresh process makes the array, runs a thread
   task returning it, ``get()``s it and shuts the App down (the value file written); the
   process's RSS high-water mark (``resource.getrusage``, or psutil's peak where there is no
   ``resource``) minus its RSS before the array was made, over the array's size.
4. **map with the cache**: ``t.map(range(10_000)).get()`` with ``cache=True`` vs the same map of
   a task without the cache (new inputs each: nothing hits), fresh Apps on temp stores; then a
   second map of the same 10,000 inputs, all hits. The clock stops when ``get()`` returns. (The
   ``map()`` call alone, which commits the records and their cache keys, takes ~2x the
   uncached call; running the tasks then costs the same with and without the cache.)

Targets (issue 16): key ≤ 1.0x joblib.hash; hit ≤ 0.5x joblib.Memory; mapped hit ≤ 2x
joblib's ``mmap_mode="r"``; peak while storing ≤ 1.2x the value; a cached map of new items ≤
1.5x the uncached one; a map of 10,000 hits < 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from _common import Report, report_errors, run_main, tempdir, try_import_nbtasks, verdict

N = 25_000_000  # float64: 200 MB
MAP_N = 10_000


def make_array(seed: int) -> Any:
    """The 200 MB value: what the cached functions return."""
    import numpy as np

    return np.random.default_rng(seed).random(N)


def define_nbtasks(app: Any) -> Any:
    """The cached task, defined the same way in every process (same name, same code)."""

    @app.task(name="bench.make_array", cache=True)
    def make(seed: int) -> Any:
        return make_array(seed)

    return make


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    try:
        import resource
    except ImportError:  # Windows: psutil's peak working set
        import psutil

        return int(psutil.Process().memory_info().peak_wset)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB


# --------------------------------------------------------------------------- child processes


def child(kind: str, where: str) -> dict[str, Any]:
    """One measurement in this (fresh) process; printed as JSON by ``main``. numpy is
    imported before the clock starts on both sides (joblib imports it; a notebook that works
    with arrays has)."""
    import numpy  # noqa: F401

    if kind in ("nbtasks", "nbtasks-mmap"):
        import nbtasks

        with nbtasks.App(store=where) as app:
            make = define_nbtasks(app)
            t0 = time.perf_counter()
            r = make.delay(1)
            value = r.get(60, mmap=kind == "nbtasks-mmap")
            s = time.perf_counter() - t0
            return {"s": s, "cached": r.cached, "sum": float(value[:1000].sum())}
    if kind in ("joblib", "joblib-mmap"):
        import joblib

        memory = joblib.Memory(where, mmap_mode="r" if kind == "joblib-mmap" else None, verbose=0)
        cached = memory.cache(make_array)
        t0 = time.perf_counter()
        value = cached(1)
        s = time.perf_counter() - t0
        return {"s": s, "cached": True, "sum": float(value[:1000].sum())}
    if kind == "peak":
        import nbtasks

        with tempdir("nbtasks-bench-peak-") as store:
            app = nbtasks.App(store=store, workers=1)

            @app.task
            def ret(x: Any) -> Any:
                return x

            ret.delay(list(range(10))).get(10)  # imports and threads up
            ret.delay(("warm", b"x" * 200_000)).get(10)
            app.store.flush()
            before = _rss()
            arr = make_array(2)

            @app.task
            def produce() -> Any:
                return arr

            produce.delay().get(60)
            app.shutdown(wait=True)
            peak = _peak_rss()
            return {"ratio": (peak - before) / arr.nbytes, "peak": peak, "before": before}
    raise ValueError(f"unknown child kind {kind!r}")


def run_child(kind: str, where: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(where)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {kind} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- measurements


def measure_keys(nbtasks: Any, runs: int) -> tuple[list[float], list[float]]:
    import joblib

    from nbtasks import _codec

    arr = make_array(0)
    mine: list[float] = []
    theirs: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        _codec.cache_key("bench.make_array", "h", (arr,), {})
        mine.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        joblib.hash(arr)
        theirs.append(time.perf_counter() - t0)
    return mine, theirs


def measure_hits(nbtasks: Any, runs: int, root: Path) -> dict[str, list[float]]:
    import joblib

    store, jdir = root / "store", root / "joblib"
    with nbtasks.App(store=store) as app:
        define_nbtasks(app).delay(1).get(120)
    joblib.Memory(jdir, verbose=0).cache(make_array)(1)
    out: dict[str, list[float]] = {
        k: [] for k in ("nbtasks", "joblib", "nbtasks-mmap", "joblib-mmap")
    }
    for _ in range(runs):
        for kind in out:
            r = run_child(kind, store if kind.startswith("nbtasks") else jdir)
            if not r["cached"]:
                raise RuntimeError(f"{kind}: the call did not hit the cache")
            out[kind].append(r["s"])
    return out


def measure_maps(nbtasks: Any, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"plain": [], "cached": [], "hits": []}
    for run in range(runs):
        base = run * MAP_N * 10
        for variant in ("plain", "cached"):
            with tempdir("nbtasks-bench-map-") as store, nbtasks.App(store=store, workers=2) as app:

                @app.task(name="bench.inc", cache=variant == "cached")
                def inc(x: int) -> int:
                    return x + 1

                inc.map(range(base - 500, base)).get(60)  # warm
                items = range(base, base + MAP_N)
                t0 = time.perf_counter()
                values = inc.map(items).get(120)
                out[variant].append(time.perf_counter() - t0)
                assert values == [x + 1 for x in items]
                if variant == "cached":
                    t0 = time.perf_counter()
                    again = inc.map(items)
                    values = again.get(120)
                    out["hits"].append(time.perf_counter() - t0)
                    assert values == [x + 1 for x in items]
                    hits = sum(r.cached for r in again.results)
                    if hits != MAP_N:
                        out.setdefault("hit_counts", []).append(float(hits))
    return out


def body(rep: Report) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    nbtasks, err = try_import_nbtasks()
    if nbtasks is None:
        rep.line(f"nbtasks could not be imported: {err}. NOT RUN.")
        return
    errors: list[str] = []
    rows: list[list[Any]] = []
    targets: list[list[str]] = []
    raw: dict[str, list[float]] = {}

    def ratio_row(label: str, mine: list[float], theirs: list[float], peer: str, target: float):
        ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
        r = statistics.median(ratios)
        rows.append(
            [
                label,
                f"{statistics.median(mine) * 1e3:.1f} ms",
                f"{statistics.median(theirs) * 1e3:.1f} ms ({peer})",
                f"{r:.2f}x",
            ]
        )
        targets.append([f"{label} ≤ {target:g}x {peer}", f"{r:.2f}x", verdict(r <= target)])

    try:
        mine, theirs = measure_keys(nbtasks, args.runs)
        ratio_row("key of a 200 MB array", mine, theirs, "joblib.hash", 1.0)
    except Exception:
        errors.append(traceback.format_exc())
        targets.append(["key ≤ 1.0x joblib.hash", "n/a", "n/a"])
    try:
        with tempdir("nbtasks-bench-cache-") as root:
            hits = measure_hits(nbtasks, args.runs, root)
        raw.update({f"each run, hit ({k})": v for k, v in hits.items()})
        ratio_row("hit after restart, read", hits["nbtasks"], hits["joblib"], "joblib.Memory", 0.5)
        ratio_row(
            "hit after restart, mapped",
            hits["nbtasks-mmap"],
            hits["joblib-mmap"],
            'Memory(mmap_mode="r")',
            2.0,
        )
    except Exception:
        errors.append(traceback.format_exc())
        targets.append(["hits after restart", "n/a", "n/a"])
    try:
        peaks = [run_child("peak", Path(".")) for _ in range(args.runs)]
        ratios = [p["ratio"] for p in peaks]
        r = statistics.median(ratios)
        rows.append(["peak RSS while storing 200 MB", f"{r:.2f}x the value", "", ""])
        targets.append(["peak RSS while storing ≤ 1.2x the value", f"{r:.2f}x", verdict(r <= 1.2)])
    except Exception:
        errors.append(traceback.format_exc())
        targets.append(["peak while storing", "n/a", "n/a"])
    try:
        maps = measure_maps(nbtasks, args.runs)
        ratio_row(
            "map of 10,000 new items, cache=True", maps["cached"], maps["plain"], "no cache", 1.5
        )
        hit_s = statistics.median(maps["hits"])
        rows.append(["map of 10,000 hits", f"{hit_s * 1e3:.1f} ms", "", ""])
        short = maps.get("hit_counts")
        label = "" if not short else f" ({int(max(short))} of {MAP_N} hit: map skips the cache)"
        targets.append(
            [
                "map of 10,000 hits < 0.5 s",
                f"{hit_s:.3f} s{label}",
                verdict(hit_s < 0.5 and not short),
            ]
        )
    except Exception:
        errors.append(traceback.format_exc())
        targets.append(["maps", "n/a", "n/a"])

    rep.line(f"medians over {args.runs} runs; ratios: median of the same-run ratios")
    rep.line("(hits: each timed in a fresh process, from the call to the value in hand; the page")
    rep.line("cache is warm for both sides: their files were just written)")
    rep.table(["measure", "nbtasks", "peer", "ratio"], rows)
    for label, values in raw.items():
        rep.line(f"  {label}: " + ", ".join(f"{v * 1e3:.1f}" for v in values) + " ms")
    rep.line()
    rep.line("Targets (issue 16):")
    rep.table(["target", "measured", "verdict"], targets)
    report_errors(rep, errors)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        try_import_nbtasks()
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
    else:
        run_main("cache", body)
