"""A small rtnetlink client for the CNI hot path: the messages pod wiring sends, nothing else.

Why not pyroute2 here: an ADD is ~8 netlink requests whose kernel cost is ~1 ms in total,
while pyroute2 spent ~8 ms of Python on them (an ``IPRoute`` per step, message classes,
reply parsing; measured with strace + perf_counter, see bench/cni.py). The CNI ADD latency is
what a pod waits for, so the requests are packed here with :mod:`struct` (<10 us each).
pyroute2 is still used by :mod:`cni.netlink_wiring` for the CHECK-time reads.

Shapes follow the kernel UAPI (``linux/rtnetlink.h``, ``linux/if_link.h``, ``linux/veth.h``,
``linux/if_addr.h``) and match byte for byte what ``ip link/addr/route`` (iproute2 6.1) sends:
``ifinfomsg`` / ``ifaddrmsg`` / ``rtmsg`` headers followed by 4-byte aligned ``rtattr`` TLVs, in
iproute2's attribute order (nests without ``NLA_F_NESTED``, as iproute2 sends them).

Errors: :class:`RtnlError` (an ``OSError``: ``errno`` is the kernel's, ``strerror`` includes the
extended-ACK message when the kernel gives one, e.g. "Invalid argument (Nexthop has invalid
gateway)"). Every request asks for an ACK, so every failure is attributed to its message.
"""
from __future__ import annotations

import errno as _errno
import os
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Iterable

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_REPLACE = 0x100
NLM_F_ACK_TLVS = 0x200  # in an NLMSG_ERROR: extended-ACK attributes follow
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10  # on a dump's messages: the table changed meanwhile, dump again
NETLINK_GET_STRICT_CHK = 12
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_GROUP, IFLA_NET_NS_FD, IFLA_EXT_MASK = 27, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link reply without ~1 KiB of counters
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_RECV = 65536
REPLY_TIMEOUT = 10.0  # seconds to wait for the kernel's answers (TimeoutError after)


class RtnlError(OSError):
    """A request the kernel refused: ``errno`` (int), ``strerror`` (text with the extended ACK)."""


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _RTA.pack(n, kind) + payload + b"\0" * (-n & 3)


def _name(ifname: str) -> bytes:
    return ifname.encode() + b"\0"


def _msg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


# -- message builders (pure; golden-tested against iproute2 in tests/unit/test_cni_rtnl.py)

def veth_new(seq: int, host: str, peer: str, peer_netns_fd: int, mtu: int) -> bytes:
    """``ip link add <host> mtu <mtu> type veth peer name <peer> mtu <mtu> netns <fd>``:
    RTM_NEWLINK, NLM_F_CREATE|NLM_F_EXCL (EEXIST if either name is taken)."""
    peer_body = (_IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_MTU, _U32.pack(mtu))
                 + _attr(IFLA_NET_NS_FD, _U32.pack(peer_netns_fd)) + _attr(IFLA_IFNAME, _name(peer)))
    body = (_IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_MTU, _U32.pack(mtu))
            + _attr(IFLA_IFNAME, _name(host))
            + _attr(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, b"veth")
                    + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_body))))
    return _msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, seq, body)


def link_set(seq: int, index: int, *, up: bool | None = None, mtu: int | None = None,
             group: int | None = None) -> bytes:
    """``ip link set dev <index> [up|down] [mtu N] [group G]``: RTM_NEWLINK on an existing link."""
    flags = change = 0
    if up is not None:
        flags, change = (IFF_UP if up else 0), IFF_UP
    body = _IFINFOMSG.pack(0, 0, index, flags, change)
    if mtu is not None:
        body += _attr(IFLA_MTU, _U32.pack(mtu))
    if group is not None:
        body += _attr(IFLA_GROUP, _U32.pack(group))
    return _msg(RTM_NEWLINK, 0, seq, body)


def link_del(seq: int, index: int) -> bytes:
    """``ip link del dev <index>`` (a veth takes its peer with it)."""
    return _msg(RTM_DELLINK, 0, seq, _IFINFOMSG.pack(0, 0, index, 0, 0))


def group_del(seq: int, group: int) -> bytes:
    """``ip link del group <group>``: every link of the group in this netns, unregistered in one
    batch (one RCU grace period for all, where one RTM_DELLINK per link pays one each)."""
    return _msg(RTM_DELLINK, 0, seq, _IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_GROUP, _U32.pack(group)))


def link_get(seq: int, ifname: str) -> bytes:
    """``ip link show dev <ifname>`` without statistics."""
    body = (_IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(ifname))
            + _attr(IFLA_EXT_MASK, _U32.pack(RTEXT_FILTER_SKIP_STATS)))
    return _msg(RTM_GETLINK, 0, seq, body)


def addr_add(seq: int, index: int, ip: IPv4Address, prefixlen: int) -> bytes:
    """``ip addr add <ip>/<prefixlen> dev <index>`` (EEXIST if present)."""
    packed = ip.packed
    body = (_IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
            + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed))
    return _msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq, body)


