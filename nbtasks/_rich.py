"""Rich output of tasks: what ``display(...)`` and matplotlib figures show inside a task.

SPEC §4 "Rich output": a task's displays are kept, in order, as MIME bundles
(``TaskResult.displayed``), and never reach whichever cell happens to run. This module turns an
object into a bundle and puts the hooks in place that send a running task's displays to its
``Context`` (``Context.add_display``) instead of a cell:

- **In an IPython shell** (a kernel): ``display()`` formats with the shell's
  ``display_formatter`` and publishes with its ``display_pub``, from whatever thread calls it;
  the publish would land in the cell that runs now. ``_kernel.route_task_displays`` wraps both
  on the shell's instances: in a task's thread the formatter's bundle gets what IPython leaves
  out (``application/json`` for a dict or list, a figure's PNG) and the publish goes to the task;
  elsewhere both behave as before. matplotlib's inline backend shows figures with ``display``,
  so ``plt.show()`` in a task is routed the same way.
- **Without a shell** (a process worker, a Dask worker, plain Python): ``display`` would print
  the object's repr. ``IPython.core.display_functions.display`` and ``clear_output`` are
  wrapped when that module is imported (at once if it is loaded), and ``matplotlib.pyplot.show``
  when pyplot is: in a task they add bundles; elsewhere they call the originals. The backend of
  such a process is Agg when it inherited the kernel's inline backend (which needs a kernel).

Encoding (a figure's PNG, ``_repr_*_`` calls) happens here, in the thread that displays: the
task's thread or process, never the view updater. Nothing here imports IPython or matplotlib:
each is patched only once something else imported it.
"""

from __future__ import annotations

import base64
import importlib.abc
import io
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Final

from ._model import CURRENT

__all__ = [
    "MIME_TYPES",
    "figure_bundle",
    "install_display_capture",
    "mime_bundle",
    "patch_on_import",
]

#: The MIME types a bundle keeps (SPEC §4), in the order Jupyter prefers them.
MIME_TYPES: Final = (
    "text/html",
    "text/markdown",
    "image/svg+xml",
    "image/png",
    "application/json",
    "text/plain",
)
_REPR_METHODS: Final = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("application/json", "_repr_json_"),
)
PLAIN_LIMIT: Final = 10_000  # characters of a repr kept as text/plain
_INLINE_BACKEND: Final = "module://matplotlib_inline.backend_inline"


def is_figure(obj: Any) -> bool:
    """A matplotlib Figure (told by its class's module: matplotlib is never imported here)."""
    module = type(obj).__module__ or ""
    return module.startswith("matplotlib.") and hasattr(obj, "savefig")


