"""nbtasks where notebooks run: macOS and Windows, simulated on Linux (docs/platforms.md).

Each test runs tests/platforms/check_platform.py in a real interpreter made to lack what the
system lacks (``tests/platforms/<system>/sitecustomize.py`` first on ``PYTHONPATH``; the worker
processes it starts inherit it): macOS has no ``SOCK_SEQPACKET``; Windows has no ``fcntl``,
``os.fork``, ``os.register_at_fork``, ``os.getuid``, AF_UNIX, ``SIGALRM``/``setitimer``. Every
script first proves the simulation applied (a test that passed because it silently did not load
would be a defect). Then: thread tasks, the store read back by a second simulated interpreter,
``python -m nbtasks list``, process identity as the system takes it; and process tasks (a crash,
hard and soft timeouts, cancel, ``map``) once the process executor has its spawn path.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import nbtasks

REPO = Path(__file__).resolve().parents[2]
PLATFORMS = REPO / "tests" / "platforms"
SYSTEMS = ["macos", "windows"]

#: What each simulated interpreter must lack, and what it must still have.
LACKS = {
    "macos": {"SOCK_SEQPACKET"},
    "windows": {
        "fork",
        "register_at_fork",
        "getuid",
        "fcntl",
        "AF_UNIX",
        "SOCK_SEQPACKET",
        "send_fds",
        "SIGALRM",
        "setitimer",
    },
}
FACTS = {"fork", "register_at_fork", "getuid", "fcntl", "AF_UNIX", "SOCK_SEQPACKET", "send_fds"}
FACTS |= {"SIGALRM", "setitimer"}


def simulated_run(
    system: str, *args: str, stdin: str = "", timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLATFORMS / system), str(REPO)])
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
        env=env,
        check=False,
    )


def run_check(system: str, phase: str, store: Path, stdin: str = "") -> dict[str, Any]:
    proc = simulated_run(
        system, str(PLATFORMS / "check_platform.py"), phase, str(store), stdin=stdin
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert_simulated(system, report)
    return report


def assert_simulated(system: str, facts: dict[str, Any]) -> None:
    """The interpreter that reported ``facts`` lacks what ``system`` lacks, and nothing else."""
    assert facts["simulated"] == system
    missing = {name for name in FACTS if not facts[name]}
    assert missing == LACKS[system]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("system", SYSTEMS)
def test_threads_store_and_cli(system: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    report = run_check(system, "threads", store)
    assert report["delay"] == 49 and report["map"] == [0, 1, 4, 9, 16]
    assert report["lock"] == ("msvcrt" if system == "windows" else "fcntl")
    assert "is locked by pid HOLDER: waited 0.2 s" in report["lock_held"]
    ident = report["identity"]
    assert ident["me_alive"] and not ident["ended_alive"]
    assert ident["ps_me"].startswith("s") and ident["ps_ended"] is None  # macOS's start times
    assert ident["owner_me_ps"] and not ident["owner_me_reused"]
    assert ident["owner_me_unknown_clock"]  # cannot tell the start time: trust the live pid
    assert not ident["owner_ended"]

    # Another simulated interpreter reads the store back, and lists it.
    read = run_check(system, "read", store, stdin=json.dumps(report["ids"]))
    assert read["read"] == [["SUCCESSFUL", 49]] + [["SUCCESSFUL", x * x] for x in range(5)]
    listing = simulated_run(system, "-m", "nbtasks", "list", "--store", str(store))
    assert listing.returncode == 0, listing.stderr
    assert all(i in listing.stdout for i in report["ids"]), listing.stdout
    assert "(6 of 6 task(s)" in listing.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("system", SYSTEMS)
def test_process_tasks(system: str, tmp_path: Path) -> None:
    if "process_start" not in inspect.signature(nbtasks.App).parameters:
        pytest.skip(
            "the process executor has no spawn path in this checkout (App has no "
            "process_start option): this test runs once it lands"
        )
    store = tmp_path / "store"
    report = run_check(system, "processes", store)
    assert_simulated(system, report["worker"])  # the workers lack it too
    assert report["map"] == [x * x for x in range(6)]
    assert "squaring 7" in report["output"]  # a worker's output is captured
    status, errors = report["crash"]
    assert status == "FAILED" and errors[0][0] == "nbtasks.WorkerLost"
    assert "code 3" in errors[0][1]
    assert report["hard"] == ["FAILED", ["nbtasks.TaskTimeout"]]
    assert report["soft"] == "soft limit raised in the task"
    assert report["cancel"] == "CANCELLED"
    assert report["after"] == 81
    listing = simulated_run(system, "-m", "nbtasks", "list", "--store", str(store))
    assert listing.returncode == 0, listing.stderr
    assert report["ids"][0] in listing.stdout and "CANCELLED" in listing.stdout
