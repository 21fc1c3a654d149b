"""``%%task`` and ``%tasks`` in a REAL ipykernel (issue 17): the task is named after the cell's
own prompt number, ``--help`` prints the help, and a Cancel click on a thread task that has not
reached a check shows at once that it was taken."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from test_kernel import SETUP, last_task_widget, wait_for

if TYPE_CHECKING:
    from conftest import KernelDriver

pytestmark = pytest.mark.kernel


@pytest.mark.timeout(60)
def test_task_cell_is_named_after_its_own_prompt(kernel: KernelDriver) -> None:
    kernel.run(SETUP)
    for _ in range(2):  # whatever the count, the name follows the prompt [n]
        cell = kernel.run("%%task -o r\n6 * 7")
        prompt = cell.reply["execution_count"]  # what the frontend shows as [n]
        assert kernel.value("[r.wait(10).return_value, r.task_name]") == [42, f"cell[{prompt}]"]


@pytest.mark.timeout(60)
def test_tasks_help_prints_the_help(kernel: KernelDriver) -> None:
    kernel.run(SETUP)
    cell = kernel.run("%tasks --help")  # raises (fails the run) if it is an error
    assert cell.stdout.startswith("usage: %tasks") and "--page-size" in cell.stdout
    assert not cell.displays  # no dashboard either


@pytest.mark.timeout(60)
def test_cancel_click_shows_cancel_requested_before_the_task_stops(kernel: KernelDriver) -> None:
    kernel.run(SETUP)
    kernel.run(
        "release = threading.Event()\n"
        "@nbtasks.task\n"
        "def deaf():\n"
        "    release.wait(30)  # no progress() and no check until released\n"
        "    nbtasks.current().check_cancelled()\n"
        "r = deaf.delay()\nr"
    )
    root = last_task_widget(kernel)
    button = kernel.part(root, "nbtasks-cancel")
    wait_for(kernel, lambda: kernel.value("r.status.value") == "RUNNING", timeout=10)
    kernel.click(button)
    wait_for(kernel, lambda: kernel.models[button].get("disabled") is True, timeout=5)
    assert kernel.models[button]["description"] == "cancel requested"
    assert kernel.value("r.status.value") == "RUNNING"  # not stopped yet: it has not checked
    kernel.run("release.set()")
    wait_for(kernel, lambda: kernel.value("r.status.value") == "CANCELLED", timeout=10)
