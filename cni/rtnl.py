"""A small rtnetlink client for the CNI hot path: the messages pod wiring sends, nothing else.

Why not pyroute2 here: an ADD is ~8 netlink requests whose kernel cost is ~1 ms in total,
while pyroute2 spends ~8 ms of Python on them (an ``IPRoute`` per step, message classes,
reply parsing; measured with strace + perf_counter, see bench/cni.py). The CNI ADD latency is
what a pod waits for, so the requests are packed here with :mod:`struct` (<10 us each).
pyroute2 is still used by :mod:`cni.netlink_wiring` for the CHECK-time reads.

Shapes follow the kernel UAPI (``linux/rtnetlink.h``, ``linux/if_link.h``, ``linux/veth.h``,
``linux/if_addr.h``) and match byte for byte what ``ip link/addr/route`` (iproute2 6.1) sends:
``ifinfomsg`` / ``ifaddrmsg`` / ``rtmsg`` headers followed by 4-byte aligned ``rtattr`` TLVs, in
iproute2's attribute order (nests without ``NLA_F_NESTED``, as iproute2 sends them). The
structs, TLV packing, route requests and ack decoding are :mod:`nlcore`'s (shared with felix/);
the link and address requests pod wiring needs are built here.

Errors: :class:`RtnlError` (an ``OSError``: ``errno`` is the kernel's, ``strerror`` includes the
extended-ACK message when the kernel gives one, e.g. "Invalid argument (Nexthop has invalid
gateway)"). Every request asks for an ACK, so every failure is attributed to its message.
"""
from __future__ import annotations

import errno as _errno
import os
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Iterable

from nlcore.ack import Ack, decode_ack
from nlcore.route import encode_route, encode_route_dump
from nlcore.wire import (AF_INET, HDR_LEN, IFA_ADDRESS, IFA_LOCAL, IFADDRMSG, IFF_UP,
                         IFINFOMSG, IFLA_ADDRESS, IFLA_EXT_MASK, IFLA_GROUP, IFLA_IFNAME,
                         IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU, IFLA_NET_NS_FD,
                         NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, NETLINK_ROUTE,
                         NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
                         NLMSG_DONE, NLMSG_ERROR, NLMSGHDR, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN,
                         RTA_DST, RTA_OIF, RTA_TABLE, RTEXT_FILTER_SKIP_STATS, RTM_DELLINK,
                         RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE, RTMSG, SOL_NETLINK,
                         U32, VETH_INFO_PEER, CodecError, attr as _attr, iter_attrs,
                         iter_messages, request)

_RECV = 65536
REPLY_TIMEOUT = 10.0  # seconds to wait for the kernel's answers (TimeoutError after)


class RtnlError(OSError):
    """A request the kernel refused: ``errno`` (int), ``strerror`` (text with the extended ACK)."""


def _name(ifname: str) -> bytes:
    return ifname.encode() + b"\0"


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, U32.pack(value))


def _msg(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return request(kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body)


# -- message builders (pure; golden-tested against iproute2 in tests/unit/test_cni_rtnl.py)

def veth_new(seq: int, host: str, peer: str, peer_netns_fd: int, mtu: int) -> bytes:
    """``ip link add <host> mtu <mtu> type veth peer name <peer> mtu <mtu> netns <fd>``:
    RTM_NEWLINK, NLM_F_CREATE|NLM_F_EXCL (EEXIST if either name is taken)."""
    peer_body = (IFINFOMSG.pack(0, 0, 0, 0, 0) + _u32(IFLA_MTU, mtu)
                 + _u32(IFLA_NET_NS_FD, peer_netns_fd) + _attr(IFLA_IFNAME, _name(peer)))
    body = (IFINFOMSG.pack(0, 0, 0, 0, 0) + _u32(IFLA_MTU, mtu)
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
    body = IFINFOMSG.pack(0, 0, index, flags, change)
    if mtu is not None:
        body += _u32(IFLA_MTU, mtu)
    if group is not None:
        body += _u32(IFLA_GROUP, group)
    return _msg(RTM_NEWLINK, 0, seq, body)


def link_del(seq: int, index: int) -> bytes:
    """``ip link del dev <index>`` (a veth takes its peer with it)."""
    return _msg(RTM_DELLINK, 0, seq, IFINFOMSG.pack(0, 0, index, 0, 0))


def group_del(seq: int, group: int) -> bytes:
    """``ip link del group <group>``: every link of the group in this netns, unregistered in one
    batch (one RCU grace period for all, where one RTM_DELLINK per link pays one each)."""
    return _msg(RTM_DELLINK, 0, seq, IFINFOMSG.pack(0, 0, 0, 0, 0) + _u32(IFLA_GROUP, group))


def link_get(seq: int, ifname: str) -> bytes:
    """``ip link show dev <ifname>`` without statistics."""
    body = (IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(ifname))
            + _u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))
    return _msg(RTM_GETLINK, 0, seq, body)


def addr_add(seq: int, index: int, ip: IPv4Address, prefixlen: int) -> bytes:
    """``ip addr add <ip>/<prefixlen> dev <index>`` (EEXIST if present)."""
    packed = ip.packed
    body = (IFADDRMSG.pack(AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
            + _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed))
    return _msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq, body)


