"""Everything nbtasks knows about IPython and ipykernel internals.

This is the only module (with ``_magics``) that may touch IPython/ipykernel, and it never
imports them unless they are already loaded: ``in_kernel()`` in plain Python costs a dict
lookup and loads nothing.

What lives here and why:

- ``in_kernel()``: are we inside an ipykernel with a frontend (as opposed to terminal IPython,
  plain Python or an IPython embedded without a kernel)?  Widgets are only built there.
- Version checks: ipykernel 7.0.0 and 7.0.1 cannot send comm messages from threads
  (ipywidgets#4001, ipykernel#1450, fixed by ipykernel#1451 in 7.1); the view updater relies on
  exactly that, so those versions get a warning once.
- ``route_comm_to_helper_subshell()``: on ipykernel versions with kernel subshells and per-comm
  reply routing (``BaseComm._reply_subshell_for``, ipykernel >= 7.4), messages for a given comm
  (e.g. a Cancel button's clicks) can be handled by a dedicated subshell thread, so the button
  works while the main shell is busy running another cell.  Without that the click waits until
  the kernel is idle.  Everything here is best effort: any surprise disables the routing and the
  button still works, only later.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

__all__ = [
    "cell_label",
    "cell_parent",
    "execution_count",
    "get_shell",
    "in_kernel",
    "ipykernel_version",
    "on_cell_end",
    "publish_display",
    "route_comm_to_helper_subshell",
    "route_task_displays",
    "thread_sends_supported",
    "warn_if_unsupported",
]

_lock = threading.Lock()
_helper_subshell_id: str | None = None
_helper_subshell_failed = False
_warned = False
_routed_pub: Any = None  # the display publisher whose displays route_task_displays routes


def get_shell() -> Any | None:
    """The running IPython shell, or None; never imports IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return None
    try:
        return get_ipython()
    except Exception:  # pragma: no cover - defensive: a broken IPython install
        return None


def _kernel() -> Any | None:
    shell = get_shell()
    return getattr(shell, "kernel", None) if shell is not None else None


def in_kernel() -> bool:
    """True inside an ipykernel (JupyterLab, Notebook, nbclient/nbconvert --execute, VS Code)."""
    return _kernel() is not None and "ipykernel" in sys.modules


def ipykernel_version() -> tuple[int, ...] | None:
    """ipykernel's version as a tuple of ints, or None when it is not loaded."""
    mod = sys.modules.get("ipykernel")
    if mod is None:
        return None
    raw = str(getattr(mod, "__version__", "0"))
    parts: list[int] = []
    for piece in raw.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def thread_sends_supported() -> bool:
    """False on ipykernel 7.0.0/7.0.1, whose comm messages sent from threads are lost."""
    version = ipykernel_version()
    return version is None or version[:2] != (7, 0)


def warn_if_unsupported() -> None:
    """Warn once when the kernel cannot deliver widget updates from the updater thread."""
    global _warned
    if _warned or thread_sends_supported():
        return
    _warned = True
    version = ".".join(map(str, ipykernel_version() or ()))
    warnings.warn(
        f"nbtasks: ipykernel {version} cannot send widget updates from threads "
        "(ipywidgets#4001); task widgets will not update live. "
        "Fix: pip install 'ipykernel>=7.1' (or 6.29.x).",
        RuntimeWarning,
        stacklevel=3,
    )


def cell_parent() -> dict[str, Any]:
    """The parent header of the execute_request being run (or last run) by the shell."""
    kernel = _kernel()
    if kernel is None:
        return {}
    try:
        parent = kernel.get_parent()
    except Exception:
        return {}
    return dict(parent) if parent else {}


def execution_count() -> int | None:
    """The ``In [n]`` of the running cell, if any.

    The shell's own counter is no use here: IPython (9.x) advances it *before* running the
    cell, so in the cell prompted ``[9]`` it already reads 10. The running cell's
    ``ExecutionResult``, which IPython hands the display hook before running the code, holds
    the cell's own number; outside a running cell the counter is read as it is."""
    shell = get_shell()
    running = getattr(getattr(shell, "displayhook", None), "exec_result", None)
    count = getattr(running, "execution_count", None)
    if isinstance(count, int):
        return count
    count = getattr(shell, "execution_count", None)
    return count if isinstance(count, int) else None


def _helper_subshell(kernel: Any) -> str | None:
    """Create (once per kernel) a subshell whose thread handles routed comm messages."""
    global _helper_subshell_id, _helper_subshell_failed
    with _lock:
        if _helper_subshell_id is not None or _helper_subshell_failed:
            return _helper_subshell_id
        try:
            channel_thread = getattr(kernel, "shell_channel_thread", None)
            if channel_thread is None:
                raise RuntimeError("kernel has no shell channel thread (ipykernel < 7)")
            manager = channel_thread.manager  # created on the kernel's main thread
            loop = manager._shell_channel_io_loop
            done = threading.Event()
            box: dict[str, Any] = {}

            def create() -> None:  # runs on the shell channel thread, as ipykernel requires
                try:
                    box["id"] = manager._create_subshell()
                except BaseException as exc:  # pragma: no cover - defensive
                    box["error"] = exc
                finally:
                    done.set()

            loop.add_callback(create)
            if not done.wait(5.0) or "id" not in box:
                raise RuntimeError(f"could not create a helper subshell: {box.get('error')!r}")
            _helper_subshell_id = str(box["id"])
        except Exception:
            _helper_subshell_failed = True
        return _helper_subshell_id


