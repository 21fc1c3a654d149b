"""The framed channel between the parent and a worker process."""

from __future__ import annotations

import select
import socket
from typing import Any

from ... import _codec


class Channel:
    """Pickled messages, each prefixed by its length, over a connected stream socket (what
    ``multiprocessing.connection`` does, without importing ``multiprocessing``: a cold start is
    ~10 ms shorter). Reads are buffered: one system call takes every message that has arrived.
    One sender and one receiver at a time (the callers hold locks). Portable: a blocking socket
    (a socketpair's end, or a loopback TCP connection) whose readability is asked of
    ``select`` (no ``MSG_DONTWAIT``, which Windows lacks)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.set_inheritable(False)  # not for a task's subprocesses
        self.sock = sock
        self._buf = bytearray()
        self._eof = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any) -> None:
        data = _codec.dumps_message(message)
        self.sock.sendall(len(data).to_bytes(4, "big") + data)

    def recv(self) -> Any:
        """The next message (blocks until it is complete); EOFError at the end of the stream."""
        while True:
            message = self.take()
            if message is not None:
                return message[0]
            self.fill(block=True)

    def take(self) -> tuple[Any] | None:
        """The next message if it is buffered already, as a 1-tuple; else None."""
        buf = self._buf
        if len(buf) < 4:
            return None
        end = 4 + int.from_bytes(buf[:4], "big")
        if len(buf) < end:
            return None
        data = bytes(buf[4:end])
        del buf[:end]
        return (_codec.loads(data),)

    def fill(self, block: bool = False) -> bool:
        """Read what has arrived (waiting for something if ``block``); False if nothing had.
        EOFError once the other end has closed and every message was taken."""
        if self._eof:
            raise EOFError("the other process closed the channel")
        if not block and not select.select([self.sock], [], [], 0)[0]:
            return False
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:  # a TCP peer that died (Windows says so)
            data = b""
        if not data:
            self._eof = True
            raise EOFError("the other process closed the channel")
        self._buf += data
        return True

    def poll(self) -> bool:
        """True if ``recv()`` has something to return (or to raise) without waiting long."""
        if len(self._buf) >= 4 or self._eof:
            return True
        try:
            return self.fill()
        except EOFError:
            return True

    def at_eof(self) -> bool:
        """The other end has closed and nothing is left to read (peeks: takes nothing). Only
        with no other reader at the same time."""
        if self._eof:
            return True
        if self._buf or not select.select([self.sock], [], [], 0)[0]:
            return False
        return self.sock.recv(1, socket.MSG_PEEK) == b""

    def close(self) -> None:
        self.sock.close()