def route(seq: int, action: str, dst: IPv4Address, dst_len: int, oif: int, *,
          gateway: IPv4Address | None = None, scope: int = RT_SCOPE_UNIVERSE,
          proto: int = 3, table: int = RT_TABLE_MAIN, metric: int | None = None) -> bytes:
    """``ip route replace|del <dst>/<len> [via <gw>] dev <oif> scope S proto P table T
    [metric M]``. ``action``: "replace" (RTM_NEWROUTE, CREATE|REPLACE) or "delete"
    (RTM_DELROUTE). Replace matches (dst, tos, metric): routes of other metrics stay."""
    if action == "replace":
        kind, flags, rtype = RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, RTN_UNICAST
    elif action == "delete":  # type unspecified matches any, as ``ip route del`` sends it
        kind, flags, rtype = RTM_DELROUTE, 0, 0
    else:
        raise ValueError(f"route action {action!r} is not 'replace' or 'delete'")
    body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, table if table < 256 else 0, proto,
                       scope, rtype, 0)
    if dst_len:
        body += _attr(RTA_DST, dst.packed)
    if gateway is not None:
        body += _attr(RTA_GATEWAY, gateway.packed)
    if metric is not None:
        body += _attr(RTA_PRIORITY, _U32.pack(metric))
    body += _attr(RTA_OIF, _U32.pack(oif))
    if table >= 256:
        body += _attr(RTA_TABLE, _U32.pack(table))
    return _msg(kind, flags, seq, body)


