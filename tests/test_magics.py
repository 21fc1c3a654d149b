"""nbtasks._magics outside a kernel: ``%tasks`` reads ids, statuses and durations as the CLI
does (nbtasks._text), with its errors as IPython UsageErrors."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

import nbtasks
from nbtasks import TaskStatus
from nbtasks._text import short_id

pytest.importorskip("IPython")
from IPython.core.error import UsageError

from nbtasks._magics import NbtasksMagics


@pytest.fixture
def magics(default_store: Path) -> Any:
    return NbtasksMagics(shell=None)


def tasks(magics: Any, line: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        magics.tasks(line)
    return out.getvalue()


@pytest.fixture
def pending(magics: Any) -> nbtasks.TaskResult:
    app = nbtasks.default_app()

    @app.task(name="magic.later")
    def later() -> int:
        return 1

    return later.apply_async(countdown=3600)


def test_cancel_by_short_id_or_start_of_the_id(magics: Any, pending: nbtasks.TaskResult) -> None:
    other = pending.task.apply_async(countdown=3600)  # type: ignore[union-attr]
    out = tasks(magics, f"cancel {short_id(pending.id).upper()}")
    assert out == f"cancelled magic.later {short_id(pending.id)}\n"
    assert pending.refresh().status is TaskStatus.CANCELLED
    # finished: the short id still names it (AsyncResult resolves short ids), and says so
    again = tasks(magics, f"cancel {short_id(pending.id)}")
    assert again == f"not cancelled: magic.later {short_id(pending.id)} is already CANCELLED\n"
    with pytest.raises(UsageError, match="no unfinished task"):
        tasks(magics, "cancel ffffffff")
    assert tasks(magics, f"cancel {other.id[:30]}").startswith("cancelled magic.later")


def test_status_and_duration_errors_use_the_parsers_words(magics: Any) -> None:
    with pytest.raises(UsageError) as info:
        tasks(magics, "--status nope")
    assert str(info.value).startswith("--status='nope' is not a status; expected one of READY")
    with pytest.raises(UsageError) as info:
        tasks(magics, "purge --older-than soon")
    assert str(info.value) == (
        "--older-than: 'soon' is not a duration; write seconds or a number with a unit "
        "(s, sec, m, min, h, d, w), e.g. 90, 90s, 15m, 2h, 7d or 1w"
    )
    with pytest.raises(UsageError, match="only finished results can be purged"):
        tasks(magics, "purge --status successful,running")


def test_purge_takes_the_units_of_both_front_ends(magics: Any, pending: nbtasks.TaskResult) -> None:
    pending.cancel()
    assert tasks(magics, "purge --older-than 1min --status cancelled") == "purged 0 tasks\n"
    assert tasks(magics, "purge --status Cancelled") == "purged 1 task\n"


def test_listing_outside_a_kernel_is_a_text_table(magics: Any, pending: nbtasks.TaskResult) -> None:
    text = tasks(magics, "--status ready")
    assert "magic.later" in text and short_id(pending.id) in text
    assert text.strip().endswith("(1 of 1 tasks)")


def test_help_prints_the_help_instead_of_an_error(magics: Any) -> None:
    """Issue 17: ``%tasks --help`` was a UsageError (argparse's exit after printing)."""
    text = tasks(magics, "--help")
    assert text.startswith("usage: %tasks") and "--name" in text and "any case" in text
    assert tasks(magics, "purge -h").startswith("usage: %tasks purge")
    with pytest.raises(UsageError, match="unrecognized arguments"):
        tasks(magics, "--nope")
