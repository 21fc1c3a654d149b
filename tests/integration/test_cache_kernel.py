"""The code identity of cached tasks in a REAL ipykernel (SPEC §6, issue 16).

Cells run as a user runs them: a helper redefined in another cell, the kernel restarted and
the definitions run again on the same store, ``%%task --cache`` cells run again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import KernelDriver

pytestmark = pytest.mark.kernel

SETUP = "%load_ext nbtasks\nimport nbtasks\n"
HELPER_1 = "def helper(x):\n    return x + 1\n"
HELPER_100 = "def helper(x):\n    return x + 100\n"
TASK = "@nbtasks.task(cache=True)\ndef f(x):\n    return helper(x)\n"


def submit(kernel: KernelDriver, var: str) -> list[object]:
    """``f.delay(1)`` in the kernel, waited for: [value, cached, id]."""
    kernel.run(f"{var} = f.delay(1)\n{var}.wait(30)")
    return list(kernel.value(f"[{var}.get(), {var}.cached, {var}.id]"))


@pytest.mark.timeout(180)
def test_a_redefined_helper_recomputes_and_a_restart_finds_the_result(
    kernel: KernelDriver,
) -> None:
    kernel.run(SETUP)
    kernel.run(HELPER_1)
    kernel.run(TASK)
    first = submit(kernel, "r1")
    assert first[:2] == [2, False]
    kernel.run(HELPER_100)  # another cell redefines the helper
    second = submit(kernel, "r2")
    assert second[:2] == [101, False] and second[2] != first[2]
    kernel.run(HELPER_1)
    assert submit(kernel, "r3") == [2, True, first[2]]
    kernel.run("nbtasks.default_app().shutdown(wait=True)")  # everything committed
    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    for cell in (SETUP, HELPER_1, TASK):  # the notebook run again after the restart
        kernel.run(cell)
    assert submit(kernel, "r4") == [2, True, first[2]]
    kernel.run(HELPER_100)
    assert submit(kernel, "r5") == [101, True, second[2]]


@pytest.mark.timeout(180)
def test_task_cache_cell_is_reused_until_a_name_it_reads_changes(kernel: KernelDriver) -> None:
    kernel.run(SETUP)
    kernel.run(HELPER_1 + "N = 5\n")
    cell = "%%task --cache -o {var}\ntotal = helper(N) * 2\ntotal\n"

    def run_cell(var: str) -> list[object]:
        kernel.run(cell.format(var=var))
        kernel.run(f"{var}.wait(30)")
        return list(kernel.value(f"[{var}.get(), {var}.cached, {var}.id, {var}.task_name]"))

    first = run_cell("c1")
    assert first[0] == 12 and first[1] is False and first[3] == "cell"
    assert kernel.value("total") == 12  # the body ran: what it assigns is set
    assert run_cell("c2") == [12, True, first[2], "cell"]  # nothing changed
    kernel.run("N = 6")
    third = run_cell("c3")
    assert third[:2] == [14, False] and third[2] != first[2]
    kernel.run(HELPER_100)  # a function the cell calls, redefined
    fourth = run_cell("c4")
    assert fourth[:2] == [212, False]
    kernel.run(HELPER_1 + "N = 5\n")
    assert run_cell("c5") == [12, True, first[2], "cell"]
    kernel.run("%%task --cache -o c6\ntotal = helper(N) * 3\ntotal\n")  # the cell edited
    kernel.run("c6.wait(30)")
    assert kernel.value("[c6.get(), c6.cached]") == [18, False]
