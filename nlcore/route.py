"""IPv4 route requests (RTM_NEWROUTE / RTM_DELROUTE / RTM_GETROUTE) as ``ip route`` sends them.

The attribute order is iproute2's for ``ip route add|replace|del <dst> [via G] [table T]
[metric M] [dev D]`` (iproute2 6.1 ``iproute_modify``: attributes in command-line order, the
device after the loop, nexthops last); the unit tests compare against bytes captured from
iproute2 with strace. Addresses are passed as ints (``int(IPv4Address)``), device indexes as
ints (0 = none).

Deletes: RTM_DELROUTE matches on what it carries (fib_table_delete): dst/len, table, protocol
and metric always; the scope unless it is RT_SCOPE_NOWHERE ("any scope", iproute2's default
for ``del``); the gateway and device only when given; the type is RTN_UNSPEC (any). So
``encode_route("delete", ...)`` with no gateway or device deletes our route for that prefix
whatever its next hop, and with ``oif`` and ``scope`` only the one through that device.

:data:`PODROUTE_PROTO` is the rtm_protocol podroute stamps on the routes it owns.
"""
from __future__ import annotations

import struct
from socket import htonl as _htonl
from typing import Sequence

from .wire import (AF_INET, HDR_LEN, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
                   NLM_F_REPLACE, NLM_F_REQUEST, NLMSGHDR, RT_SCOPE_NOWHERE, RT_SCOPE_UNIVERSE,
                   RT_TABLE_MAIN, RT_TABLE_UNSPEC, RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_OIF,
                   RTA_PRIORITY, RTA_TABLE, RTM_DELROUTE, RTM_GETROUTE, RTM_NEWROUTE, RTMSG,
                   RTN_UNICAST, RTN_UNSPEC, RTNEXTHOP, RTNH_F_ONLINK, attr, attr_u32)

PODROUTE_PROTO = 90
"""rtm_protocol of every route podroute owns (felix's FIB routes, the CNI plugin's workload
/32s): 0..4 are the kernel's own (linux/rtnetlink.h RTPROT_*), Calico uses 80, BIRD 12."""

REQUEST_FLAGS = {
    "add": NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    "replace": NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    "delete": NLM_F_REQUEST | NLM_F_ACK,
}
"""nlmsg_flags per action, as ``ip route add|replace|del`` sends them."""

# The shapes a route burst is made of, each packed by one Struct call (nlmsghdr, rtmsg, then
# the rtattrs): a delete (RTA_DST), a route "via G" (RTA_DST, RTA_GATEWAY) and one "via G dev
# D" (RTA_DST, RTA_GATEWAY, RTA_OIF). Addresses go in as htonl() of the int, so the
# native-order format carries network-order bytes.
_DEL = struct.Struct("=IHHIIBBBBBBBBIHHI")
_VIA = struct.Struct("=IHHIIBBBBBBBBIHHIHHI")
_VIA_DEV = struct.Struct("=IHHIIBBBBBBBBIHHIHHIHHI")
_ATTR_IP4 = struct.Struct("=HHI")  # an rtattr carrying an address, packed from htonl(int)


def pack_delete(flags: int, seq: int, pid: int, dst: int, dst_len: int, table: int,
                protocol: int) -> bytes:
    """The bytes :func:`encode_route` gives for a "delete" with ``flags`` (REQUEST_FLAGS
    ["delete"], with or without NLM_F_ACK), no gateway, device or metric. Only for
    ``0 < dst_len`` and ``table <= 255``; positional, for the FIB write loop."""
    return _DEL.pack(36, RTM_DELROUTE, flags, seq, pid, AF_INET, dst_len, 0, 0, table, protocol,
                     RT_SCOPE_NOWHERE, RTN_UNSPEC, 0, 8, RTA_DST, _htonl(dst))


def pack_via(flags: int, seq: int, pid: int, dst: int, dst_len: int, table: int, protocol: int,
             scope: int, rtype: int, rflags: int, gateway: int, oif: int) -> bytes:
    """The bytes :func:`encode_route` gives for an RTM_NEWROUTE with ``flags`` (REQUEST_FLAGS
    ["add"|"replace"], with or without NLM_F_ACK), a gateway, ``oif`` (0 = none) and no
    metric. Only for ``0 < dst_len`` and ``table <= 255``; positional, for the FIB write loop."""
    if oif:
        return _VIA_DEV.pack(52, RTM_NEWROUTE, flags, seq, pid, AF_INET, dst_len, 0, 0, table,
                             protocol, scope, rtype, rflags, 8, RTA_DST, _htonl(dst),
                             8, RTA_GATEWAY, _htonl(gateway), 8, RTA_OIF, oif)
    return _VIA.pack(44, RTM_NEWROUTE, flags, seq, pid, AF_INET, dst_len, 0, 0, table, protocol,
                     scope, rtype, rflags, 8, RTA_DST, _htonl(dst), 8, RTA_GATEWAY, _htonl(gateway))


def nexthop(gateway: int, oif: int = 0, *, onlink: bool = False, weight: int = 1) -> bytes:
    """One ``struct rtnexthop`` + RTA_GATEWAY for RTA_MULTIPATH (``nexthop via G [dev D]
    [onlink] weight W``, W in 1..256)."""
    gw = _ATTR_IP4.pack(8, RTA_GATEWAY, _htonl(gateway))
    return RTNEXTHOP.pack(RTNEXTHOP.size + len(gw), RTNH_F_ONLINK if onlink else 0, weight - 1,
                          oif) + gw


