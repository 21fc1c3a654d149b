"""A store of 100,000 finished results: open, summary, filter by status, one record.

    .venv/bin/python benchmarks/store.py                     # build in a temp dir (~1 min)
    .venv/bin/python benchmarks/store.py --store /tmp/s100k  # build once, keep, reuse
    .venv/bin/python benchmarks/store.py --repeat 5

1. Build, through the public API: a thread ``App(store=DIR, workers=2)`` runs ``t.map`` over
   100,000 integers in batches of 10,000 (``GroupResult.wait()`` after each batch); the task
   raises ``ValueError`` for every 100th input, so 1% end FAILED. Then ``app.shutdown(wait=True)``.
2. Measure, in a fresh Python process each time (``--repeat`` times), so that nothing the builder
   kept in memory helps:
   - open: ``nbtasks.App(store=DIR, workers=2)`` (the import of nbtasks is not included);
   - summary of every task: ``app.results()``, then reading ``status``, ``task_name``,
     ``finished_at`` and ``progress`` of every result (timed apart and added: that is the summary);
     if the App has a private faster call (e.g. ``app._store.summaries()``), it is timed too
     and named;
   - ``app.results(status="FAILED", limit=50)``: the first call and the median of 20 more;
   - one record: ``app.result(id).status`` for 2,000 random ids, µs per call.
3. The peer baseline, through diskcache's public API only: a plain ``diskcache.Cache`` of 100,000
   small dicts (a task record of 12 fields, 1% with status FAILED) written in ``transact()``
   batches of 1,000; in a fresh process: open, load every record by a full scan, find the FAILED
   ones by a full scan, and one ``get``.

Targets (issue 2): open ≤ 10 ms; summary of every task ≤ 0.5 s; ``results(status="FAILED",
limit=50)`` ≤ 50 ms; one record ≤ 25 µs.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from _common import Report, dir_size, mmm, run_main, tempdir, try_import_nbtasks, verdict

N = 100_000
BATCH = 10_000
FAIL_EVERY = 100


def work(i: int) -> int:
    if i % FAIL_EVERY == 0:
        raise ValueError(f"input {i} is a multiple of {FAIL_EVERY}")
    return i


# --------------------------------------------------------------------------- build


def build_nbtasks(nbtasks: Any, store: Path, n: int, rep: Report) -> float:
    """Fill the store through the public API; return seconds until shutdown(wait=True) returned."""
    t0 = time.perf_counter()
    app = nbtasks.App(store=store, workers=2)
    try:
        t = app.task(work)
        for start in range(0, n, BATCH):
            b0 = time.perf_counter()
            g = t.map(range(start, min(n, start + BATCH)))
            g.wait(timeout=600)
            if start == 0 or (start // BATCH) % 5 == 4:
                rate = BATCH / (time.perf_counter() - b0)
                rep.line(f"  built {start + BATCH:,} / {n:,} ({rate:,.0f} tasks/s in this batch)")
    finally:
        app.shutdown(wait=True)
    return time.perf_counter() - t0


def peer_record(i: int) -> dict[str, Any]:
    now = 1.7e9 + i * 0.001
    failed = i % FAIL_EVERY == 0
    return {
        "id": f"{i:032x}",
        "task_name": "work",
        "status": "FAILED" if failed else "SUCCESSFUL",
        "enqueued_at": now,
        "started_at": now + 0.0001,
        "finished_at": now + 0.0002,
        "args": [i],
        "kwargs": {},
        "result": None if failed else i,
        "progress": None,
        "metadata": {},
        "worker_ids": ["host:1234:ThreadPoolExecutor-0_0"],
        "errors": [{"exception_class_path": "builtins.ValueError", "traceback": "..."}]
        if failed
        else [],
    }


def build_peer(path: Path, n: int) -> float:
    import diskcache

    t0 = time.perf_counter()
    cache = diskcache.Cache(str(path))
    for start in range(0, n, 1000):
        with cache.transact():
            for i in range(start, min(n, start + 1000)):
                cache.set(f"{i:032x}", peer_record(i))
    cache.close()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- measure (subprocess)


def measure_nbtasks(store: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    nbtasks, err = try_import_nbtasks()
    if nbtasks is None:
        raise RuntimeError(err)
    out["import_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    app = nbtasks.App(store=store, workers=2)
    out["open_s"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        rs = app.results()
        out["results_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = [(r.status, r.task_name, r.finished_at, r.progress) for r in rs]
        out["fields_s"] = time.perf_counter() - t0
        out["count"] = len(rows)
        counts: dict[str, int] = {}
        for st, *_ in rows:
            counts[str(st)] = counts.get(str(st), 0) + 1
        out["status_counts"] = counts

        # A faster private summary call, if the App has one.
        store_obj = getattr(app, "_store", None)
        for attr in ("summaries", "summary", "list_summaries", "scan"):
            fn = getattr(store_obj, attr, None) if store_obj is not None else None
            if callable(fn):
                kwargs: dict[str, Any] = {}
                if "limit" in inspect.signature(fn).parameters:
                    kwargs["limit"] = None  # every task, not a first page
                call = f"app._store.{attr}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
                try:
                    t0 = time.perf_counter()
                    res = fn(**kwargs)
                    if not isinstance(res, list | tuple | dict):
                        res = list(res)
                    out["private"] = {
                        "call": call,
                        "s": time.perf_counter() - t0,
                        "count": len(res),
                    }
                except Exception as exc:
                    out["private"] = {
                        "call": call,
                        "error": f"{type(exc).__name__}: {exc}",
                    }
                break

        t0 = time.perf_counter()
        failed = app.results(status="FAILED", limit=50)
        out["failed_first_s"] = time.perf_counter() - t0
        reps = []
        for _ in range(20):
            t0 = time.perf_counter()
            failed = app.results(status="FAILED", limit=50)
            reps.append(time.perf_counter() - t0)
        out["failed_med_s"] = statistics.median(reps)
        out["failed_count"] = len(failed)
        out["failed_ok"] = all(str(r.status).endswith("FAILED") for r in failed)
        t0 = time.perf_counter()
        out["failed_all_count"] = len(app.results(status="FAILED"))
        out["failed_all_s"] = time.perf_counter() - t0

        ids = [r.id for r in random.sample(rs, min(2000, len(rs)))]
        del rs, rows
        app.result(ids[0]).status  # noqa: B018
        t0 = time.perf_counter()
        for i in ids:
            app.result(i).status  # noqa: B018
        out["get_s"] = (time.perf_counter() - t0) / len(ids)
    finally:
        t0 = time.perf_counter()
        app.shutdown(wait=True)
        out["shutdown_s"] = time.perf_counter() - t0
    return out


def measure_peer(path: str) -> dict[str, Any]:
    import diskcache

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    cache = diskcache.Cache(path)
    len(cache)
    out["open_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    records = [cache[k] for k in cache]
    out["results_s"] = time.perf_counter() - t0
    out["count"] = len(records)
    keys = [r["id"] for r in random.sample(records, 2000)]
    del records
    t0 = time.perf_counter()
    failed = [v for v in (cache.get(k) for k in cache) if v is not None and v["status"] == "FAILED"]
    out["failed_first_s"] = out["failed_med_s"] = time.perf_counter() - t0
    out["failed_all_count"] = len(failed)
    t0 = time.perf_counter()
    for k in keys:
        cache[k]["status"]
    out["get_s"] = (time.perf_counter() - t0) / len(keys)
    cache.close()
    return out


def measure_in_subprocess(kind: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--_measure", kind, str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"measuring {kind} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    data = json.loads(lines[-1])
    if "error" in data:
        raise RuntimeError(f"measuring {kind} failed:\n{data['error']}")
    return data


def measure_main(kind: str, path: str) -> None:
    try:
        data = measure_nbtasks(path) if kind == "nbtasks" else measure_peer(path)
    except Exception:
        data = {"error": traceback.format_exc()}
    print(json.dumps(data), flush=True)


# --------------------------------------------------------------------------- main


def body(rep: Report) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="nbtasks store to build (if missing) and keep")
    ap.add_argument(
        "--repeat", type=int, default=3, help="measuring processes per store (default 3)"
    )
    ap.add_argument("-n", type=int, default=N, help=f"results in the store (default {N:,})")
    ap.add_argument("--no-nbtasks", action="store_true")
    args = ap.parse_args()
    n = args.n

    nbtasks, nb_err = (None, "skipped (--no-nbtasks)") if args.no_nbtasks else try_import_nbtasks()
    rep.line(
        f"{n:,} finished results, 1 in {FAIL_EVERY} FAILED;"
        f" each measurement in a fresh process, {args.repeat}x."
    )
    if nbtasks is None:
        rep.line(f"nbtasks NOT MEASURED: {nb_err}")
    rep.line()

    errors: list[str] = []
    nb: list[dict[str, Any]] = []
    dc: list[dict[str, Any]] = []
    with tempdir("nbtasks-store-bench-") as tmp:
        # -- peer
        peer_dir = tmp / "peer"
        build_s = build_peer(peer_dir, n)
        rep.line(
            f"peer diskcache.Cache built: {n:,} records in {build_s:.1f} s"
            f" ({build_s / n * 1e6:.1f} µs/record), {dir_size(peer_dir) / 1e6:.1f} MB on disk"
        )
        # -- nbtasks
        nb_dir = args.store if args.store is not None else tmp / "nbtasks"
        if nbtasks is not None:
            try:
                if args.store is not None and args.store.exists():
                    rep.line(f"nbtasks store: reusing {args.store} (not rebuilt)")
                else:
                    rep.line(
                        f"nbtasks store: building {nb_dir} through t.map, batches of {BATCH:,} ..."
                    )
                    s = build_nbtasks(nbtasks, nb_dir, n, rep)
                    rep.line(
                        f"nbtasks store built: {n:,} results in {s:.1f} s"
                        f" ({n / s:,.0f} tasks/s, incl. the final flush)"
                    )
                rep.line(f"nbtasks store: {dir_size(nb_dir) / 1e6:.1f} MB on disk")
            except Exception:
                errors.append("nbtasks build:\n" + traceback.format_exc())
                nbtasks = None
        rep.line()

        for i in range(args.repeat):
            try:
                dc.append(measure_in_subprocess("peer", peer_dir))
            except Exception:
                errors.append(f"peer measure {i + 1}:\n" + traceback.format_exc())
            if nbtasks is not None:
                try:
                    nb.append(measure_in_subprocess("nbtasks", nb_dir))
                except Exception:
                    errors.append(f"nbtasks measure {i + 1}:\n" + traceback.format_exc())

    if nb:
        first = nb[0]
        rep.line(
            f"nbtasks: app.results() returned {first['count']:,} results {first['status_counts']};"
            f" results(status='FAILED') has {first['failed_all_count']:,}"
            f" ({mmm([d['failed_all_s'] for d in nb])[1] * 1e3:.1f} ms, no limit);"
            f" results(status='FAILED', limit=50) returned {first['failed_count']}"
            f" ({'all FAILED' if first['failed_ok'] else 'NOT all FAILED'})."
        )
        rep.line(
            f"nbtasks: import {mmm([d['import_s'] for d in nb])[1] * 1e3:.0f} ms"
            " (median, not in 'open')"
        )
        if "private" in first:
            rep.line(f"nbtasks: private summary call found: {first['private']}")
        else:
            rep.line(
                "nbtasks: no private summary call found"
                " (looked for app._store.summaries/summary/list_summaries/scan)"
            )
    if dc:
        rep.line(
            f"peer: full scan loaded {dc[0]['count']:,} records,"
            f" {dc[0]['failed_all_count']:,} FAILED."
        )
    rep.line()

    def fmt(vals: list[float], scale: float, unit: str) -> str:
        lo, med, hi = mmm(vals)
        return f"{lo * scale:.2f} / {med * scale:.2f} / {hi * scale:.2f} {unit}"

    def med(ds: list[dict[str, Any]], key: str) -> float:
        vals = [d[key] for d in ds if key in d]
        return statistics.median(vals) if vals else float("nan")

    def ratio(key_nb: str, key_dc: str) -> str:
        a, b = med(nb, key_nb), med(dc, key_dc)
        return f"{a / b:.3f}x" if nb and dc else "n/a"

    nb_summary = [d["results_s"] + d["fields_s"] for d in nb]
    for d, s in zip(nb, nb_summary, strict=True):
        d["summary_s"] = s
    rows: list[list[Any]] = []
    if nb:
        rows += [
            [
                "open App",
                fmt([d["open_s"] for d in nb], 1e3, "ms"),
                "≤ 10 ms",
                ratio("open_s", "open_s"),
            ],
            ["app.results() (all)", fmt([d["results_s"] for d in nb], 1e3, "ms"), "", ""],
            [
                "+ read status/name/finished_at/progress",
                fmt([d["fields_s"] for d in nb], 1e3, "ms"),
                "",
                "",
            ],
            [
                "= summary of every task",
                fmt(nb_summary, 1e3, "ms"),
                "≤ 500 ms",
                ratio("summary_s", "results_s"),
            ],
        ]
        priv = [d["private"]["s"] for d in nb if "s" in d.get("private", {})]
        if priv:
            rows.append(
                [f"  private {nb[0]['private']['call']}", fmt(priv, 1e3, "ms"), "(info)", ""]
            )
        rows += [
            [
                'results(status="FAILED", limit=50), 1st',
                fmt([d["failed_first_s"] for d in nb], 1e3, "ms"),
                "≤ 50 ms",
                ratio("failed_first_s", "failed_first_s"),
            ],
            ["  same, median of 20 more", fmt([d["failed_med_s"] for d in nb], 1e3, "ms"), "", ""],
            [
                "app.result(id).status",
                fmt([d["get_s"] for d in nb], 1e6, "µs"),
                "≤ 25 µs",
                ratio("get_s", "get_s"),
            ],
            [
                "app.shutdown(wait=True) (info)",
                fmt([d["shutdown_s"] for d in nb], 1e3, "ms"),
                "",
                "",
            ],
        ]
    if dc:
        rows += [
            ["peer: open Cache + len()", fmt([d["open_s"] for d in dc], 1e3, "ms"), "", ""],
            [
                "peer: load every record (full scan)",
                fmt([d["results_s"] for d in dc], 1e3, "ms"),
                "",
                "",
            ],
            [
                "peer: find FAILED (full scan)",
                fmt([d["failed_first_s"] for d in dc], 1e3, "ms"),
                "",
                "",
            ],
            ["peer: cache[key]['status']", fmt([d["get_s"] for d in dc], 1e6, "µs"), "", ""],
        ]
    rep.line(
        "min / median / max over the measuring processes; 'vs peer' = nbtasks median / peer median"
    )
    rep.line(
        "(open vs open, summary vs full load, FAILED filter vs full-scan filter, record vs get):"
    )
    rep.table(["operation", "time", "target", "vs peer"], rows)

    targets: list[list[str]] = []
    checks = [
        ("open the store ≤ 10 ms", "open_s", 0.010, 1e3, "ms"),
        ("summary of every task ≤ 0.5 s", "summary_s", 0.5, 1e3, "ms"),
        (
            'results(status="FAILED", limit=50) ≤ 50 ms (first call)',
            "failed_first_s",
            0.050,
            1e3,
            "ms",
        ),
        ("one record ≤ 25 µs", "get_s", 25e-6, 1e6, "µs"),
    ]
    for label, key, limit, scale, unit in checks:
        if nb:
            m = med(nb, key)
            targets.append([label, f"{m * scale:.2f} {unit}", verdict(m <= limit)])
        else:
            targets.append([label, "n/a", verdict(None)])
    priv_s = [d["private"]["s"] for d in nb if "s" in d.get("private", {})]
    if priv_s:
        m = statistics.median(priv_s)
        count_ok = all(d["private"]["count"] == n for d in nb if "s" in d.get("private", {}))
        targets.append(
            [
                f"summary ≤ 0.5 s via the private {nb[0]['private']['call']}",
                f"{m * 1e3:.2f} ms" + ("" if count_ok else " (WRONG count)"),
                verdict(m <= 0.5 and count_ok),
            ]
        )
    if nb:
        c = nb[0]
        ok = (
            c["count"] == n
            and c["failed_all_count"] == n // FAIL_EVERY
            and c["failed_ok"]
            and c["failed_count"] == 50
        )
        targets.append(
            [
                "store content (count, FAILED count, filter correct)",
                "ok" if ok else "WRONG",
                verdict(ok),
            ]
        )
    rep.line("Targets (issue 2), on the median over the measuring processes:")
    rep.table(["target", "measured", "verdict"], targets)

    if errors:
        rep.line("ERRORS:")
        for e in errors:
            for text in e.rstrip().splitlines():
                rep.line("    " + text)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_measure":
        measure_main(sys.argv[2], sys.argv[3])
    else:
        run_main("store", body)
