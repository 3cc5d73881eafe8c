"""A small rtnetlink codec for IPv4 routes and link names, built on ``struct`` (no pyroute2).

Wire formats (rtnetlink(7), netlink(7), linux/rtnetlink.h, all host byte order except addresses):
 - ``struct nlmsghdr``  u32 len, u16 type, u16 flags, u32 seq, u32 pid                (16 bytes)
 - ``struct rtmsg``     u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags (12)
 - ``struct rtattr``    u16 len, u16 type, payload padded to 4 bytes
 - ``struct rtnexthop`` u16 len, u8 flags, u8 hops (= weight-1), s32 ifindex, then rtattrs (8)
 - ``struct nlmsgerr``  s32 error (-errno, 0 = ack), then the offending nlmsghdr (+payload unless
   NETLINK_CAP_ACK), then extack TLVs when NLM_F_ACK_TLVS is set in the ack's flags.
 - ``struct ifinfomsg`` u8 family, pad, u16 type, s32 index, u32 flags, u32 change     (16)

Requests are built the way iproute2's ``ip route add|replace|del`` builds them (the unit tests
compare against bytes captured from iproute2 with strace). The kernel's dump replies differ from
requests (rtm_table is RT_TABLE_COMPAT for ids > 255 and RTA_TABLE is always present, flags carry
NLM_F_MULTI, RTNH_F_LINKDOWN/DEAD may be set); ``decode_route`` accepts both.

Performance matters (FACTS-kernel: the Python side is the bottleneck): the decoder filters on the
raw rtmsg header (family, protocol, table) before touching attributes, and all structs are
precompiled.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Iterator, Mapping

from .routes import NextHop, Route, RouteType, Scope

# --- netlink(7) ----------------------------------------------------------------------------------
NETLINK_ROUTE = 0
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO = 0x1, 0x2, 0x4, 0x8
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12

# --- rtnetlink(7) --------------------------------------------------------------------------------
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY = 1, 2, 3, 4, 5, 6
RTA_PREFSRC, RTA_METRICS, RTA_MULTIPATH, RTA_TABLE = 7, 8, 9, 15
IFLA_IFNAME = 3
RTNH_F_DEAD, RTNH_F_PERVASIVE, RTNH_F_ONLINK, RTNH_F_OFFLOAD, RTNH_F_LINKDOWN = 1, 2, 4, 8, 16
RT_TABLE_UNSPEC, RT_TABLE_COMPAT, RT_TABLE_MAIN = 0, 252, 254
RT_SCOPE_NOWHERE = 255
RTN_UNSPEC = 0
AF_INET = socket.AF_INET

NLMSGHDR = struct.Struct("=IHHII")
NLMSG_FLAGS = struct.Struct("=H")  # nlmsg_flags, at offset 6 of NLMSGHDR
RTMSG = struct.Struct("=BBBBBBBBI")
RTATTR = struct.Struct("=HH")
RTNEXTHOP = struct.Struct("=HBBi")
IFINFOMSG = struct.Struct("=BxHiII")
NLMSGERR_ERROR = struct.Struct("=i")
_U32 = struct.Struct("=I")
_ATTR_U32 = struct.Struct("=HHI")          # rtattr carrying a u32 (OIF, PRIORITY, TABLE)
_ATTR_IP4 = struct.Struct("=HH4s")         # rtattr carrying an IPv4 address
_HDR_LEN = NLMSGHDR.size                   # 16
_RTM_OFF = _HDR_LEN                        # rtmsg starts right after nlmsghdr
_ATTR_OFF = _HDR_LEN + RTMSG.size          # 28

ACTIONS = ("add", "replace", "delete")
_FLAGS = {
    "add": NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    "replace": NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    "delete": NLM_F_REQUEST | NLM_F_ACK,
}
_DEL_FLAGS = _FLAGS["delete"]
_DEL_FLAGS_NOACK = _DEL_FLAGS & ~NLM_F_ACK

IfIndexOf = Callable[[str], int]
IfNameOf = Callable[[int], "str | None"]


class CodecError(ValueError):
    """Bytes that are not a well-formed netlink message (truncated header/attribute)."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(rta_type: int, payload: bytes) -> bytes:
    n = RTATTR.size + len(payload)
    return RTATTR.pack(n, rta_type) + payload + b"\0" * (_align(n) - n)