def encode_route(action: str, seq: int, dst: int, dst_len: int, *, gateway: int | None = None,
                 oif: int = 0, scope: int | None = None, rtype: int = RTN_UNICAST,
                 onlink: bool = False, metric: int = 0, multipath: Sequence[bytes] = (),
                 table: int = RT_TABLE_MAIN, protocol: int = PODROUTE_PROTO, pid: int = 0,
                 ack: bool = True) -> bytes:
    """One ``ip route add|replace|del <dst>/<dst_len> [via gateway] [table T] [metric M]
    [dev oif] [onlink] [nexthop ...] scope S proto P``.

    ``action``: "add" (RTM_NEWROUTE, CREATE|EXCL), "replace" (CREATE|REPLACE) or "delete"
    (RTM_DELROUTE; module doc for what it matches). ``scope`` defaults to RT_SCOPE_UNIVERSE,
    and to RT_SCOPE_NOWHERE for a delete; a delete's rtm_type is RTN_UNSPEC and ``rtype`` /
    ``onlink`` are ignored. ``multipath``: :func:`nexthop` items. A table above 255 goes in
    RTA_TABLE (rtm_table RT_TABLE_UNSPEC); a metric of 0 (the kernel default) is left out.
    ``ack=False`` leaves NLM_F_ACK out: the kernel then answers only a failure (netlink(7)),
    which lets a batch be acknowledged by its last message alone. Raises ValueError for an
    unknown action. The common shapes (see :func:`pack_delete`, :func:`pack_via`) are packed
    in one call, the rest by :func:`encode_route_general`.
    """
    if dst_len and table <= 255 and not metric and not multipath:
        flags = REQUEST_FLAGS.get(action)
        if flags is not None and not ack:
            flags &= ~NLM_F_ACK
        if action == "delete":
            if gateway is None and not oif and scope is None:
                return pack_delete(flags, seq, pid, dst, dst_len, table, protocol)
        elif flags is not None and gateway is not None:
            return pack_via(flags, seq, pid, dst, dst_len, table, protocol,
                            RT_SCOPE_UNIVERSE if scope is None else scope, rtype,
                            RTNH_F_ONLINK if onlink else 0, gateway, oif)
    return encode_route_general(action, seq, dst, dst_len, gateway=gateway, oif=oif, scope=scope,
                                rtype=rtype, onlink=onlink, metric=metric, multipath=multipath,
                                table=table, protocol=protocol, pid=pid, ack=ack)


def encode_route_general(action: str, seq: int, dst: int, dst_len: int, *,
                         gateway: int | None = None, oif: int = 0, scope: int | None = None,
                         rtype: int = RTN_UNICAST, onlink: bool = False, metric: int = 0,
                         multipath: Sequence[bytes] = (), table: int = RT_TABLE_MAIN,
                         protocol: int = PODROUTE_PROTO, pid: int = 0, ack: bool = True) -> bytes:
    """:func:`encode_route` attribute by attribute, for every shape; the reference the
    one-call packers are property-tested against. Same arguments and errors."""
    flags = REQUEST_FLAGS.get(action)
    if flags is None:
        raise ValueError(f"unknown action {action!r} for a route (add, replace or delete)")
    if not ack:
        flags &= ~NLM_F_ACK
    if action == "delete":
        kind, rtype, rflags = RTM_DELROUTE, RTN_UNSPEC, 0
        scope = RT_SCOPE_NOWHERE if scope is None else scope
    else:
        kind, rflags = RTM_NEWROUTE, RTNH_F_ONLINK if onlink else 0
        scope = RT_SCOPE_UNIVERSE if scope is None else scope
    body = [RTMSG.pack(AF_INET, dst_len, 0, 0, table if table <= 255 else RT_TABLE_UNSPEC,
                       protocol, scope, rtype, rflags)]
    if dst_len:
        body.append(_ATTR_IP4.pack(8, RTA_DST, _htonl(dst)))
    if gateway is not None:
        body.append(_ATTR_IP4.pack(8, RTA_GATEWAY, _htonl(gateway)))
    if table > 255:
        body.append(attr_u32(RTA_TABLE, table))
    if metric:
        body.append(attr_u32(RTA_PRIORITY, metric))
    if oif:
        body.append(attr_u32(RTA_OIF, oif))
    if multipath:
        body.append(attr(RTA_MULTIPATH, b"".join(multipath)))
    payload = b"".join(body)
    return NLMSGHDR.pack(HDR_LEN + len(payload), kind, flags, seq, pid) + payload


def encode_route_dump(seq: int, *, table: int = RT_TABLE_MAIN, protocol: int = 0, oif: int = 0,
                      pid: int = 0) -> bytes:
    """``ip route show table <table> [proto <protocol>] [dev <oif>]``: an IPv4 RTM_GETROUTE
    NLM_F_DUMP. On a socket with NETLINK_GET_STRICT_CHK the kernel filters by table
    (RTA_TABLE), protocol (0 = any) and device (ip_valid_fib_dump_req; ENODEV for an unknown
    ``oif``); without it every IPv4 route comes back and the caller filters."""
    body = (RTMSG.pack(AF_INET, 0, 0, 0, RT_TABLE_UNSPEC, protocol, 0, 0, 0)
            + attr_u32(RTA_TABLE, table))
    if oif:
        body += attr_u32(RTA_OIF, oif)
    return NLMSGHDR.pack(HDR_LEN + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq,
                         pid) + body
