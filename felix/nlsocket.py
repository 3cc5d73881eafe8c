"""felix's rtnetlink sockets: opening one (in a network namespace, with the buffer and ack
options felix relies on) and the classic BPF filter that keeps the echoes of our own route
writes off ``felix.monitor``'s socket. The only felix module that creates netlink sockets.
"""
from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from typing import Sequence

from nlcore.netns import call_in_netns

from . import codec
from .errors import DataplaneError

SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
def open_route_socket(netns: str | None = None, *, groups: int = 0, rcvbuf: int = 32 << 20,
                      sndbuf: int = 4 << 20) -> socket.socket:
    """A bound ``AF_NETLINK/SOCK_RAW/NETLINK_ROUTE`` socket in ``netns`` (name under /var/run/netns,
    an absolute path, or None for the caller's namespace), subscribed to ``groups`` (RTMGRP_* mask).

    Sets SO_RCVBUFFORCE/SO_SNDBUFFORCE (root; falls back to SO_RCVBUF/SO_SNDBUF), NETLINK_CAP_ACK,
    NETLINK_EXT_ACK and NETLINK_GET_STRICT_CHK (best effort). Raises DataplaneError (ENOENT for a
    missing namespace, EPERM without CAP_SYS_ADMIN, ...).
    """
    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, codec.NETLINK_ROUTE)
        try:
            for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
                                       (SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)):
                try:
                    s.setsockopt(socket.SOL_SOCKET, force, size)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, plain, size)
            for opt in (codec.NETLINK_CAP_ACK, codec.NETLINK_EXT_ACK, codec.NETLINK_GET_STRICT_CHK):
                try:
                    s.setsockopt(codec.SOL_NETLINK, opt, 1)
                except OSError:
                    pass
            s.bind((0, groups))
        except BaseException:
            s.close()
            raise
        return s

    try:
        if netns is None:
            return make()
        return call_in_netns(netns, make, timeout=10, name=f"felix-setns-{netns}")
    except OSError as e:
        raise DataplaneError(e.errno or errno.EIO, f"netlink socket (netns={netns}): {e}") from e


SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>
# Classic BPF opcodes (<linux/filter.h>).
_BPF_LD_H_ABS, _BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x28, 0x20, 0x15, 0x06
_SOCK_FILTER = struct.Struct("=HBBI")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _as_loaded(value: int, size: int) -> int:
    """A host-endian header field as a BPF absolute (big-endian) load reads it."""
    return int.from_bytes(value.to_bytes(size, sys.byteorder), "big")


def echo_filter(portids: Sequence[int]) -> bytes:
    """A classic BPF program (struct sock_filter[], filter(2)/socket(7) SO_ATTACH_FILTER) that
    drops RTM_NEWROUTE/RTM_DELROUTE notifications whose ``nlmsg_pid`` is one of ``portids``
    (the echoes of our own writes: the kernel stamps a notification with the port id of the
    socket whose request caused it) and passes everything else.

    BPF absolute loads read big-endian; netlink headers are host-endian, so the constants are
    the host values as a big-endian load sees them. A route notification is one message per
    skb, so looking at the first header is enough. At most 250 port ids (ValueError)."""
    if len(portids) > 250:
        raise ValueError("too many port ids for one filter")
    n = len(portids)
    accept, drop = 4 + n, 5 + n
    prog = [
        (_BPF_LD_H_ABS, 0, 0, 4),                                           # nlmsg_type
        (_BPF_JEQ_K, 1, 0, _as_loaded(codec.RTM_NEWROUTE, 2)),                     # -> 3
        (_BPF_JEQ_K, 0, accept - 3, _as_loaded(codec.RTM_DELROUTE, 2)),            # else accept
        (_BPF_LD_W_ABS, 0, 0, 12),                                          # nlmsg_pid
    ]
    for i, pid in enumerate(portids):
        here = 4 + i
        prog.append((_BPF_JEQ_K, drop - here - 1, 0, _as_loaded(pid, 4)))
    prog += [(_BPF_RET_K, 0, 0, 0xFFFFFFFF), (_BPF_RET_K, 0, 0, 0)]
    return b"".join(_SOCK_FILTER.pack(*ins) for ins in prog)


def attach_echo_filter(sock: socket.socket, portids: Sequence[int]) -> None:
    """Attach :func:`echo_filter` for ``portids`` to ``sock`` (replacing any earlier filter).
    Raises OSError if the kernel refuses it."""
    code = echo_filter(portids)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // _SOCK_FILTER.size, ctypes.addressof(buf))
    # The kernel copies the program during the call; buf only has to outlive it.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
