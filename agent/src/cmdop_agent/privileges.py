"""Process isolation: run as the installing user, and let nothing we start gain privileges."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from .errors import AgentError

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39


def refuse_root(allow_root: bool) -> None:
    if os.geteuid() == 0 and not allow_root:
        raise AgentError(
            "refusing to run as root: the agent runs as the user who installed it and every "
            "command would run as root too; run it as that user, or pass --allow-root if you "
            "really mean it"
        )


def _prctl(option: int, arg: int = 0) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    result = libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0))
    if result < 0:
        err = ctypes.get_errno()
        raise AgentError(f"prctl({option}) failed: {os.strerror(err)}")
    return result


def set_no_new_privs() -> None:
    """Set PR_SET_NO_NEW_PRIVS on this process.

    The kernel keeps the flag across fork and execve and never clears it, so every shell,
    command and grandchild the agent starts cannot gain privileges through setuid/setgid
    binaries or file capabilities (sudo, su, ping's capabilities …). Fails closed: if the flag
    cannot be set the agent does not start.
    """
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    if _prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise AgentError("PR_SET_NO_NEW_PRIVS did not take effect; refusing to run work")