def figure_bundle(fig: Any) -> dict[str, Any]:
    """A figure as Jupyter shows it: its PNG (base64 text) and a text/plain repr."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return {
        "image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
        "text/plain": _plain(fig),
    }


def mime_bundle(obj: Any) -> dict[str, Any]:
    """An object as a bundle {MIME type: data}: ``text/plain`` always; the others where the
    object has them (``_repr_mimebundle_``, ``_repr_html_`` ...), a dict or list as
    ``application/json``, a figure as its PNG. Binary data is base64 text, as in nbformat."""
    if is_figure(obj):
        return figure_bundle(obj)
    data: dict[str, Any] = {}
    method = getattr(obj, "_repr_mimebundle_", None)
    if callable(method) and not isinstance(obj, type):
        got = _call(method, include=None, exclude=None)
        if isinstance(got, tuple) and got:
            got = got[0]
        if isinstance(got, dict):
            data.update((k, v) for k, v in got.items() if k in MIME_TYPES and v is not None)
    for mime, name in _REPR_METHODS:
        if mime in data or isinstance(obj, type):
            continue
        method = getattr(obj, name, None)
        if callable(method):
            got = _call(method)
            if isinstance(got, tuple) and got:  # (data, metadata)
                got = got[0]
            if got is not None:
                data[mime] = got
    add_missing(obj, data)
    return data


def add_missing(obj: Any, data: dict[str, Any]) -> dict[str, Any]:
    """What a bundle of ``obj`` lacks that nbtasks keeps: text/plain, a dict or list as JSON,
    image bytes as base64 text (IPython's formatter gives a dict only as text)."""
    if "text/plain" not in data:
        data["text/plain"] = _plain(obj)
    if "application/json" not in data and isinstance(obj, dict | list):
        try:
            data["application/json"] = json.loads(json.dumps(obj, allow_nan=False))
        except (TypeError, ValueError, RecursionError):
            pass  # not JSON: text/plain only
    for mime in ("image/png",):
        value = data.get(mime)
        if isinstance(value, bytes | bytearray):
            data[mime] = base64.b64encode(value).decode("ascii")
    svg = data.get("image/svg+xml")
    if isinstance(svg, bytes):
        data["image/svg+xml"] = svg.decode("utf-8", "replace")
    for mime in ("text/html", "text/markdown", "text/plain"):
        if mime in data and not isinstance(data[mime], str):
            data[mime] = str(data[mime])
    return data


def _plain(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:  # a broken __repr__ must not fail the task's display
        text = f"<{type(obj).__name__} object (repr failed: {exc!r})>"
    return text if len(text) <= PLAIN_LIMIT else text[:PLAIN_LIMIT] + "..."


def _call(method: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return method(**kwargs)
    except Exception:  # IPython skips a failing formatter too; text/plain still shows
        return None


# --------------------------------------------------------------------------- the hooks

_lock = threading.Lock()
_installed = False
_hook: _ImportHook | None = None
_ours: list[Callable[..., Any]] = []  # the wrappers put in place (a module reloaded keeps them)


def install_display_capture() -> None:
    """Route the displays of running tasks to their Context (once per process; see above)."""
    global _installed
    with _lock:  # once per attempt start: an uncontended lock costs next to nothing
        if _installed:
            return
        _installed = True
        if "IPython" in sys.modules:  # a shell needs IPython: no _kernel import without it
            from . import _kernel

            if _kernel.route_task_displays(_take_published, _format_extra):
                return  # a shell: its publisher is routed (inline figures included)
        if os.environ.get("MPLBACKEND") == _INLINE_BACKEND and "matplotlib" not in sys.modules:
            os.environ["MPLBACKEND"] = "Agg"  # inherited from a kernel; needs one to show
        patch_on_import("IPython.core.display_functions", _patch_display_functions)
        patch_on_import("matplotlib.pyplot", _patch_pyplot)


def _take_published(data: dict[str, Any] | None, clear: bool, wait: bool) -> bool:
    """The shell's publisher asks: does a running task take this display (or clear_output)?"""
    ctx = CURRENT.get()
    if ctx is None:
        return False
    if clear:
        ctx.clear_display(wait)
    elif data is not None:
        ctx.add_display(add_missing(None, {k: v for k, v in data.items() if k in MIME_TYPES}))
    return True


def _format_extra(obj: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The shell's formatter made ``data`` of ``obj``: in a task, add what nbtasks keeps."""
    if CURRENT.get() is None:
        return data
    if is_figure(obj) and "image/png" not in data:
        data = {**data, **figure_bundle(obj)}
    return add_missing(obj, dict(data))


def _patch_display_functions(module: Any) -> None:
    original_display = module.display
    original_clear = module.clear_output
    if original_display in _ours:
        return

    def display(*objs: Any, **kwargs: Any) -> Any:
        ctx = CURRENT.get()
        if ctx is None:
            return original_display(*objs, **kwargs)
        raw = kwargs.get("raw", False)
        for obj in objs:
            bundle = dict(obj) if raw and isinstance(obj, dict) else mime_bundle(obj)
            ctx.add_display(add_missing(obj, bundle))
        return None

    def clear_output(wait: bool = False) -> None:
        ctx = CURRENT.get()
        if ctx is None:
            return original_clear(wait)  # type: ignore[no-any-return]
        ctx.clear_display(wait)
        return None

    _ours.extend((display, clear_output))
    display.__doc__ = original_display.__doc__
    module.display = display
    module.clear_output = clear_output
    for name in ("IPython.display", "IPython.core.display", "IPython"):
        other = sys.modules.get(name)  # already bound the originals
        if other is not None and getattr(other, "display", None) is original_display:
            setattr(other, "display", display)  # noqa: B010  (a module ModuleType types)
        if other is not None and getattr(other, "clear_output", None) is original_clear:
            setattr(other, "clear_output", clear_output)  # noqa: B010


def _patch_pyplot(pyplot: Any) -> None:
    original_show = pyplot.show
    if original_show in _ours:
        return

    def show(*args: Any, **kwargs: Any) -> Any:
        ctx = CURRENT.get()
        if ctx is None:
            return original_show(*args, **kwargs)
        for num in pyplot.get_fignums():  # a worker runs one task at a time: they are its own
            fig = pyplot.figure(num)
            ctx.add_display(figure_bundle(fig))
            pyplot.close(fig)
        return None

    _ours.append(show)
    show.__doc__ = original_show.__doc__
    pyplot.show = show


_PATCHES: dict[str, Callable[[Any], None]] = {}  # module name -> its patch, once imported


def patch_on_import(name: str, patch: Callable[[Any], None]) -> None:
    """Call ``patch(module)`` on module ``name``: now if it is loaded, else right after it is
    imported (one import hook for all; the tqdm bridge uses it too). ``patch`` must be
    idempotent: a module already loaded is patched at once, and again by a later call."""
    global _hook
    module = sys.modules.get(name)
    if module is not None:
        patch(module)
        return
    _PATCHES[name] = patch
    if _hook is None:
        _hook = _ImportHook()
        sys.meta_path.insert(0, _hook)


class _ImportHook(importlib.abc.MetaPathFinder):
    """Patches a module of ``_PATCHES`` right after it is imported (and does nothing else)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        patch = _PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self._loader = loader
        self._patch = patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._patch(module)
