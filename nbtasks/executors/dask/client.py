"""The Dask client an executor uses, and one event handler per topic shared by its executors."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any


def connect(client: Any) -> tuple[Any, bool]:
    """The Client to use and whether this executor made it (and so closes it)."""
    import distributed

    if client is None:
        try:
            return distributed.default_client(), False
        except ValueError:
            raise ValueError(
                "executor='dask' needs a Dask cluster, and no Dask client exists in this "
                "process: pass one with nbtasks.App(dask=Client(...)) or "
                "nbtasks.configure(dask='tcp://scheduler:8786'), or create a "
                "distributed.Client() before submitting"
            ) from None
    if isinstance(client, distributed.Client):
        if client.asynchronous:
            raise TypeError(
                "App(dask=...) needs a synchronous distributed.Client (asynchronous=False): "
                "nbtasks talks to it from its own threads"
            )
        return client, False
    if isinstance(client, str) or hasattr(client, "scheduler_address"):
        try:
            return distributed.Client(client, set_as_default=False), True
        except OSError as exc:
            raise OSError(f"App(dask={client!r}): cannot reach the Dask scheduler: {exc}") from exc
    raise TypeError(
        "App(dask=...) takes a distributed.Client, a cluster (e.g. LocalCluster) or a "
        f"scheduler address such as 'tcp://127.0.0.1:8786', got {client!r}"
    )


def scheduler_address(client: Any) -> str:
    try:
        return str(client.scheduler.address)
    except AttributeError:
        return "(unknown)"


class Hub:
    """One event handler per topic per Client (Dask keeps only one), fanned out to every
    executor on that client; a handler the user had set keeps being called."""

    _lock = threading.Lock()

    def __init__(self, client: Any) -> None:
        self.client = client
        self.listeners: dict[str, list[Callable[[Any], None]]] = {}
        self.previous: dict[str, Any] = {}
        self.tasks: set[asyncio.Future[Any]] = set()
        self.comm = client.scheduler_comm  # a new one after a reconnection

    @classmethod
    def of(cls, client: Any) -> Hub:
        """The client's hub, kept on the client itself (it goes away with it)."""
        with cls._lock:
            hub: Hub | None = getattr(client, "_nbtasks_hub", None)
            if hub is None:
                hub = cls(client)
                client._nbtasks_hub = hub
            return hub

    def listen(self, topic: str, fn: Callable[[Any], None]) -> None:
        with self._lock:
            fns = self.listeners.get(topic)
            if fns is None:
                fns = self.listeners[topic] = []
                previous = getattr(self.client, "_event_handlers", {}).get(topic)
                if getattr(previous, "_nbtasks", False):
                    previous = None  # ours, left by an executor that has shut down
                self.previous[topic] = previous
                self.client.subscribe_topic(topic, self._fan_out(topic))
            fns.append(fn)

    def unlisten(self, topic: str, fn: Callable[[Any], None]) -> None:
        with self._lock:
            fns = self.listeners.get(topic)
            if not fns or fn not in fns:
                return
            fns.remove(fn)
            if fns:
                return
            del self.listeners[topic]
            previous = self.previous.pop(topic, None)
        try:
            if previous is not None:
                self.client.subscribe_topic(topic, previous)
                return
            if self.client.status == "running":
                self.client.unsubscribe_topic(topic)
            # unsubscribe_topic() leaves the handler in place: drop ours.
            handlers = getattr(self.client, "_event_handlers", {})
            if getattr(handlers.get(topic), "_nbtasks", False):
                del handlers[topic]
        except Exception:  # pragma: no cover - the client is closing
            pass

    def check(self) -> None:
        """After a reconnection (maybe to a new scheduler), subscribe again: cheap to repeat,
        and a restarted scheduler would not know the topics."""
        comm = self.client.scheduler_comm
        if comm is self.comm or comm is None or self.client.status != "running":
            return
        with self._lock:
            self.comm = comm
            topics = list(self.listeners)
        for topic in topics:
            try:
                self.client.subscribe_topic(topic, self._fan_out(topic))
            except Exception:  # pragma: no cover - lost again: the next check retries
                self.comm = None

    def _fan_out(self, topic: str) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            previous = self.previous.get(topic)
            if previous is not None:
                result = previous(event)
                if inspect.isawaitable(result):  # a coroutine handler: Dask would await it
                    task = asyncio.ensure_future(result)
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            for fn in list(self.listeners.get(topic, ())):
                fn(event)

        handler._nbtasks = True  # type: ignore[attr-defined]
        return handler
