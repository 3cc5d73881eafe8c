"""Is this file a network namespace? Checks on an open descriptor, before setns(2) uses it.

A CNI_NETNS path that exists but is no namespace file (a bind mount that vanished leaves its
mount point, a plain file) has a statfs ``f_type`` other than ``NSFS_MAGIC`` (linux/magic.h),
the check the reference plugins' ``ns.IsNSorErr`` makes; an nsfs file of another namespace
type (``/proc/<pid>/ns/mnt``) is told apart by the ``NS_GET_NSTYPE`` ioctl. Both raise
:class:`~cni.errors.NotANetns` (code 4). Checking the descriptor that is then used leaves no
window in which the path could be swapped.
"""
from __future__ import annotations

import ctypes
import fcntl
import os

from nlcore.netns import CLONE_NEWNET

from .errors import NotANetns

NSFS_MAGIC = 0x6E736673  # statfs f_type of namespace files (linux/magic.h)
NS_GET_NSTYPE = 0xB703  # ioctl: the CLONE_NEW* type of a namespace file (Linux 4.11+)
_STATFS_SIZE = 256  # bytes; struct statfs is 120 on 64-bit Linux, f_type its first field
IS_HOST = "it is the host's own network namespace"  # NotANetns.reason for the agent's own
_libc = ctypes.CDLL(None, use_errno=True)


def fs_type(fd: int) -> int:
    """statfs(2) ``f_type`` of the file open at ``fd``. Raises OSError."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def check_netns_fd(path: str, fd: int) -> None:
    """Raise NotANetns unless ``fd`` is a network namespace file."""
    fs = fs_type(fd)
    if fs != NSFS_MAGIC:
        raise NotANetns(path, f"not a namespace file (filesystem type {fs:#x}, want nsfs "
                              f"{NSFS_MAGIC:#x}); was its bind mount removed?")
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        return  # kernel without NS_GET_NSTYPE: setns(CLONE_NEWNET) still refuses other types
    if kind != CLONE_NEWNET:
        raise NotANetns(path, f"a namespace of another type (CLONE_NEW* {kind:#x})")


def same_file(fd: int, path: str) -> bool:
    """True if ``fd`` and ``path`` are one file (device and inode; for namespace files: one
    namespace). Raises OSError if ``path`` cannot be stat'ed."""
    a, b = os.fstat(fd), os.stat(path)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