def route(seq: int, action: str, dst: IPv4Address, dst_len: int, oif: int, *,
          gateway: IPv4Address | None = None, scope: int = RT_SCOPE_UNIVERSE,
          proto: int = 3, table: int = RT_TABLE_MAIN, metric: int | None = None) -> bytes:
    """``ip route replace|del <dst>/<len> [via <gw>] [table T] [metric M] dev <oif> scope S
    proto P`` (:func:`nlcore.route.encode_route`). ``action``: "replace" (RTM_NEWROUTE,
    CREATE|REPLACE) or "delete" (RTM_DELROUTE; it carries the device and scope, so it removes
    only the route through ``oif``). Replace matches (dst, tos, metric): routes of other
    metrics stay. Raises ValueError for any other action."""
    if action not in ("replace", "delete"):
        raise ValueError(f"route action {action!r} is not 'replace' or 'delete'")
    return encode_route(action, seq, int(dst), dst_len,
                        gateway=None if gateway is None else int(gateway), oif=oif, scope=scope,
                        metric=metric or 0, table=table, protocol=proto)


def route_dump(seq: int, *, oif: int, protocol: int, table: int = RT_TABLE_MAIN) -> bytes:
    """``ip route show table <table> proto <protocol> dev <oif>``: an RTM_GETROUTE dump that
    the kernel filters itself on a socket with NETLINK_GET_STRICT_CHK (it still walks the whole
    table, in-kernel: milliseconds at 100k routes where a pyroute2 dump takes seconds)."""
    return encode_route_dump(seq, table=table, protocol=protocol, oif=oif)


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
    """Decode the rtmsg + attributes at ``buf[off:end]``; None if it is not IPv4. Raises
    CodecError on a truncated attribute."""
    family, dst_len, _, _, table, protocol, scope, _, _ = RTMSG.unpack_from(buf, off)
    if family != AF_INET:
        return None
    dst, oif = IPv4Address(0), 0
    for kind, aoff, alen in iter_attrs(buf, off + RTMSG.size, end):
        if kind == RTA_DST and alen >= 4:
            dst = IPv4Address(bytes(buf[aoff:aoff + 4]))
        elif kind == RTA_OIF:
            oif = U32.unpack_from(buf, aoff)[0]
        elif kind == RTA_TABLE:
            table = U32.unpack_from(buf, aoff)[0]
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
    """Decode the ifinfomsg + attributes of the message whose payload is ``buf[off:end]``.
    Raises CodecError on a truncated attribute."""
    _, _, index, flags, _ = IFINFOMSG.unpack_from(buf, off)
    mac, mtu, group = "", 0, 0
    for kind, aoff, alen in iter_attrs(buf, off + IFINFOMSG.size, end):
        if kind == IFLA_ADDRESS:
            mac = buf[aoff:aoff + alen].hex(":")
        elif kind == IFLA_MTU:
            mtu = U32.unpack_from(buf, aoff)[0]
        elif kind == IFLA_GROUP:
            group = U32.unpack_from(buf, aoff)[0]
    return Link(index, mac, mtu, bool(flags & IFF_UP), group)


def ack_error(ack: Ack) -> RtnlError | None:
    """None for a success, else the :class:`RtnlError` for ``ack`` (:func:`nlcore.ack.decode_ack`),
    its strerror followed by the extended-ACK text in parentheses when there is one."""
    if not ack.errno:
        return None
    text = os.strerror(ack.errno)
    return RtnlError(ack.errno, f"{text} ({ack.message})" if ack.message else text)


def _malformed(e: CodecError) -> RtnlError:
    return RtnlError(_errno.EBADMSG, f"malformed netlink reply: {e}")


class Rtnl:
    """One NETLINK_ROUTE socket, bound in the network namespace of the thread that creates it
    (a netlink socket keeps its netns for life, whichever thread uses it later).

    ``transact(msgs)`` sends the messages in one ``sendmsg`` and returns, per message in order,
    ``None`` (ACKed), a :class:`Link` (a RTM_GETLINK answer) or the :class:`RtnlError` the kernel
    answered for that message; TimeoutError if answers stop for :data:`REPLY_TIMEOUT` s,
    RtnlError EBADMSG for a reply that is not well-formed netlink.
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
        seqs = [NLMSGHDR.unpack_from(m)[3] for m in msgs]
        slot = {s: i for i, s in enumerate(seqs)}
        if len(slot) != len(seqs):
            raise ValueError("duplicate sequence numbers in one netlink transaction")
        out: list[Link | RtnlError | None] = [None] * len(msgs)
        pending = set(seqs)
        self.sock.sendall(b"".join(msgs))
        while pending:
            buf = self.sock.recv(_RECV)
            try:
                for kind, flags, seq, off, length in iter_messages(buf):
                    if seq not in pending:
                        continue
                    i = slot[seq]
                    if kind == NLMSG_ERROR:  # the ACK; after a GETLINK answer it carries 0
                        err = ack_error(decode_ack(buf, off, length, flags, seq))
                        if err is not None:
                            out[i] = err
                        pending.discard(seq)
                    elif kind == RTM_NEWLINK:
                        out[i] = parse_link(buf, off + HDR_LEN, off + length)
            except CodecError as e:
                raise _malformed(e) from e
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
                try:
                    for kind, flags, mseq, off, length in iter_messages(buf):
                        if mseq != seq:
                            continue
                        interrupted |= bool(flags & NLM_F_DUMP_INTR)
                        if kind == NLMSG_DONE:
                            done = True
                        elif kind == NLMSG_ERROR:
                            err = ack_error(decode_ack(buf, off, length, flags, mseq))
                            if err is not None:
                                raise err
                            done = True
                        elif kind == RTM_NEWROUTE:
                            r = parse_route(buf, off + HDR_LEN, off + length)
                            if r is not None and r.oif == oif and r.protocol == protocol \
                                    and r.table == table:
                                out.append(r)
                except CodecError as e:
                    raise _malformed(e) from e
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
