"""Fixtures for nbtasks' integration tests against a REAL kernel and a REAL browser.

  kernel       a fresh python3 ipykernel per test (jupyter_client, ipc transport), wrapped in
               ``KernelDriver``: run cells, record every iopub message with its arrival time,
               keep the state of every widget model (comm_open + comm_msg updates), send
               comm messages (button clicks) like a frontend would
  lab_server   one ``jupyter lab`` per module on 127.0.0.1:<free port> with a token
  notebook_server  the same with Notebook 7 (``jupyter notebook``)
  browser      Playwright's sync API driving Debian's /usr/bin/chromium (never
               ``playwright install``); skipped on a machine without chromium, but under
               ``CI=true`` a missing chromium fails
  page         a fresh browser context per test; console errors are collected

How these were found to work on this machine: ../shared/notes/testing-recipes.md.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
#: Debian's chromium; elsewhere (the GitHub workflow) NBTASKS_CHROMIUM names Playwright's own.
CHROMIUM = os.environ.get("NBTASKS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def kernel_env(store: Path | None = None) -> dict[str, str]:
    """The environment of a kernel under test: this checkout importable, its own store."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("NBTASKS_STORE", None)
    if store is not None:
        env["NBTASKS_STORE"] = str(store)
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # no debugger warning on stderr
    return env


@pytest.fixture(scope="session")
def helpers() -> Any:
    """This module, so tests reach its helpers without importing a module named conftest."""
    return sys.modules[__name__]


# ----------------------------------------------------------------------------- real kernel
@dataclass
class Cell:
    """What one execute_request produced."""

    msg_id: str
    started: float  # driver monotonic time
    finished: float
    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)  # display_data/execute_result
    errors: list[str] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)


