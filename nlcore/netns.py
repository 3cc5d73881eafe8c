"""Running a function inside another network namespace without moving the process.

setns(2) with CLONE_NEWNET moves only the calling thread, and a socket keeps the namespace it
was created in for life, whichever thread uses it later. So :func:`call_in_netns` starts a
short-lived thread, switches it into the namespace, runs the function there (typically: create
a netlink socket) and hands back its result; the caller's own threads never change namespace.
Namespaces are named as ``ip netns`` does (a name under /var/run/netns) or given as a path
(e.g. a CNI_NETNS ``/proc/<pid>/ns/net``) or an open descriptor.
"""
from __future__ import annotations

import ctypes
import errno
import os
import threading
from typing import Callable, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000  # linux/sched.h
NETNS_RUN_DIR = "/var/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)


class SetnsError(OSError):
    """setns(2) refused to enter the namespace: ``errno`` is the kernel's (EINVAL for a file
    that is not a network namespace, EPERM without CAP_SYS_ADMIN)."""


def netns_path(netns: str) -> str:
    """``netns`` if it is an absolute path, else its ``ip netns`` path under /var/run/netns."""
    return netns if netns.startswith("/") else os.path.join(NETNS_RUN_DIR, netns)


def setns(fd: int, where: str = "") -> None:
    """Move the calling thread into the network namespace open as ``fd``. Raises SetnsError."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise SetnsError(e, f"setns({where or fd}): {os.strerror(e)}")


def call_in_netns(netns: str | int, fn: Callable[[], T], *, timeout: float | None = None,
                  name: str = "netns") -> T:
    """``fn()`` run by a fresh thread (called ``name``) switched into ``netns``: a name under
    /var/run/netns, an absolute path, or an open descriptor (the caller keeps it; it is
    duplicated for the thread). Returns fn's result or re-raises its exception here.

    Raises OSError from opening the path (FileNotFoundError for a missing namespace) before any
    thread starts, :class:`SetnsError` if the switch fails, and TimeoutError (ETIMEDOUT) if
    ``timeout`` seconds pass first; the thread is a daemon and finishes on its own, and what it
    returns then is dropped.
    """
    where = netns_path(netns) if isinstance(netns, str) else f"fd {netns}"
    # The thread owns its own descriptor: after a timeout the caller may close theirs while the
    # thread still needs it, and a recycled fd number would be another file.
    fd = os.open(where, os.O_RDONLY | os.O_CLOEXEC) if isinstance(netns, str) else os.dup(netns)
    box: dict[str, object] = {}

    def target() -> None:
        try:
            setns(fd, where)
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e
        finally:
            os.close(fd)

    try:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
    except BaseException:
        os.close(fd)
        raise
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(errno.ETIMEDOUT,
                           f"no answer from the thread in {where} within {timeout} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