def route_comm_to_helper_subshell(comm: Any) -> bool:
    """Have the messages the frontend sends to ``comm`` handled on a helper subshell thread.

    Used for Cancel buttons: their click handler only writes a cancel request, so it is safe on
    any thread, and a subshell handles it while the main shell runs another cell.  Returns
    whether the routing is in place.  Call it from the cell thread.
    """
    kernel = _kernel()
    if kernel is None or comm is None:
        return False
    # ipykernel's shell channel thread asks comm._reply_subshell_for(data, default) which
    # subshell handles a comm_msg; older kernels do not ask and would ignore the attribute.
    if not hasattr(type(comm), "_reply_subshell_for"):
        return False
    if not getattr(kernel, "_supports_kernel_subshells", False):
        return False
    subshell_id = _helper_subshell(kernel)
    if subshell_id is None:
        return False

    def _route(data: Any, default: Any, _sid: str = subshell_id) -> str:
        return _sid

    # An instance attribute, not ``_reply_subshell_id``: publish_msg() resets that one on
    # every state update sent from the main shell.
    comm._reply_subshell_for = _route
    return True


def cell_label(filename: str) -> str | None:
    """IPython's name for the code of a cell (``Cell In[7]``) from the temporary file name
    ipykernel compiled it under (``/tmp/ipykernel_1234/567.py``), as IPython's own tracebacks
    show it; None for any other file or outside IPython."""
    shell = get_shell()
    compiler = getattr(shell, "compile", None) if shell is not None else None
    format_code_name = getattr(compiler, "format_code_name", None)
    if format_code_name is None:
        return None
    try:
        named = format_code_name(filename)
    except Exception:
        return None
    return " ".join(named) if named else None


def publish_display(bundle: dict[str, Any], display_id: str, update: bool = False) -> bool:
    """Show ``bundle`` as a display_data output tagged with ``display_id`` (``update``: replace
    every output already shown with that id, an update_display_data message). Returns whether
    it was sent; never raises (the kernel may be shutting down)."""
    shell = get_shell()
    publisher = getattr(shell, "display_pub", None) if shell is not None else None
    if publisher is None:
        return False
    try:
        publisher.publish(
            data=bundle, metadata={}, transient={"display_id": display_id}, update=update
        )
    except Exception:
        return False
    return True


def on_cell_end(callback: Any) -> bool:
    """Call ``callback()`` at the end of every cell, while the cell is still the one running
    (IPython's ``post_run_cell`` event): what it publishes goes to that cell, which is where
    nbclient (``jupyter nbconvert --execute``) listens. Registered once per callback."""
    shell = get_shell()
    events = getattr(shell, "events", None) if shell is not None else None
    if events is None:
        return False
    hooks = getattr(events, "callbacks", {}).get("post_run_cell", [])
    if not any(getattr(hook, "nbtasks_callback", None) is callback for hook in hooks):

        def _hook(_result: Any = None) -> None:  # IPython passes the cell's ExecutionResult
            callback()

        _hook.nbtasks_callback = callback  # type: ignore[attr-defined]
        events.register("post_run_cell", _hook)
    return True


def route_task_displays(
    take: Callable[[dict[str, Any] | None, bool, bool], bool],
    extra: Callable[[Any, dict[str, Any]], dict[str, Any]],
) -> bool:
    """Wrap the shell's display publisher and formatter so that a running task's displays go
    to the task (``_rich``), not to whichever cell runs now. Returns False without a shell.

    ``display()`` called from any thread formats with ``shell.display_formatter.format`` and
    publishes with ``shell.display_pub.publish`` (``clear_output`` with its ``clear_output``),
    and ipykernel sends that to the cell being executed. ``take(data, clear, wait)`` is asked
    first and returns whether a task took it; ``extra(obj, data)`` completes a bundle formatted
    in a task's thread. The wrappers are instance attributes, set once per shell.
    """
    shell = get_shell()
    pub = getattr(shell, "display_pub", None)
    formatter = getattr(shell, "display_formatter", None)
    if pub is None or formatter is None:
        return False
    global _routed_pub
    if _routed_pub is pub:
        return True
    publish, clear_output, fmt = pub.publish, pub.clear_output, formatter.format

    def routed_publish(data: dict[str, Any], metadata: Any = None, *args: Any, **kw: Any) -> Any:
        if take(data, False, False):
            return None
        return publish(data, metadata, *args, **kw)

    def routed_clear(wait: bool = False) -> Any:
        if take(None, True, wait):
            return None
        return clear_output(wait)

    def routed_format(obj: Any, *args: Any, **kw: Any) -> Any:
        data, metadata = fmt(obj, *args, **kw)
        return extra(obj, data), metadata

    pub.publish = routed_publish
    pub.clear_output = routed_clear
    formatter.format = routed_format
    _routed_pub = pub
    return True