class KernelDriver:
    """A test's view of one kernel: cells, iopub messages, widget models, comm messages."""

    def __init__(self, km: Any, kc: Any, workdir: Path) -> None:
        self.km = km
        self.kc = kc
        self.workdir = workdir
        self.store = workdir / "store"
        self.t0 = time.monotonic()
        self.msgs: list[tuple[float, dict[str, Any]]] = []
        self.models: dict[str, dict[str, Any]] = {}  # comm_id -> current widget state
        self.updates: list[tuple[float, str, dict[str, Any]]] = []  # (t, comm_id, state)
        self._sent: dict[str, tuple[int, float]] = {}  # msg_id -> (index in msgs, time sent)

    # -- iopub ---------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def _take(self, timeout: float) -> dict[str, Any] | None:
        try:
            msg = self.kc.get_iopub_msg(timeout=timeout)
        except queue.Empty:
            return None
        t = self.now()
        self.msgs.append((t, msg))
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_open":
            state = dict(content.get("data", {}).get("state", {}))
            self.models[content["comm_id"]] = state
        elif kind == "comm_msg":
            data = content.get("data", {})
            if data.get("method") == "update":
                state = data.get("state", {})
                self.models.setdefault(content["comm_id"], {}).update(state)
                self.updates.append((t, content["comm_id"], state))
        return msg

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Every iopub message arriving in the next ``seconds`` (the kernel may be idle)."""
        got: list[dict[str, Any]] = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            msg = self._take(min(left, 0.05))
            if msg is not None:
                got.append(msg)
        return got

    def execute(self, code: str) -> str:
        """Send an execute_request and return at once (``wait()`` collects it)."""
        msg_id = str(self.kc.execute(code, store_history=True))
        self._sent[msg_id] = (len(self.msgs), self.now())
        return msg_id

    def wait(self, msg_id: str, timeout: float = 60, check: bool = True) -> Cell:
        """Collect the outputs of an executed cell, also those another drain already read."""
        first, sent = self._sent.pop(msg_id, (len(self.msgs), self.now()))
        cell = Cell(msg_id=msg_id, started=sent, finished=0.0)
        end = time.monotonic() + timeout
        idle = False
        seen = first
        while not idle:
            if seen < len(self.msgs):
                msg: dict[str, Any] | None = self.msgs[seen][1]
                seen += 1
            else:
                if time.monotonic() > end:
                    raise TimeoutError(f"cell {msg_id} did not finish in {timeout} s")
                msg = self._take(0.05)
                seen = len(self.msgs)
            if msg is None or msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    cell.stdout += content["text"]
                else:
                    cell.stderr += content["text"]
            elif kind in ("display_data", "execute_result"):
                cell.displays.append(content["data"])
            elif kind == "error":
                cell.errors.append(
                    f"{content['ename']}: {content['evalue']}\n" + "\n".join(content["traceback"])
                )
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        while True:
            reply = self.kc.get_shell_msg(timeout=max(1.0, end - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        cell.reply = reply["content"]
        cell.finished = self.now()
        if check and (cell.errors or reply["content"]["status"] != "ok"):
            raise AssertionError(
                f"cell failed: {cell.errors or reply['content']}\n--- stderr:\n{cell.stderr}"
            )
        return cell

    def run(self, code: str, timeout: float = 60, check: bool = True) -> Cell:
        """Run a cell and wait for it; raise with the traceback if it failed."""
        return self.wait(self.execute(code), timeout=timeout, check=check)

    def value(self, expr: str, timeout: float = 60) -> Any:
        """Evaluate ``expr`` in the kernel and return it (through JSON)."""
        out = self.run(f"import json as _j; print(_j.dumps({expr}, default=str))", timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])

    # -- widgets -------------------------------------------------------------------------------
    def find(self, dom_class: str | None = None, model: str | None = None) -> list[str]:
        """Comm ids of widget models with that CSS class and/or model name, oldest first."""
        found = []
        for comm_id, state in self.models.items():
            if dom_class is not None and dom_class not in state.get("_dom_classes", []):
                continue
            if model is not None and state.get("_model_name") != model:
                continue
            found.append(comm_id)
        return found

    def children(self, comm_id: str) -> list[str]:
        return [c.removeprefix("IPY_MODEL_") for c in self.models[comm_id].get("children", [])]

    def descendants(self, comm_id: str) -> list[str]:
        out, todo = [], [comm_id]
        while todo:
            cid = todo.pop(0)
            out.append(cid)
            todo.extend(c for c in self.children(cid) if c in self.models)
        return out

    def part(self, root: str, dom_class: str) -> str:
        """The comm id of the widget with CSS class ``dom_class`` inside ``root``."""
        for cid in self.descendants(root):
            if dom_class in self.models[cid].get("_dom_classes", []):
                return cid
        raise KeyError(f"no {dom_class} inside widget {root}")

    def values(self, comm_id: str, trait: str = "value") -> list[tuple[float, Any]]:
        """(arrival time, value) of every update of ``trait`` on ``comm_id``."""
        return [(t, s[trait]) for t, cid, s in self.updates if cid == comm_id and trait in s]

    def send_comm(self, comm_id: str, data: dict[str, Any]) -> None:
        """A comm_msg on the shell channel, as the frontend sends it."""
        msg = self.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.kc.shell_channel.send(msg)

    def click(self, button_comm_id: str) -> None:
        self.send_comm(button_comm_id, {"method": "custom", "content": {"event": "click"}})

    def pid(self) -> int:
        return int(self.km.provisioner.process.pid)


def start_kernel(workdir: Path, env: dict[str, str] | None = None) -> KernelDriver:
    from jupyter_client.manager import KernelManager

    # ipc sockets live at <ip>-<port>; keep the path short (AF_UNIX paths are <108 bytes).
    # Windows has no ipc transport (ZeroMQ's is AF_UNIX): tcp on the loopback there.
    if os.name == "nt":
        km = KernelManager(kernel_name="python3", transport="tcp", ip="127.0.0.1")
    else:
        sock_dir = Path(tempfile.mkdtemp(prefix="nbk-"))
        km = KernelManager(kernel_name="python3", transport="ipc", ip=str(sock_dir / "k"))
    log = open(workdir / "kernel.log", "a")  # noqa: SIM115 - closed by stop_kernel
    km.start_kernel(
        cwd=str(workdir),
        env=env or kernel_env(workdir / "store"),
        stdout=log,
        stderr=log,
    )
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    driver = KernelDriver(km, kc, workdir)
    driver._log = log  # type: ignore[attr-defined]
    driver._sock_dir = sock_dir  # type: ignore[attr-defined]
    return driver


def stop_kernel(driver: KernelDriver) -> None:
    try:
        driver.kc.stop_channels()
        driver.km.shutdown_kernel(now=True)
    finally:
        driver._log.close()  # type: ignore[attr-defined]
        shutil.rmtree(driver._sock_dir, ignore_errors=True)  # type: ignore[attr-defined]


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[KernelDriver]:
    """A fresh ipykernel whose cwd is tmp_path and whose store is tmp_path/store."""
    driver = start_kernel(tmp_path)
    try:
        yield driver
    finally:
        stop_kernel(driver)


def run_cell(kernel: KernelDriver, code: str, timeout: float = 60) -> str:
    """Run ``code``; return its stdout; raise with the traceback if it failed."""
    return kernel.run(code, timeout=timeout).stdout


def drain_iopub(kernel: KernelDriver, seconds: float) -> list[dict[str, Any]]:
    """All iopub messages arriving in the next ``seconds``."""
    return kernel.drain(seconds)


# ----------------------------------------------------------------------------- jupyter lab
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``jupyter lab`` on 127.0.0.1 with a token, isolated config, no news toast."""
    yield from _jupyter_server(
        tmp_path_factory.mktemp("lab"),
        "jupyterlab",
        [
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",
        ],
    )