# --- encoding ------------------------------------------------------------------------------------
# The shapes a route burst is made of, each packed by one Struct call (nlmsghdr, rtmsg, then
# the rtattrs in iproute2's order): a delete (RTA_DST), a route "via G" (RTA_DST,
# RTA_GATEWAY) and one "via G dev D" (RTA_DST, RTA_GATEWAY, RTA_OIF). Addresses go in as
# htonl() of the int, so the native-order format carries network-order bytes.
_FAST_DEL = struct.Struct("=IHHIIBBBBBBBBIHHI")
_FAST_VIA = struct.Struct("=IHHIIBBBBBBBBIHHIHHI")
_FAST_VIA_DEV = struct.Struct("=IHHIIBBBBBBBBIHHIHHIHHI")
_htonl = socket.htonl


def encode_route(action: str, route: Route, *, seq: int, ifindex: IfIndexOf,
                 table: int = RT_TABLE_MAIN, protocol: int = 90, pid: int = 0, ack: bool = True) -> bytes:
    """See :func:`encode_route_general`, which this returns the same bytes as (property-tested):
    the common shapes (table <= 255, metric 0, a prefix length above 0, no multipath; a delete,
    or a route via a gateway with or without a device) are packed in one call."""
    if table > 255 or route.metric or route.multipath:
        return encode_route_general(action, route, seq=seq, ifindex=ifindex, table=table,
                                    protocol=protocol, pid=pid, ack=ack)
    dst = route.dst
    try:  # CPython's ipaddress slots; anything else takes the general path
        net, plen = dst.network_address._ip, dst._prefixlen
    except AttributeError:
        plen = 0
    if not plen:
        return encode_route_general(action, route, seq=seq, ifindex=ifindex, table=table,
                                    protocol=protocol, pid=pid, ack=ack)
    if action == "delete":
        return _FAST_DEL.pack(36, RTM_DELROUTE, _DEL_FLAGS if ack else _DEL_FLAGS_NOACK, seq, pid,
                              AF_INET, plen, 0, 0, table, protocol, RT_SCOPE_NOWHERE, RTN_UNSPEC, 0,
                              8, RTA_DST, _htonl(net))
    gw = route.gateway
    flags = _FLAGS.get(action)
    if gw is None or flags is None:
        return encode_route_general(action, route, seq=seq, ifindex=ifindex, table=table,
                                    protocol=protocol, pid=pid, ack=ack)
    if not ack:
        flags &= ~NLM_F_ACK
    try:
        gwip = gw._ip
    except AttributeError:
        gwip = int(gw)
    rflags = RTNH_F_ONLINK if route.onlink else 0
    if route.ifname is None:
        return _FAST_VIA.pack(44, RTM_NEWROUTE, flags, seq, pid, AF_INET, plen, 0, 0, table, protocol,
                              route.scope, route.type, rflags, 8, RTA_DST, _htonl(net),
                              8, RTA_GATEWAY, _htonl(gwip))
    return _FAST_VIA_DEV.pack(52, RTM_NEWROUTE, flags, seq, pid, AF_INET, plen, 0, 0, table, protocol,
                              route.scope, route.type, rflags, 8, RTA_DST, _htonl(net),
                              8, RTA_GATEWAY, _htonl(gwip), 8, RTA_OIF, ifindex(route.ifname))


