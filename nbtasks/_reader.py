"""The reading half of the Results seam, over a store: the App's and the worker-side app's.

Both apps hand out the same handles (``TaskResult``, ``GroupResult``) and read them from their
store the same way; they differ in what they may do to a record (the App sweeps and cancels what
it owns, the worker-side app asks the owner), which each defines itself: ``read_record``,
``cancel`` and ``registered``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._ports import Results
from ._result import GroupResult, TaskResult

if TYPE_CHECKING:
    from pathlib import Path

    from ._model import TaskRecord
    from ._ports import LiveTask
    from .store import Store


class StoreReader(Results):
    """``Results`` over ``self._store``: handles, the live table, listed rows, decoding."""

    _store: Store

    @property
    def store_path(self) -> Path:
        return self._store.path

    def result(self, task_id: str) -> TaskResult:
        """The stored TaskResult of any task, also one from an earlier kernel."""
        return TaskResult(task_id, self)

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
