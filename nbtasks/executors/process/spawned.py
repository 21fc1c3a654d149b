"""A spawned worker's start (``launch.SpawnLauncher``): connect back to the pool over loopback
TCP, prove who it is with the token it read on stdin, then serve as any worker (``child.py``).
Its own session or process group, when detached, came from ``Popen``."""

from __future__ import annotations

import socket
from typing import Any


def main(settings: dict[str, Any]) -> None:
    from .zygote import lazy_package, preload

    lazy_package()
    config = settings["config"]
    sock = socket.create_connection(("127.0.0.1", int(settings["port"])))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(bytes.fromhex(settings["token"]))
    from .child import worker_main

    preload(config)
    worker_main(sock, config, bool(settings["detached"]))