@pytest.fixture(scope="module")
def notebook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``jupyter notebook`` (Notebook 7: jupyter_server with the notebook extension) on
    127.0.0.1, set up as ``lab_server``; notebooks open at ``/notebooks/<name>.ipynb``. Its
    cells are JupyterLab's components: the same selectors work in both."""
    pytest.importorskip("notebook", minversion="7")
    yield from _jupyter_server(
        tmp_path_factory.mktemp("nb7"),
        "notebook",
        ["--JupyterNotebookApp.expose_app_in_browser=True"],  # it has no news_url
    )


def _jupyter_server(root: Path, module: str, extra: list[str]) -> Iterator[dict[str, Any]]:
    """Run ``python -m <module>`` (jupyterlab or notebook) in ``root`` until the module's
    tests end; stop it, and the kernels it started, by PID."""
    port, token = _free_port(), uuid.uuid4().hex
    settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = kernel_env()
    env.update(
        JUPYTER_CONFIG_DIR=str(root / ".cfg"),
        JUPYTER_RUNTIME_DIR=str(root / ".rt"),
        JUPYTERLAB_WORKSPACES_DIR=str(root / ".ws"),
        JUPYTERLAB_SETTINGS_DIR=str(root / ".settings"),
    )
    cmd = [
        sys.executable,
        "-m",
        module,
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        *extra,
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = root / f"{module}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.close()
                raise RuntimeError(
                    f"{module} did not start: " + log_path.read_text()[-2000:]
                ) from None
            time.sleep(0.2)
    try:
        yield {"url": url, "token": token, "root": root, "log": log_path, "app": module}
    finally:
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)  # kernels it started
        except psutil.NoSuchProcess:
            kids = []
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for kid in kids:  # stop leftovers by PID
            try:
                if kid.is_running() and kid.status() != psutil.STATUS_ZOMBIE:
                    kid.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()


# ----------------------------------------------------------------------------- real browser
# Module scope: the sync Playwright API keeps an event loop running in the main thread while
# it is open, and later tests that call asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium through Playwright (sync API); skipped without it, except in CI."""
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"needs Debian chromium at {CHROMIUM}: apt-get install -y chromium"
    else:
        try:
            from playwright import sync_api  # noqa: F401
        except ImportError:
            missing = "needs playwright: pip install playwright (no `playwright install`)"
    if missing:
        if IN_CI:
            pytest.fail(f"CI=true: browser tests must run, not skip: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1200, "height": 800})
    pg = ctx.new_page()
    pg.console_errors = []  # type: ignore[attr-defined]
    pg.on(
        "console",
        lambda m: pg.console_errors.append(m.text) if m.type == "error" else None,  # type: ignore[attr-defined]
    )
    try:
        yield pg
    finally:
        ctx.close()