def encode_route_general(action: str, route: Route, *, seq: int, ifindex: IfIndexOf,
                         table: int = RT_TABLE_MAIN, protocol: int = 90, pid: int = 0,
                         ack: bool = True) -> bytes:
    """One RTM_NEWROUTE ("add": CREATE|EXCL, "replace": CREATE|REPLACE) or RTM_DELROUTE ("delete")
    request with NLM_F_REQUEST|NLM_F_ACK, as ``ip route add|replace|del ... proto P table T`` sends it.
    ``ack=False`` leaves NLM_F_ACK out: the kernel then answers only a failure (netlink(7): an
    error is always reported), which lets a batch be acknowledged by its last message alone.

    ``ifindex(name) -> int`` resolves device names (it raises to signal a missing device).
    Deletes carry only dst/len, table, protocol and metric with scope NOWHERE and type UNSPEC, so
    the kernel deletes our route for that prefix whatever its next hop (fib_table_delete matching).
    Raises ValueError for an unknown action, KeyError/OSError from ``ifindex``.
    """
    dst = route.dst
    plen = dst.prefixlen
    body = []
    if plen:
        body.append(_ATTR_IP4.pack(8, RTA_DST, dst.network_address.packed))
    if table > 255:
        rtm_table = RT_TABLE_UNSPEC
    else:
        rtm_table = table
    if action == "delete":
        msg_type, scope, rtype, rflags = RTM_DELROUTE, RT_SCOPE_NOWHERE, RTN_UNSPEC, 0
        if table > 255:
            body.append(_ATTR_U32.pack(8, RTA_TABLE, table))
        if route.metric:
            body.append(_ATTR_U32.pack(8, RTA_PRIORITY, route.metric))
    else:
        if action not in _FLAGS:
            raise ValueError(f"unknown action {action!r}")
        msg_type, scope, rtype = RTM_NEWROUTE, int(route.scope), int(route.type)
        rflags = RTNH_F_ONLINK if route.onlink else 0
        # attribute order as iproute2 emits for `ip route X dst via G table T metric M dev D`
        if route.gateway is not None:
            body.append(_ATTR_IP4.pack(8, RTA_GATEWAY, route.gateway.packed))
        if table > 255:
            body.append(_ATTR_U32.pack(8, RTA_TABLE, table))
        if route.metric:
            body.append(_ATTR_U32.pack(8, RTA_PRIORITY, route.metric))
        if route.ifname is not None:
            body.append(_ATTR_U32.pack(8, RTA_OIF, ifindex(route.ifname)))
        if route.multipath:
            hops = []
            for h in route.multipath:
                gw = _ATTR_IP4.pack(8, RTA_GATEWAY, h.gateway.packed)
                idx = ifindex(h.ifname) if h.ifname is not None else 0
                hops.append(RTNEXTHOP.pack(RTNEXTHOP.size + len(gw), RTNH_F_ONLINK if h.onlink else 0,
                                           h.weight - 1, idx) + gw)
            body.append(_attr(RTA_MULTIPATH, b"".join(hops)))
    payload = RTMSG.pack(AF_INET, plen, 0, 0, rtm_table, protocol, scope, rtype, rflags) + b"".join(body)
    flags = _FLAGS.get(action, _FLAGS["delete"])
    if not ack:
        flags &= ~NLM_F_ACK
    return NLMSGHDR.pack(_HDR_LEN + len(payload), msg_type, flags, seq, pid) + payload


def encode_route_dump_request(*, seq: int, table: int = RT_TABLE_MAIN, protocol: int = 0,
                              pid: int = 0) -> bytes:
    """RTM_GETROUTE NLM_F_DUMP for AF_INET. With NETLINK_GET_STRICT_CHK set on the socket the kernel
    filters by ``protocol`` (0 = any) and ``table`` (RTA_TABLE, ip_valid_fib_dump_req); without it
    the filter fields are ignored and the caller filters (``iter_route_messages`` does)."""
    payload = RTMSG.pack(AF_INET, 0, 0, 0, table if table < 256 else RT_TABLE_UNSPEC, protocol, 0, 0, 0)
    payload += _ATTR_U32.pack(8, RTA_TABLE, table)
    return NLMSGHDR.pack(_HDR_LEN + len(payload), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, pid) + payload