def route_dump(seq: int, *, oif: int, protocol: int, table: int = RT_TABLE_MAIN) -> bytes:
    """``ip route show table <table> proto <protocol> dev <oif>``: an RTM_GETROUTE dump that
    the kernel filters itself on a socket with NETLINK_GET_STRICT_CHK (it still walks the whole
    table, in-kernel: milliseconds at 100k routes where a pyroute2 dump took seconds)."""
    body = (_RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, protocol, 0, 0, 0)
            + _attr(RTA_TABLE, _U32.pack(table)) + _attr(RTA_OIF, _U32.pack(oif)))
    return _NLMSGHDR.pack(16 + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


# -- replies ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RouteEntry:
    """One IPv4 RTM_NEWROUTE of a dump: ``dst``/``dst_len``, ``oif`` (0 if none), ``protocol``,
    ``scope``, ``table`` (RTA_TABLE, else the header's)."""

    dst: IPv4Address
    dst_len: int
    oif: int
    protocol: int
    scope: int
    table: int


def parse_route(buf: bytes, off: int, end: int) -> RouteEntry | None:
    """Decode the rtmsg + attributes at ``buf[off:end]``; None if it is not IPv4."""
    family, dst_len, _, _, table, protocol, scope, _, _ = _RTMSG.unpack_from(buf, off)
    if family != socket.AF_INET:
        return None
    dst, oif = IPv4Address(0), 0
    pos = off + _RTMSG.size
    while pos + 4 <= end:
        n, kind = _RTA.unpack_from(buf, pos)
        if n < 4:
            break
        kind &= 0x3FFF
        if kind == RTA_DST and n >= 8:
            dst = IPv4Address(bytes(buf[pos + 4:pos + 8]))
        elif kind == RTA_OIF:
            oif = _U32.unpack_from(buf, pos + 4)[0]
        elif kind == RTA_TABLE:
            table = _U32.unpack_from(buf, pos + 4)[0]
        pos += (n + 3) & ~3
    return RouteEntry(dst, dst_len, oif, protocol, scope, table)


@dataclass(frozen=True)
class Link:
    """One RTM_NEWLINK reply: ``index``, ``mac`` ("aa:bb:.."), ``mtu`` (bytes), ``up``
    (IFF_UP set), ``group`` (IFLA_GROUP)."""

    index: int
    mac: str
    mtu: int
    up: bool
    group: int


def parse_link(buf: bytes, off: int, end: int) -> Link:
    """Decode the ifinfomsg + attributes of the message whose payload is ``buf[off:end]``."""
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(buf, off)
    mac, mtu, group = "", 0, 0
    pos = off + _IFINFOMSG.size
    while pos + 4 <= end:
        n, kind = _RTA.unpack_from(buf, pos)
        if n < 4:
            break
        kind &= 0x3FFF
        if kind == IFLA_ADDRESS:
            mac = buf[pos + 4:pos + n].hex(":")
        elif kind == IFLA_MTU:
            mtu = _U32.unpack_from(buf, pos + 4)[0]
        elif kind == IFLA_GROUP:
            group = _U32.unpack_from(buf, pos + 4)[0]
        pos += (n + 3) & ~3
    return Link(index, mac, mtu, bool(flags & IFF_UP), group)


def _ack_error(buf: bytes, off: int, end: int, flags: int) -> RtnlError | None:
    code = -_I32.unpack_from(buf, off)[0]
    if code == 0:
        return None
    text = os.strerror(code)
    if flags & NLM_F_ACK_TLVS:
        # with NETLINK_CAP_ACK the echoed request is only its 16-byte header
        pos = off + 4 + 16
        while pos + 4 <= end:
            n, kind = _RTA.unpack_from(buf, pos)
            if n < 4:
                break
            if kind == NLMSGERR_ATTR_MSG:
                said = bytes(buf[pos + 4:pos + n]).rstrip(b"\0").decode(errors="replace")
                text = f"{text} ({said})"
            pos += (n + 3) & ~3
    return RtnlError(code, text)


class Rtnl:
    """One NETLINK_ROUTE socket, bound in the network namespace of the thread that creates it
    (a netlink socket keeps its netns for life, whichever thread uses it later).

    ``transact(msgs)`` sends the messages in one ``sendmsg`` and returns, per message in order,
    ``None`` (ACKed), a :class:`Link` (a RTM_GETLINK answer) or the :class:`RtnlError` the kernel
    answered for that message; TimeoutError if answers stop for :data:`REPLY_TIMEOUT` s.
    ``call`` is the one-message form that raises. Not thread-safe;
    use one per thread. Close it (``with``) when done.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_ROUTE)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.bind((0, 0))
            self.sock.settimeout(REPLY_TIMEOUT)  # a missing answer is an error, not a hung ADD
        except OSError:
            self.sock.close()
            raise
        self._seq = 0

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF or 1
        return self._seq

    def transact(self, msgs: Iterable[bytes]) -> list[Link | RtnlError | None]:
        msgs = list(msgs)
        seqs = [_NLMSGHDR.unpack_from(m)[3] for m in msgs]
        slot = {s: i for i, s in enumerate(seqs)}
        if len(slot) != len(seqs):
            raise ValueError("duplicate sequence numbers in one netlink transaction")
        out: list[Link | RtnlError | None] = [None] * len(msgs)
        pending = set(seqs)
        self.sock.sendall(b"".join(msgs))
        while pending:
            buf = self.sock.recv(_RECV)
            off = 0
            while off + 16 <= len(buf):
                length, kind, flags, seq, _ = _NLMSGHDR.unpack_from(buf, off)
                if length < 16:
                    break
                end = off + length
                if seq in pending:
                    i = slot[seq]
                    if kind == NLMSG_ERROR:  # the ACK; after a GETLINK answer it carries 0
                        err = _ack_error(buf, off + 16, end, flags)
                        if err is not None:
                            out[i] = err
                        pending.discard(seq)
                    elif kind == RTM_NEWLINK:
                        out[i] = parse_link(buf, off + 16, end)
                off += (length + 3) & ~3
        return out

    def call(self, msg: bytes) -> Link | None:
        (res,) = self.transact([msg])
        if isinstance(res, RtnlError):
            raise res
        return res

    def routes(self, *, oif: int, protocol: int, table: int = RT_TABLE_MAIN,
               attempts: int = 3) -> list[RouteEntry]:
        """IPv4 routes of ``table`` and ``protocol`` through ``oif``. The kernel filters them
        (strict checking is switched on for this socket: use a socket of its own for dumps);
        they are filtered again here for kernels that do not. An interrupted dump (the table
        changed meanwhile) is repeated, ``attempts`` times at most, then RtnlError EINTR."""
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            pass  # older kernel: it sends the whole table, the filter below still holds
        for _ in range(attempts):
            seq = self.next_seq()
            self.sock.sendall(route_dump(seq, oif=oif, protocol=protocol, table=table))
            out: list[RouteEntry] = []
            interrupted = done = False
            while not done:
                buf = self.sock.recv(_RECV)
                off = 0
                while off + 16 <= len(buf):
                    length, kind, flags, mseq, _ = _NLMSGHDR.unpack_from(buf, off)
                    if length < 16:
                        break
                    end = off + length
                    if mseq == seq:
                        interrupted |= bool(flags & NLM_F_DUMP_INTR)
                        if kind == NLMSG_DONE:
                            done = True
                        elif kind == NLMSG_ERROR:
                            err = _ack_error(buf, off + 16, end, flags)
                            if err is not None:
                                raise err
                            done = True
                        elif kind == RTM_NEWROUTE:
                            r = parse_route(buf, off + 16, end)
                            if r is not None and r.oif == oif and r.protocol == protocol \
                                    and r.table == table:
                                out.append(r)
                    off += (length + 3) & ~3
            if not interrupted:
                return out
        raise RtnlError(_errno.EINTR, f"route dump interrupted {attempts} times")

    def link(self, ifname: str) -> Link | None:
        """The link called ``ifname`` in this socket's netns, or None (ENODEV)."""
        try:
            return self.call(link_get(self.next_seq(), ifname))
        except RtnlError as e:
            if e.errno == _errno.ENODEV:
                return None
            raise
