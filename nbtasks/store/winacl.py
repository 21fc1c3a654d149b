"""SPEC §10's owner-only check on Windows, where there are no uids or mode bits: the store
directory's owner SID must be the current user's, and its DACL must not let Everyone, Users or
Authenticated Users write to it (create, change or delete files in it, or change its ACL).

ctypes over advapi32 (``GetNamedSecurityInfoW``, ``GetTokenInformation(TokenUser)``,
``EqualSid``, ``GetAce``, ``ConvertSidToStringSidW``). It runs on Windows only, and has not been
run by the tests on Linux (docs/security.md, docs/platforms.md): a Windows CI job runs it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any, Final

#: ctypes with its Windows-only names (WinDLL, get_last_error), which mypy knows only on Windows.
_CTYPES: Any = ctypes

_SE_FILE_OBJECT: Final = 1
_OWNER_INFO: Final = 0x1
_DACL_INFO: Final = 0x4
_TOKEN_QUERY: Final = 0x8
_TOKEN_USER: Final = 1
_ACCESS_ALLOWED: Final = 0  # ACCESS_ALLOWED_ACE_TYPE
_INHERIT_ONLY: Final = 0x08  # an ACE for the directory's children, not for itself
#: FILE_ADD_FILE, FILE_ADD_SUBDIRECTORY, FILE_DELETE_CHILD, DELETE, WRITE_DAC, WRITE_OWNER,
#: GENERIC_ALL, GENERIC_WRITE.
_WRITE_RIGHTS: Final = 0x2 | 0x4 | 0x40 | 0x10000 | 0x40000 | 0x80000 | 0x10000000 | 0x40000000
#: Everyone, Authenticated Users, Users.
_OTHERS: Final = {"S-1-1-0": "Everyone", "S-1-5-11": "Authenticated Users", "S-1-5-32-545": "Users"}


class _AceHeader(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_ubyte),
        ("flags", ctypes.c_ubyte),
        ("size", ctypes.c_ushort),
        ("mask", ctypes.c_ulong),  # ACCESS_ALLOWED_ACE: then the SID, at offset 8
    ]


def check_windows_owner(directory: Path) -> str | None:  # pragma: no cover - Windows
    """Why the directory is not owner-only (a sentence that follows "the store X "), or None
    when it is: owned by the current user, and nobody else of Everyone/Users/Authenticated
    Users may write to it."""
    advapi = _CTYPES.WinDLL("advapi32", use_last_error=True)
    kernel = _CTYPES.WinDLL("kernel32", use_last_error=True)
    owner, dacl, descriptor = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
    err = advapi.GetNamedSecurityInfoW(
        str(directory),
        _SE_FILE_OBJECT,
        _OWNER_INFO | _DACL_INFO,
        ctypes.byref(owner),
        None,
        ctypes.byref(dacl),
        None,
        ctypes.byref(descriptor),
    )
    if err:
        return f"cannot be checked (GetNamedSecurityInfoW failed with error {err})"
    try:
        me = _current_user_sid(advapi, kernel)
        if me is None:
            return "cannot be checked (the current user's SID cannot be read)"
        if not advapi.EqualSid(owner, ctypes.c_void_p(ctypes.addressof(me))):
            return f"belongs to another user ({_sid_text(advapi, kernel, owner)})"
        if not dacl.value:
            return "can be written by others (it has no access control list: Everyone may)"
        writers = _writers(advapi, kernel, dacl)
        if writers:
            return f"can be written by others ({' and '.join(writers)} may write to it)"
        return None
    finally:
        kernel.LocalFree(descriptor)


def _current_user_sid(advapi: Any, kernel: Any) -> Any:  # pragma: no cover - Windows
    """The SID of the user this process runs as (a buffer holding TOKEN_USER), or None."""
    token = ctypes.c_void_p()
    if not advapi.OpenProcessToken(kernel.GetCurrentProcess(), _TOKEN_QUERY, ctypes.byref(token)):
        return None
    try:
        size = ctypes.c_ulong(0)
        advapi.GetTokenInformation(token, _TOKEN_USER, None, 0, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        if not advapi.GetTokenInformation(token, _TOKEN_USER, buf, size, ctypes.byref(size)):
            return None
        sid = ctypes.c_void_p.from_buffer(buf).value  # TOKEN_USER.User.Sid: its first field
        if sid is None:
            return None
        length = advapi.GetLengthSid(ctypes.c_void_p(sid))
        copy = ctypes.create_string_buffer(length)
        ctypes.memmove(copy, sid, length)
        return copy
    finally:
        kernel.CloseHandle(token)


def _writers(advapi: Any, kernel: Any, dacl: Any) -> list[str]:  # pragma: no cover - Windows
    """The names of the groups in ``_OTHERS`` that an allow ACE of the DACL lets write."""
    count = ctypes.c_ushort.from_address(dacl.value + 4).value  # ACL: rev, sbz, size, count
    out = []
    for i in range(count):
        ace = ctypes.c_void_p()
        if not advapi.GetAce(dacl, i, ctypes.byref(ace)) or not ace.value:
            continue
        head = _AceHeader.from_address(ace.value)
        if head.type != _ACCESS_ALLOWED or head.flags & _INHERIT_ONLY:
            continue
        if not head.mask & _WRITE_RIGHTS:
            continue
        sid = _sid_text(advapi, kernel, ctypes.c_void_p(ace.value + 8))
        if sid in _OTHERS:
            out.append(_OTHERS[sid])
    return out


def _sid_text(advapi: Any, kernel: Any, sid: Any) -> str:  # pragma: no cover - Windows
    text = ctypes.c_wchar_p()
    if not advapi.ConvertSidToStringSidW(sid, ctypes.byref(text)):
        return "an unknown SID"
    try:
        return str(text.value)
    finally:
        kernel.LocalFree(text)
