"""The per-user signing key (SPEC §10, "The key").

Signed pickles are only as safe as the key: whoever knows it can make nbtasks unpickle their
code. So the key is at least 32 bytes, and the key file is used only if it is a regular file
(not a symlink), owned by the user, readable by nobody else, and complete. Anything else is
refused with a ``StoreError`` that names the file and the fix; nbtasks never repairs a doubtful
key silently, since a key others could read must be replaced, not just chmod-ed.

Creation is atomic: the 32 random bytes are written and fsync-ed in a temporary file in the same
directory and only then hard-linked to their name (``link`` fails if the name exists: the
process that lost the race reads the winner's key, which is complete). A crash at any point
leaves either no key, a complete key, or a stray temporary file that nothing reads.

Portability: ``O_NOFOLLOW`` and ``O_NONBLOCK`` are used where ``os`` has them; ``os.lstat``
refuses a symlink everywhere (on Windows, which has no ``O_NOFOLLOW``, that check is the only
one, so a link swapped in between the two calls is not noticed there). The owner check needs
``os.getuid`` and the mode check POSIX permission bits: both are skipped on Windows, where the
file lives under the user's own ``%APPDATA%``. Where hard links are unsupported, Windows uses
``os.rename`` (which also fails when the name exists); other systems refuse to guess and say how
to make the key by hand.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Final

from ._errors import StoreError

#: The shortest key accepted, in bytes (a key file is created with exactly this many).
MIN_KEY_BYTES: Final = 32

_WINDOWS: Final = os.name == "nt"
_RM: Final = "del" if _WINDOWS else "rm"
_ENV_FIX: Final = (
    'export NBTASKS_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))")'
)
#: How ``link`` says the file system has no hard links (Linux vfat: EPERM).
_NO_LINKS: Final = {
    getattr(errno, name)
    for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EXDEV")
    if hasattr(errno, name)
}
_OPEN_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)  # a symlink put there after the lstat check fails to open
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO put there never blocks the open (SPEC: never hang)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def key_path() -> Path:
    """Where the key file is: ``$XDG_CONFIG_HOME/nbtasks/key`` if that is set, else
    ``%APPDATA%\\nbtasks\\key`` on Windows, else ``~/.config/nbtasks/key``."""
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base and _WINDOWS:
        base = os.environ.get("APPDATA")
    if not base:
        base = os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "nbtasks" / "key"


def load_key() -> bytes:
    """The signing key: ``NBTASKS_KEY``'s UTF-8 bytes if it is set, else the key file's bytes
    (the file is created on first use). Raises ``StoreError`` for a key that is not safe."""
    env = os.environ.get("NBTASKS_KEY")
    if env is not None:
        # surrogateescape: on POSIX a variable that is not UTF-8 gives back its own bytes.
        key = env.encode("utf-8", "surrogateescape")
        if len(key) < MIN_KEY_BYTES:
            n = len(key)
            what = "set but empty" if not n else f"only {n} byte{'s' if n > 1 else ''} long"
            raise StoreError(
                f"NBTASKS_KEY is {what}; the key that signs the store's pickled values must be "
                f"at least {MIN_KEY_BYTES} bytes of secret, since whoever can guess it can make "
                f"nbtasks unpickle (run) their code. Fix: set a long random key, {_ENV_FIX} "
                f"(values signed with the old key will then need nbtasks.App(store, trust=True)), "
                f"or unset NBTASKS_KEY to use the key file {key_path()}."
            )
        return key
    path = key_path()
    try:
        return _read(path)
    except (FileNotFoundError, NotADirectoryError):  # none yet (or no config dir: _create says)
        return _create(path)


def _refuse(path: Path, what: str, why: str, fix: str | None = None) -> StoreError:
    if fix is None:
        fix = (
            f"delete it ({_RM} {path}) and nbtasks makes a new one; values signed with it "
            "will then need nbtasks.App(store, trust=True)"
        )
    return StoreError(
        f"The nbtasks key file {path} {what}, so it was not used: {why}. Fix: {fix}. "
        f"(Or set NBTASKS_KEY instead: {_ENV_FIX})"
    )


def _read(path: Path) -> bytes:
    """The key in ``path``, once it passes every check (FileNotFoundError if there is none)."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise _symlink(path)
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if isinstance(e, FileNotFoundError | NotADirectoryError):
            raise
        if e.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a symlink (EMLINK: BSDs)
            raise _symlink(path) from None
        raise _refuse(
            path,
            f"cannot be opened ({e.strerror})",
            "nbtasks needs to read its key to sign and check values",
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            rm = f"{_RM} {path}"
            if stat.S_ISDIR(st.st_mode):
                rm = f"rmdir /s {path}" if _WINDOWS else f"rm -r {path}"
            raise _refuse(
                path,
                "is not a regular file",
                "the key must be a file of your own that holds the key's bytes",
                f"delete it ({rm}) and nbtasks makes a new one; values signed with it will "
                "then need nbtasks.App(store, trust=True)",
            )
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise _refuse(
                path,
                f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})",
                "whoever owns the key file can read or replace the key, and with it make "
                "nbtasks unpickle (run) their code",
                f"delete it ({_RM} {path}; you may need sudo) and nbtasks makes a new one of "
                "your own; values signed with it will then need nbtasks.App(store, trust=True)",
            )
        if not _WINDOWS and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise _refuse(
                path,
                f"has mode {mode:04o}: other users may read or write it",
                "whoever reads the key can make nbtasks unpickle (run) their code",
                f"chmod 600 {path}; if someone else may have read it, delete it instead "
                f"({_RM} {path}) and nbtasks makes a new one; values signed with the old key "
                "will then need nbtasks.App(store, trust=True)",
            )
        if st.st_size < MIN_KEY_BYTES:
            raise _short(path, st.st_size)
        chunks = []
        while chunk := os.read(fd, max(st.st_size, MIN_KEY_BYTES) + 1):
            chunks.append(chunk)
    finally:
        os.close(fd)
    key = b"".join(chunks)
    if len(key) < MIN_KEY_BYTES:  # cut short after fstat
        raise _short(path, len(key))
    return key


