"""How the pool starts its workers: two launchers behind one small interface, chosen once per
executor (``App(process_start=...)``, see ``executors.process_start``).

- ``ForkLauncher`` (Linux): the zygote (``zygote.py``) forks each worker from a warm interpreter
  and passes it one end of a socketpair; it reports pids and exit statuses on its control socket.
  A warm fork costs a few milliseconds.
- ``SpawnLauncher`` (everywhere; the default on macOS and Windows): each worker is a new
  interpreter (``subprocess.Popen``, the zygote's trimmed bootstrap, so a cold start stays short).
  Its channel is a loopback TCP connection: the pool listens on 127.0.0.1 (one listener per pool),
  each worker reads the port and a fresh random token from its **stdin** (argv is readable by
  other users), connects and sends the token first. A connection is accepted only if its token
  matches a worker this pool started (``hmac.compare_digest``); any other is closed. Exit codes
  come from ``Popen`` (a waiter thread per worker, which wakes the supervisor); a worker is
  stopped with ``Popen.terminate()``/``kill()`` (SIGTERM/SIGKILL, or TerminateProcess).

The supervisor (``pool.py``) selects on ``sockets()`` and calls ``readable(sock)`` for one of
them, and ``events()`` when it is woken; both return ``Event``s.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from typing import Any, Final, Protocol

from .channel import Channel
from .zygote import Zygote

#: What a launcher tells the supervisor: ("pid", n, pid), ("exit", n, code),
#: ("conn", n, Channel) (a spawned worker connected) or ("gone", 0, None) (the zygote died).
Event = tuple[str, int, Any]

TOKEN_BYTES: Final = 32
HANDSHAKE_MAX: Final = 16  # connections waiting to send their token; more are refused

# A spawned worker's bootstrap (``python -c SPAWN_BOOT``), as the zygote's (zygote.BOOT): SIGINT
# ignored first (the notebook's Interrupt signals the kernel's process group), the parent's
# sys.path, the nbtasks package without running its __init__. Its settings come on stdin.
SPAWN_BOOT: Final = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "import sys, json, importlib.util as u; c = json.loads(sys.stdin.readline()); "
    "sys.path[:] = c['config']['path']; "
    "s = u.find_spec('nbtasks'); sys.modules['nbtasks'] = u.module_from_spec(s); "
    "from nbtasks.executors.process.spawned import main; main(c)"
)


class Launcher(Protocol):
    kind: str

    def start(self, n: int, detached: bool) -> tuple[Channel | None, int | None]:
        """Start worker ``n`` (the caller holds the executor's lock): its channel if it is known
        now (else a "conn" event brings it) and its pid if known (else a "pid" event)."""
        ...

    def sockets(self) -> list[socket.socket]: ...

    def readable(self, sock: socket.socket) -> list[Event]: ...

    def events(self) -> list[Event]: ...

    def stop(self, n: int, pid: int | None, start: str | None, kill: bool) -> None:
        """SIGTERM (or SIGKILL if ``kill``) worker ``n``, or the portable equivalent."""
        ...

    def close(self) -> None: ...


class ForkLauncher:
    """Workers forked by the zygote (``zygote.py``)."""

    kind = "fork"

    def __init__(self, config: dict[str, Any], wake: Any) -> None:
        self._zygote = Zygote(config)
        self._by_pid: dict[int, int] = {}  # pid -> worker number

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid

    def start(self, n: int, detached: bool) -> tuple[Channel | None, int | None]:
        mine, theirs = socket.socketpair()
        try:
            self._zygote.fork(n, detached, theirs)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return Channel(mine), None

    def sockets(self) -> list[socket.socket]:
        ctrl = self._zygote.ctrl
        return [] if ctrl is None else [ctrl]

    def readable(self, sock: socket.socket) -> list[Event]:
        message = self._zygote.read()
        if message is None:  # the zygote died: the next fork starts a new one
            self._zygote.gone()
            return []
        if "forked" in message:
            self._by_pid[message["pid"]] = message["forked"]
            return [("pid", message["forked"], message["pid"])]
        n = self._by_pid.pop(message["exit"], None)
        return [] if n is None else [("exit", n, message["code"])]

    def events(self) -> list[Event]:
        return []

    def stop(self, n: int, pid: int | None, start: str | None, kill: bool) -> None:
        import signal

        from ...store import process_start_time

        if pid is None:
            return
        if start is not None and process_start_time(pid) != start:
            return  # gone, and its pid reused
        try:
            os.kill(pid, signal.Signals["SIGKILL" if kill else "SIGTERM"])
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self._zygote.gone()


class SpawnLauncher:
    """Each worker a new interpreter, connected back over loopback TCP (see the docstring)."""

    kind = "spawn"

    def __init__(self, config: dict[str, Any], wake: Any) -> None:
        self.config = config
        self._wake = wake
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.setblocking(False)
        self._listener.set_inheritable(False)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._tokens: dict[int, bytes] = {}  # worker number -> the token it must send
        self._popens: dict[int, subprocess.Popen[bytes]] = {}
        self._handshakes: dict[socket.socket, bytearray] = {}
        self._exits: list[Event] = []
        self._closed = False

    def start(self, n: int, detached: bool) -> tuple[Channel | None, int | None]:
        token = secrets.token_bytes(TOKEN_BYTES)
        kwargs: dict[str, Any] = {}
        if detached:  # its own session (process group): a kernel restart does not reach it
            if os.name == "nt":  # Popen takes creationflags on Windows only
                flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
                kwargs["creationflags"] = flags | getattr(subprocess, "DETACHED_PROCESS", 0)
            else:
                kwargs["start_new_session"] = True
        elif os.name != "nt":
            # A process group of its own: a kernel that shuts down (a restart) terminates the
            # children in its own group (ipykernel), and a worker killed so would be recorded
            # FAILED (WorkerLost) by the dying parent. Out of that group, the worker sees its
            # parent gone and records its task INTERRUPTED, as a restart means (child.py,
            # _monitor; the fork path's workers die with their zygote, and the sweep does it).
            kwargs["process_group"] = 0
        popen = subprocess.Popen(
            [sys.executable, "-c", SPAWN_BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            # a pool worker's early errors show where the kernel's do; a detached one must not
            # hold the kernel's stderr open
            stderr=subprocess.DEVNULL if detached else None,
            **kwargs,
        )
        settings = {
            "config": self.config,
            "port": self.port,
            "token": token.hex(),
            "detached": detached,
        }
        assert popen.stdin is not None
        try:
            popen.stdin.write(json.dumps(settings).encode() + b"\n")
            popen.stdin.flush()
        except OSError:
            pass  # it died already: its waiter reports the exit
        with self._lock:
            self._tokens[n] = token
            self._popens[n] = popen
        threading.Thread(
            target=self._wait, args=(n, popen), name="nbtasks-process-waiter", daemon=True
        ).start()
        return None, popen.pid

    def _wait(self, n: int, popen: subprocess.Popen[bytes]) -> None:
        code = popen.wait()
        with self._lock:
            self._popens.pop(n, None)
            self._tokens.pop(n, None)
            if popen.stdin is not None:
                popen.stdin.close()
            self._exits.append(("exit", n, code))
        self._wake()

    def sockets(self) -> list[socket.socket]:
        return [self._listener, *self._handshakes]

    def readable(self, sock: socket.socket) -> list[Event]:
        if sock is self._listener:
            self._accept()
            return []
        buf = self._handshakes[sock]
        try:
            data = sock.recv(TOKEN_BYTES - len(buf))
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        buf += data
        if not data:
            self._drop(sock)
        elif len(buf) == TOKEN_BYTES:
            del self._handshakes[sock]
            n = self._match(bytes(buf))
            if n is None:
                sock.close()  # not one of ours
                return []
            sock.setblocking(True)
            return [("conn", n, Channel(sock))]
        return []

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._handshakes) >= HANDSHAKE_MAX:
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshakes[sock] = bytearray()

    def _match(self, token: bytes) -> int | None:
        """The worker this token was given to (each token is accepted once); None if none."""
        found = None
        with self._lock:
            for n, expected in self._tokens.items():
                if hmac.compare_digest(expected, token):  # compare all: no timing hint
                    found = n
            if found is None:
                return None
            del self._tokens[found]
            popen = self._popens.get(found)
        if popen is not None and popen.stdin is not None:
            try:
                popen.stdin.close()  # it has what it needs
            except OSError:
                pass
        return found

    def _drop(self, sock: socket.socket) -> None:
        self._handshakes.pop(sock, None)
        sock.close()

    def events(self) -> list[Event]:
        with self._lock:
            events, self._exits = self._exits, []
        return events

    def stop(self, n: int, pid: int | None, start: str | None, kill: bool) -> None:
        with self._lock:
            popen = self._popens.get(n)
        if popen is None:
            return  # it has exited (and was reaped): nothing to signal
        try:
            if kill:
                popen.kill()  # SIGKILL, or TerminateProcess
            else:
                popen.terminate()  # SIGTERM, or TerminateProcess
        except OSError:
            pass

    def close(self) -> None:
        """Stop listening; running workers (detached ones) are left alone."""
        for sock in list(self._handshakes):
            self._drop(sock)
        self._listener.close()


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of sockets: AF_UNIX where there is one, else loopback TCP (as
    ``socket.socketpair`` does on Windows)."""
    if hasattr(socket, "AF_UNIX"):
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname()[:2])
        b, _ = listener.accept()
    return a, b


def make_launcher(kind: str, config: dict[str, Any], wake: Any) -> Launcher:
    if kind == "fork":
        return ForkLauncher(config, wake)
    return SpawnLauncher(config, wake)
