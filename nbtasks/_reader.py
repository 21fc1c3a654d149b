"""The reading half of the Results seam, over a store: the App's and the worker-side app's.

Both apps hand out the same handles (``TaskResult``, ``GroupResult``) and read them from their
store the same way; they differ in what they may do to a record (the App sweeps and cancels what
it owns, the worker-side app asks the owner), which each defines itself: ``read_record``,
``cancel`` and ``registered``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import UnknownTaskId
from ._ports import Results
from ._result import GroupResult, TaskResult

if TYPE_CHECKING:
    from pathlib import Path

    from ._model import TaskRecord
    from ._ports import LiveTask
    from .store import Store

FULL_ID_HEX = 32  # hex digits in a full id (a UUID's 128 bits): a full id is looked up as is


#: What a display whose signature does not verify, and that has no text of its own, shows.
UNVERIFIED_DISPLAY = "(a display whose signature does not verify: not shown)"


class StoreReader(Results):
    """``Results`` over ``self._store``: handles, the live table, listed rows, decoding."""

    _store: Store

    @property
    def store_path(self) -> Path:
        return self._store.path

    def result(self, task_id: str) -> TaskResult:
        """The stored TaskResult of any task, also one from an earlier kernel (``task_id``: a
        full id, its start, or the short id views show: ``resolve_id``)."""
        return TaskResult(task_id, self)

    def resolve_id(self, text: str) -> str:
        """The full id of the one task ``text`` names: a full id as it is (no query), else the
        task whose id starts or ends with it (the short id ``%tasks`` and the widgets show).
        Unknown: UnknownTaskId; more than one: ValueError listing some of them."""
        if len(text.replace("-", "")) >= FULL_ID_HEX:
            return text
        found = self._store.ids_named(text, limit=3)
        if not found:
            raise UnknownTaskId(
                f"no task with id {text!r} in the store {self._store.path}, nor one whose id "
                "starts or ends with it; check the id, or open the store the task was "
                "submitted to"
            )
        if len(found) > 1:
            some = ", ".join(found[:2]) + (", ..." if len(found) > 2 else "")
            raise ValueError(
                f"task_id={text!r} names more than one task ({some}); give more of the id"
            )
        return found[0]

    def group_result(self, group_id: str) -> GroupResult:
        members, reused = self._store.group_record(group_id)
        results = [TaskResult(tid, self, cached=tid in reused) for tid in members]
        return GroupResult(self, group_id, results)

    def live(self, task_id: str) -> LiveTask | None:
        return self._store.live.get(task_id)

    def read_listed(self, task_id: str) -> tuple[TaskRecord, str]:
        return self._store.read_listed(task_id)

    def decode(self, enc: dict[str, Any], what: str, mmap: bool = False) -> Any:
        return self._store.decode_value(enc, what, mmap)

    def trusted_displays(self, bundles: list[Any], signatures: Any) -> list[dict[str, Any]]:
        codec = self._store.codec
        sigs = signatures if isinstance(signatures, list) else []
        out: list[dict[str, Any]] = []
        for i, bundle in enumerate(bundles):
            if not isinstance(bundle, dict):
                continue
            sig = sigs[i] if i < len(sigs) else None
            if codec.trust or codec.signer.bundle_verifies(bundle, sig):
                out.append(dict(bundle))
                continue
            text = bundle.get("text/plain")
            out.append({"text/plain": text if isinstance(text, str) else UNVERIFIED_DISPLAY})
        return out