def _symlink(path: Path) -> StoreError:
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return _refuse(
        path,
        f"is a symbolic link{target}",
        "the key must be a regular file of your own, or whoever controls where the link "
        "points controls the key",
        f"delete the link ({_RM} {path}) and nbtasks makes a new key, or put a copy of the "
        "file it points to in its place (then chmod 600 it); values signed with another key "
        "will need nbtasks.App(store, trust=True)",
    )


def _short(path: Path, size: int) -> StoreError:
    why = "a short key lets anyone forge signed values"
    if not size:
        why += " (an empty key file is what an older nbtasks left when key creation was cut short)"
    return _refuse(path, f"holds {size} bytes, fewer than the {MIN_KEY_BYTES} a key needs", why)


def _create(path: Path) -> bytes:
    """Make the key file atomically, or read the one another process made first."""
    folder = path.parent
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        else:
            os.chmod(folder, 0o700)  # exactly owner-only, whatever the umask
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".key-", suffix=".tmp")  # 0600
    except OSError as e:
        raise _cannot_create(path, e) from None
    key = secrets.token_bytes(MIN_KEY_BYTES)
    try:
        try:
            view = memoryview(key)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if the name exists: the key is complete once it has one
        except FileExistsError:
            return _read(path)  # another process made it first; theirs is complete too
        except OSError as e:
            if not _WINDOWS:
                raise _cannot_create(path, e, linking=True) from None
            try:
                os.rename(tmp, path)  # no hard links here: rename also fails if the name exists
            except FileExistsError:
                return _read(path)
            except OSError as e2:
                raise _cannot_create(path, e2) from None
        _sync_dir(folder)
        return key
    finally:
        try:
            os.unlink(tmp)
        except OSError:  # renamed into place; else a stray temporary file that nothing reads
            pass


def _cannot_create(path: Path, e: OSError, linking: bool = False) -> StoreError:
    folder = path.parent
    if linking and e.errno in _NO_LINKS:
        why = (
            f"the file system of {folder} does not support hard links ({e.strerror}), which "
            "nbtasks needs to create the key atomically"
        )
        fix = f"make the key once by hand, (umask 077 && head -c 32 /dev/urandom > {path})"
    else:
        why = str(e.strerror or e)
        fix = f"make {folder} a directory you can write (mkdir -p {folder} && chmod 700 {folder})"
    return StoreError(
        f"nbtasks could not create its key file {path}: {why}. Fix: {fix}, "
        f"or set NBTASKS_KEY instead: {_ENV_FIX}"
    )


def _sync_dir(folder: Path) -> None:
    """Make the new name durable, so a power cut does not lose a key already used to sign."""
    if _WINDOWS:
        return  # directories cannot be opened (or fsync-ed) there
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
