"""A Linux interpreter made to lack what macOS lacks (tests/integration/test_platforms.py).

Loaded by putting this directory first on ``PYTHONPATH``: it applies in that interpreter and in
every interpreter it starts (worker processes inherit the environment).

Simulated: ``socket.SOCK_SEQPACKET`` is gone (macOS has no SOCK_SEQPACKET for AF_UNIX sockets),
so nbtasks takes its portable process path (spawned workers, a stream channel).

Not simulated: ``sys.platform`` stays ``linux`` (the standard library branches on it); ``/proc``
cannot be taken away, so the start-time path macOS takes (``ps -o lstart=``) is called directly by
the test script (``nbtasks.store.identity.ps_start_time``); that forking after loading system
frameworks is unsafe on macOS cannot be simulated (the spawn path is what avoids it).
"""

from __future__ import annotations

import socket

SIMULATED = "macos"

if hasattr(socket, "SOCK_SEQPACKET"):
    delattr(socket, "SOCK_SEQPACKET")
