"""Fixtures for nbtasks' core tests: a real store on disk in ``tmp_path``.

The signing key and the default store are set for the whole session *at import time* (before
any test, and inherited by the subprocesses some tests start), so no test ever writes to
``~/.config/nbtasks`` or to ``./.nbtasks``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="nbtasks-tests-"))
os.environ["NBTASKS_KEY"] = "nbtasks-test-suite-key, at least 32 bytes long"
os.environ["NBTASKS_STORE"] = str(_SESSION_DIR / "default-store")
os.environ["XDG_CONFIG_HOME"] = str(_SESSION_DIR / "config")

import nbtasks  # noqa: E402  (after the environment above)
from nbtasks import _app as _app_module  # noqa: E402


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def app(store_path: Path) -> Iterator[nbtasks.App]:
    """An App on a fresh store in ``tmp_path``, shut down (and flushed) after the test."""
    a = nbtasks.App(store=store_path, workers=2)
    try:
        yield a
    finally:
        a.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def make_app(store_path: Path) -> Iterator[Callable[..., nbtasks.App]]:
    """More Apps (on the same store by default), all shut down after the test."""
    made: list[nbtasks.App] = []

    def make(store: Any = None, **kwargs: Any) -> nbtasks.App:
        a = nbtasks.App(store=store_path if store is None else store, **kwargs)
        made.append(a)
        return a

    yield make
    for a in reversed(made):
        a.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def default_store(tmp_path: Path) -> Iterator[Path]:
    """The default app configured on a store in ``tmp_path``; reset afterwards."""
    path = tmp_path / "default"
    nbtasks.configure(store=path, workers=2)
    try:
        yield path
    finally:
        old = _app_module._default
        with _app_module._default_lock:
            _app_module._default = None
            _app_module._default_settings.clear()
        if old is not None:
            old.shutdown(wait=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import shutil

    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
