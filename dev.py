"""The set-up commands, the same on Linux, macOS and Windows (only Python 3.11+ and pip needed).

    python dev.py demo             # builds .venv, then runs `nbtasks demo` on the default store
    python dev.py test [ARGS...]   # builds .venv with the test extras, then runs pytest [ARGS]
    python dev.py lint             # ruff check, ruff format --check, mypy nbtasks
    python dev.py setup [core|test]

`make demo`, `make test` and `make lint` run these. Each builds ``.venv`` (``.venv/bin`` or, on
Windows, ``.venv\\Scripts``) and installs what it needs, again only when pyproject.toml changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
#: What each level installs (``.venv/.core``, ``.venv/.test`` mark that it was done).
EXTRAS = {"core": ".", "test": ".[test,notebook,bench]"}


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], cwd=ROOT, check=True)


def setup(level: str) -> None:
    """Make .venv and install nbtasks (editable, ``compat`` mode) with the extras of ``level``
    if not done yet."""
    marker = VENV / f".{level}"
    pyproject = ROOT / "pyproject.toml"
    if marker.exists() and marker.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    if not PY.exists():
        venv.create(VENV, with_pip=True)
        run(PY, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-U", "pip")
    if level == "test":
        setup("core")
    # editable_mode=compat: the repository's root goes on sys.path through a plain .pth line,
    # as a wheel's files would be found. setuptools' default for this layout installs an import
    # finder instead, which every new interpreter (a zygote, a spawned worker) imports at start
    # (~15 ms): a cost of the development install that users of a wheel never pay.
    run(
        PY,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-q",
        "--config-settings",
        "editable_mode=compat",
        "-e",
        EXTRAS[level],
    )
    marker.touch()


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if command == "setup":
            setup(rest[0] if rest else "test")
        elif command == "demo":
            setup("core")
            run(BIN / "nbtasks", "demo")
        elif command == "test":
            setup("test")
            run(PY, "-m", "pytest", "-p", "no:cacheprovider", *rest)
        elif command == "lint":
            setup("test")
            run(BIN / "ruff", "check", ".")
            run(BIN / "ruff", "format", "--check", ".")
            run(BIN / "mypy", "nbtasks")
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except subprocess.CalledProcessError as exc:
        return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
