"""Process tasks defined in a ``__main__`` script (SPEC §7): functions, lambdas, classes and a
closure over an instance of a class defined here travel to the workers by value (cloudpickle).

Usage: python process_main.py STORE  -> prints one JSON object with the results.
"""

from __future__ import annotations

import json
import os
import sys

import nbtasks

OFFSET = 100  # a global of __main__, read by the task in the worker


class Oops(Exception):
    """An exception class defined in __main__: raised in the worker, restored here."""


class Acc:
    """A class defined in __main__: instances go to the worker and come back."""

    def __init__(self, items: list[int] | None = None) -> None:
        self.items = list(items or [])

    def add(self, x: int) -> Acc:
        self.items.append(x)
        return self


def main() -> None:
    app = nbtasks.App(store=sys.argv[1], process_workers=2)

    @app.task(executor="process")
    def add_offset(x: int) -> int:
        return x + OFFSET

    @app.task(executor="process")
    def grow(acc: Acc, n: int) -> Acc:
        for i in range(n):
            acc.add(i)
        return acc

    seed = Acc([7])

    def closure(n: int) -> list[int]:  # closes over a __main__ class instance
        return [*seed.items, n, os.getpid()]

    @app.task(executor="process")
    def fails(x: int) -> None:
        raise Oops(f"bad {x}")

    helper = app.task(lambda x: add_offset(x) * 2, executor="process", name="helper")
    results = {
        "add_offset": add_offset.delay(1).get(timeout=30),
        "helper": helper.delay(1).get(timeout=30),
        "closure": app.task(closure, executor="process").delay(5).get(timeout=30),
        "grow_items": (acc := grow.delay(Acc([1]), 3).get(timeout=30)).items,
        "grow_is_acc": isinstance(acc, Acc),
        "parent_pid": os.getpid(),
    }
    try:
        fails.delay(3).wait(timeout=30).return_value  # noqa: B018 - raises TaskFailed
    except nbtasks.TaskFailed as exc:
        cause = exc.__cause__
        results["error"] = [str(exc), isinstance(cause, Oops), str(cause)]
    app.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
