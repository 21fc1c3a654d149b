"""Errors crossing between a Dask worker and the client: class path + traceback text, plus the
pickled exception when it round-trips (DESIGN principle 4, as ``concurrent.futures.process``)."""

from __future__ import annotations

import traceback
from typing import Any

from ..._codec import cloudpickle, dumps
from ..._errors import Retry


class RemoteTraceback(Exception):
    """The worker's traceback text, attached as ``__cause__`` of the exception it raised
    (as ``concurrent.futures.process`` does): the record shows where it failed remotely."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def encode_error(error: BaseException) -> dict[str, Any]:
    """An exception as class path + traceback text (+ the pickle when it round-trips), as
    ``concurrent.futures.process`` sends them; a ``Retry`` keeps its countdown, eta
    and new arguments."""
    out: dict[str, Any] = {}
    if isinstance(error, Retry):
        out["retry"] = {"msg": str(error), "countdown": error.countdown, "eta": error.eta}
        if error.retry_args is not None or error.retry_kwargs is not None:
            # checked to pickle by ctx.retry(), and read back only by this user's client
            out["retry"]["arguments"] = dumps((error.retry_args, error.retry_kwargs))
        if error.exc is None:
            return out
        error = error.exc
    cls = type(error)
    out["cls"] = f"{cls.__module__}.{cls.__qualname__}"
    out["msg"] = str(error)
    out["tb"] = "".join(traceback.format_exception(error))
    try:
        data = dumps(error)
        cloudpickle().loads(data)
        out["exc"] = data
    except Exception:
        pass
    return out


def decode_error(err: dict[str, Any]) -> BaseException:
    """The worker's error back as an exception: the original when it unpickles, else a stand-in
    with the same class path; the worker's traceback text is its ``__cause__``."""
    exc: BaseException | None = None
    if "cls" in err:
        data = err.get("exc")
        if data is not None:
            try:
                exc = cloudpickle().loads(data)
            except Exception:
                exc = None
        if isinstance(exc, BaseException):
            # Its frames are the worker's: the traceback text below tells them as they were.
            exc = exc.with_traceback(None)
        else:
            exc = _standin(err["cls"], err.get("msg", ""))
        exc.__cause__ = RemoteTraceback('\n"""\n' + err.get("tb", "") + '"""')
    retry = err.get("retry")
    if retry is not None:
        arguments = retry.get("arguments")
        args, kwargs = (None, None) if arguments is None else cloudpickle().loads(arguments)
        return Retry(
            retry.get("msg") or "retry",
            exc=exc,
            countdown=retry.get("countdown"),
            eta=retry.get("eta"),
            retry_args=args,
            retry_kwargs=kwargs,
        )
    assert exc is not None
    return exc


_standins: dict[str, type[Exception]] = {}


def _standin(path: str, message: str) -> BaseException:
    """An exception of a class that did not travel (it does not pickle, or is not importable
    here), named like the original so the record keeps its class path."""
    cls = _standins.get(path)
    if cls is None:
        module, _, qualname = path.rpartition(".")
        cls = type(
            qualname.rpartition(".")[2] or "RemoteError",
            (Exception,),
            {"__module__": module or "builtins", "__qualname__": qualname},
        )
        _standins[path] = cls
    return cls(message)