def encode_link_dump_request(*, seq: int, pid: int = 0) -> bytes:
    """RTM_GETLINK NLM_F_DUMP (AF_UNSPEC), for the ifindex <-> name map."""
    payload = IFINFOMSG.pack(0, 0, 0, 0, 0)
    return NLMSGHDR.pack(_HDR_LEN + len(payload), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, pid) + payload


# --- decoding ------------------------------------------------------------------------------------
def iter_messages(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(type, flags, seq, offset, length)`` for each netlink message in ``buf``.
    Raises CodecError on a truncated or malformed header."""
    off, end = 0, len(buf)
    unpack = NLMSGHDR.unpack_from
    while off + _HDR_LEN <= end:
        length, mtype, flags, seq, _pid = unpack(buf, off)
        if length < _HDR_LEN or off + length > end:
            raise CodecError(f"bad nlmsg length {length} at offset {off} (buffer {end})")
        yield mtype, flags, seq, off, length
        off += _align(length)
    if off < end and end - off >= 4:
        raise CodecError(f"{end - off} trailing bytes after last message")


def _attrs(buf, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (type, payload_offset, payload_len) of rtattrs in buf[start:end]."""
    unpack = RTATTR.unpack_from
    while start + 4 <= end:
        alen, atype = unpack(buf, start)
        if alen < 4 or start + alen > end:
            raise CodecError(f"bad rtattr length {alen} at offset {start}")
        yield atype & 0x3FFF, start + 4, alen - 4   # mask NLA_F_NESTED / NLA_F_NET_BYTEORDER
        start += _align(alen)


def route_table_of(buf, off: int, length: int) -> int:
    """The FIB table id of the RTM_*ROUTE message at ``off``: RTA_TABLE if present, else rtm_table."""
    for atype, aoff, alen in _attrs(buf, off + _ATTR_OFF, off + length):
        if atype == RTA_TABLE and alen >= 4:
            return _U32.unpack_from(buf, aoff)[0]
    return buf[off + _RTM_OFF + 4]


def decode_route(buf, off: int, length: int, ifname_of: IfNameOf) -> tuple[Route, int, int]:
    """Decode the RTM_NEWROUTE/RTM_DELROUTE message at ``buf[off:off+length]``.

    Returns ``(route, table, protocol)``. Devices are mapped with ``ifname_of(index)``; an unknown
    index becomes the pseudo-name ``"#<index>"`` (never equal to a desired route, so it gets
    repaired). Shapes felix would not build itself (e.g. gateway with scope link, other types)
    are returned unvalidated (``Route.__post_init__`` skipped) so the caller can still delete them.
    Raises CodecError if truncated.
    """
    if length < _ATTR_OFF:
        raise CodecError("route message shorter than nlmsghdr+rtmsg")
    family, dst_len, _src_len, _tos, rtm_table, proto, scope, rtype, rflags = RTMSG.unpack_from(buf, off + _RTM_OFF)
    dst = 0
    gateway = None
    oif = 0
    table = rtm_table
    metric = 0
    hops: list[NextHop] = []
    for atype, aoff, alen in _attrs(buf, off + _ATTR_OFF, off + length):
        if atype == RTA_DST:
            dst = int.from_bytes(buf[aoff:aoff + 4], "big")
        elif atype == RTA_GATEWAY:
            gateway = _gateway(bytes(buf[aoff:aoff + 4]))
        elif atype == RTA_OIF:
            oif = _U32.unpack_from(buf, aoff)[0]
        elif atype == RTA_TABLE:
            table = _U32.unpack_from(buf, aoff)[0]
        elif atype == RTA_PRIORITY:
            metric = _U32.unpack_from(buf, aoff)[0]
        elif atype == RTA_MULTIPATH:
            p, pend = aoff, aoff + alen
            while p + RTNEXTHOP.size <= pend:
                nlen, nflags, nhops, nidx = RTNEXTHOP.unpack_from(buf, p)
                if nlen < RTNEXTHOP.size or p + nlen > pend:
                    raise CodecError(f"bad rtnexthop length {nlen}")
                hgw = None
                for t2, o2, l2 in _attrs(buf, p + RTNEXTHOP.size, p + nlen):
                    if t2 == RTA_GATEWAY and l2 >= 4:
                        hgw = IPv4Address(bytes(buf[o2:o2 + 4]))
                hops.append(_unchecked(NextHop, gateway=hgw, ifname=_name(ifname_of, nidx),
                                       onlink=bool(nflags & RTNH_F_ONLINK), weight=nhops + 1))
                p += _align(nlen)
    rt = _RTYPES.get(rtype, rtype)
    sc = _SCOPES.get(scope, scope)
    fields = dict(
        dst=IPv4Network((dst, dst_len)), type=rt, gateway=gateway,
        ifname=_name(ifname_of, oif) if (oif and rt is not RouteType.BLACKHOLE) else None,
        scope=sc, onlink=bool(rflags & RTNH_F_ONLINK), multipath=tuple(hops), metric=metric)
    if (rt is RouteType.UNICAST and sc is Scope.UNIVERSE and gateway is not None and not hops
            and not (fields["onlink"] and fields["ifname"] is None)):
        route = _unchecked(Route, **fields)       # the common "via" shape; valid by construction
    else:
        try:
            route = Route(**fields)
        except ValueError:
            route = _unchecked(Route, **fields)
    return route, table, proto


_RTYPES = {int(t): t for t in RouteType}
_SCOPES = {int(t): t for t in Scope}
_GATEWAYS: dict[bytes, IPv4Address] = {}


def _gateway(raw: bytes) -> IPv4Address:
    gw = _GATEWAYS.get(raw)
    if gw is None:
        if len(_GATEWAYS) >= 65536:
            _GATEWAYS.clear()
        gw = _GATEWAYS[raw] = IPv4Address(raw)
    return gw


def _name(ifname_of: IfNameOf, index: int) -> str | None:
    if not index:
        return None
    return ifname_of(index) or f"#{index}"


def _unchecked(cls, **fields):
    obj = object.__new__(cls)
    for k, v in fields.items():
        object.__setattr__(obj, k, v)
    return obj


def _our_route_messages(buf, table: int | None, protocol: int | None) -> Iterator[tuple[int, int]]:
    """(offset, length) of each IPv4 RTM_NEWROUTE in ``buf`` of ``protocol`` in ``table`` (None =
    any), judged on the raw rtmsg bytes so foreign routes cost ~1 µs each."""
    for mtype, _flags, _seq, off, length in iter_messages(buf):
        if mtype != RTM_NEWROUTE or length < _ATTR_OFF:
            continue
        base = off + _RTM_OFF
        if buf[base] != AF_INET:
            continue
        if protocol is not None and buf[base + 5] != protocol:
            continue
        if table is not None:
            t = buf[base + 4]
            if table < 256:
                if t != table:
                    continue
            elif t != RT_TABLE_COMPAT or route_table_of(buf, off, length) != table:
                continue
        yield off, length


def iter_route_messages(buf, *, table: int | None, protocol: int | None,
                        ifname_of: IfNameOf) -> Iterator[Route]:
    """Decode every IPv4 RTM_NEWROUTE in ``buf`` whose protocol and table match (None = any).

    The family/protocol/table tests read the raw rtmsg bytes, so foreign routes cost ~1 µs each.
    (A resync uses :func:`scan_route_messages`, which skips what it already verified.)
    """
    for off, length in _our_route_messages(buf, table, protocol):
        yield decode_route(buf, off, length, ifname_of)[0]


_RTA_HDR = struct.Struct("=HH")
_BE32 = struct.Struct(">I")


def dst_key_of(buf, off: int, length: int) -> int:
    """``felix.routes.dst_key`` of the route message at ``buf[off:off+length]`` without decoding
    it (``1 << length | network >> (32 - length)``). The kernel puts RTA_DST right after RTA_TABLE in
    its dumps (fib_dump_info), so that slot is tried first; any other layout walks the attributes.
    Raises CodecError if truncated."""
    plen = buf[off + _RTM_OFF + 1]
    if not plen:
        return 1
    a = off + _ATTR_OFF + 8
    if a + 8 <= off + length and _RTA_HDR.unpack_from(buf, a) == (8, RTA_DST):
        return 1 << plen | _BE32.unpack_from(buf, a + 4)[0] >> (32 - plen)
    for atype, aoff, alen in _attrs(buf, off + _ATTR_OFF, off + length):
        if atype == RTA_DST and alen >= 4:
            return 1 << plen | _BE32.unpack_from(buf, aoff)[0] >> (32 - plen)
    raise CodecError("route message with a prefix length but no RTA_DST")


def scan_route_messages(buf, *, table: int | None, protocol: int | None, ifname_of: IfNameOf,
                        verified: Mapping[int, int], salt: int, unchanged: set[int],
                        changed: Callable[[int, int, Route], None]) -> None:
    """Sort every IPv4 RTM_NEWROUTE in ``buf`` whose protocol and table match (None = any) into
    ``unchanged`` or ``changed``, without decoding the former.

    A message's digest is ``hash((salt, body))`` over its bytes after nlmsghdr (rtmsg and every
    attribute: next hops, device index, metric, flags). When ``verified`` maps the message's
    :func:`dst_key_of` to that digest, the kernel holds exactly the bytes the caller already
    checked, and only the key is added to ``unchanged``; otherwise ``changed(key, digest,
    route)`` is called with the decoded route. ``salt`` must change whenever ``ifname_of``'s answers change (the
    bytes carry device indexes, the Routes names). Raises CodecError if truncated.
    """
    verified_get = verified.get
    for off, length in _our_route_messages(buf, table, protocol):
        key = dst_key_of(buf, off, length)
        digest = hash((salt, bytes(buf[off + _RTM_OFF:off + length])))
        if verified_get(key) == digest:
            unchanged.add(key)
        else:
            changed(key, digest, decode_route(buf, off, length, ifname_of)[0])


@dataclass(frozen=True)
class Ack:
    """One NLMSG_ERROR reply: ``errno`` positive (0 = success), ``message`` the extack text or ''."""

    seq: int
    errno: int
    message: str = ""


def decode_error(buf, off: int, length: int, flags: int, seq: int) -> Ack:
    """Decode the NLMSG_ERROR at ``off`` (struct nlmsgerr + optional extack TLVs). Raises CodecError."""
    if length < _HDR_LEN + 4:
        raise CodecError("truncated NLMSG_ERROR")
    err = NLMSGERR_ERROR.unpack_from(buf, off + _HDR_LEN)[0]
    message = ""
    if flags & NLM_F_ACK_TLVS and length >= _HDR_LEN + 4 + _HDR_LEN:
        # nlmsgerr.msg: the offending header, plus its payload unless the ack is capped
        inner_len = NLMSGHDR.unpack_from(buf, off + _HDR_LEN + 4)[0]
        tlv = off + _HDR_LEN + 4 + (_HDR_LEN if flags & NLM_F_CAPPED else _align(inner_len))
        try:
            for atype, aoff, alen in _attrs(buf, tlv, off + length):
                if atype == NLMSGERR_ATTR_MSG:
                    message = bytes(buf[aoff:aoff + alen]).rstrip(b"\0").decode("utf-8", "replace")
        except CodecError:
            pass
    return Ack(seq, -err, message)


def decode_links(buf) -> dict[int, str]:
    """``{ifindex: name}`` from RTM_NEWLINK messages in ``buf`` (a link dump or notifications)."""
    out: dict[int, str] = {}
    for mtype, _f, _s, off, length in iter_messages(buf):
        if mtype != RTM_NEWLINK or length < _HDR_LEN + IFINFOMSG.size:
            continue
        index = IFINFOMSG.unpack_from(buf, off + _HDR_LEN)[2]
        for atype, aoff, alen in _attrs(buf, off + _HDR_LEN + IFINFOMSG.size, off + length):
            if atype == IFLA_IFNAME:
                out[index] = bytes(buf[aoff:aoff + alen]).split(b"\0", 1)[0].decode("utf-8", "replace")
                break
    return out
