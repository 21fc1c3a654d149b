"""The zygote: a new interpreter that forks the workers (SPEC §7).

The parent (``pool.py``) starts one **zygote** per pool as a new interpreter (``subprocess``: a
threaded kernel is never forked). The zygote imports what a worker needs once, ignores SIGINT
(the notebook's Interrupt button signals the kernel's whole process group), then forks a worker
for each request it gets on its control socket: forking a single-threaded process is safe, and
a warm fork costs a few milliseconds where a new interpreter costs ~80 ms. It reaps its children
and reports each exit status, so the parent can say "killed by SIGSEGV". A worker forked with
``detached`` starts its own session: it outlives the kernel.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, Final

from ... import _codec

if TYPE_CHECKING:
    import subprocess

# The bootstrap the parent runs as ``python -c BOOT CONFIG FD``: the parent's sys.path first, so
# the worker imports nbtasks (and the user's modules) from where the parent does. The package's
# __init__ (the App, results, views: half of nbtasks' import time) is not run here; it runs on
# first use of a name from ``nbtasks`` (see lazy_package), which keeps a cold start short.
BOOT: Final = (
    "import sys, json, importlib.util as u; c = json.loads(sys.argv[1]); sys.path[:] = c['path']; "
    "s = u.find_spec('nbtasks'); sys.modules['nbtasks'] = u.module_from_spec(s); "
    "from nbtasks.executors.process.zygote import zygote; zygote(int(sys.argv[2]), c)"
)


def zygote(ctrl_fd: int, config: dict[str, Any]) -> None:
    """Fork a worker per request on the control socket; report exits; end with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the workers
    lazy_package()
    # Here, not at the top: the parent imports this module for its end (Zygote) only.
    from .child import worker_main

    preload(config)

    ctrl = socket.socket(fileno=ctrl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    ctrl_fd = ctrl.fileno()
    while True:
        ready, _, _ = select.select([ctrl_fd, wake_r], [], [])
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        _reap(ctrl)
        if ctrl_fd not in ready:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(ctrl, 65536, 1)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            break
        if not data:
            break  # the parent is gone: pool workers see their own socket close and exit
        request = json.loads(data)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ctrl.close()
                signal.set_wakeup_fd(-1)
                os.close(wake_r)
                os.close(wake_w)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                detached = bool(request.get("detached"))
                if detached:
                    os.setsid()  # its own session: kernel restarts and Interrupt do not reach it
                worker_main(socket.socket(fileno=fds[0]), config, detached)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        _send(ctrl, {"forked": request["n"], "pid": pid})
    os._exit(0)


def preload(config: dict[str, Any]) -> None:
    """What every worker needs, imported once (by the zygote before it forks; by a spawned
    worker while it starts)."""
    _codec.cloudpickle()  # every worker unpickles
    import ctypes  # noqa: F401  (the workers flush C stdio through it)
    import importlib

    for name in config.get("preload", ()):  # as multiprocessing's set_forkserver_preload
        importlib.import_module(name)


def lazy_package() -> None:
    """The ``nbtasks`` package was created without running its __init__ (BOOT): give it the
    public error classes now (their class path is ``nbtasks.X``, also in what a worker records),
    and run __init__ on first use of any other name (``nbtasks.current()`` in a task)."""
    pkg = sys.modules["nbtasks"]
    if hasattr(pkg, "App"):
        return  # imported the usual way
    from ... import _errors

    for name, value in vars(_errors).items():
        error = isinstance(value, type) and issubclass(value, BaseException)
        if error and value.__module__ == _errors.__name__:
            value.__module__ = "nbtasks"
            setattr(pkg, name, value)
    lock = threading.Lock()

    def complete(name: str) -> Any:
        if name.startswith("_") or name == "executors":
            raise AttributeError(name)  # a submodule being imported (`from . import _task`)
        with lock:
            if "__getattr__" in vars(pkg):
                del vars(pkg)["__getattr__"]
                spec = pkg.__spec__
                assert spec is not None and spec.loader is not None  # imported from its files
                spec.loader.exec_module(pkg)
        return getattr(pkg, name)

    vars(pkg)["__getattr__"] = complete  # PEP 562: the module's own __getattr__


def _reap(ctrl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(ctrl, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(ctrl: socket.socket, message: dict[str, Any]) -> None:
    try:
        ctrl.send(json.dumps(message).encode())
    except OSError:
        pass  # the parent is gone; the loop ends at the next read


# --------------------------------------------------------------------------- the parent's end


class Zygote:
    """The parent's end of its zygote: started on first use, and again after it died. The
    caller holds its executor's lock around every method but ``read``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.ctrl: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _start(self) -> None:
        import subprocess  # here: the zygote itself never starts a process this way

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", BOOT, json.dumps(self.config), str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.ctrl = parent

    def fork(self, n: int, detached: bool, sock: socket.socket) -> None:
        """Ask for worker ``n``, connected to the other end of ``sock``; it says ``forked``."""
        if self.ctrl is None:
            self._start()
        assert self.ctrl is not None
        request = json.dumps({"n": n, "detached": detached}).encode()
        try:
            socket.send_fds(self.ctrl, [request], [sock.fileno()])
        except OSError:  # the zygote is gone: start another one
            self.gone()
            self._start()
            assert self.ctrl is not None
            socket.send_fds(self.ctrl, [request], [sock.fileno()])

    def read(self) -> dict[str, Any] | None:
        """Its next message ({"forked": n, "pid": pid} or {"exit": pid, "code": code}); None
        once it has died (then call ``gone``: the next fork starts a new one)."""
        assert self.ctrl is not None
        try:
            data = self.ctrl.recv(65536)
        except OSError:
            data = b""
        return json.loads(data) if data else None

    def gone(self) -> None:
        """Let it go: it exits when its socket closes (detached workers stay)."""
        if self.ctrl is not None:
            self.ctrl.close()
            self.ctrl = None
        if self._process is not None:
            import subprocess

            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
