"""felix's rtnetlink codec: its Route values to and from IPv4 route messages.

The wire format, the request shapes and the acks are :mod:`nlcore`'s (shared with cni/); this
module maps felix's :class:`~felix.routes.Route` onto them and decodes the kernel's route and
link dumps into Routes. The kernel's dump replies differ from requests (rtm_table is
RT_TABLE_COMPAT for ids > 255 and RTA_TABLE is always present, flags carry NLM_F_MULTI,
RTNH_F_LINKDOWN/DEAD may be set); ``decode_route`` accepts both.

The decoder filters on the raw rtmsg header (family, protocol, table) before touching
attributes, so foreign routes in a 100k-route table cost ~1 µs each.
"""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Iterator, Mapping

from nlcore import prefixkey
from nlcore.ack import Ack, decode_ack
from nlcore.fast import (net_len as _net_len, net_len_addr as _net_len_addr, new as _new, new_network as _new_network,
                         slot_setters as _slot_setters)
from nlcore.route import (PODROUTE_PROTO, REQUEST_FLAGS, encode_route_dump, nexthop, pack_delete,
                          pack_via)
from nlcore.route import encode_route_general as _encode_general
from nlcore.wire import (AF_INET, BE32, HDR_LEN, IFINFOMSG, IFLA_IFNAME, NETLINK_CAP_ACK,
                         NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, NETLINK_ROUTE, NLM_F_ACK,
                         NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTI,
                         NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSGERR_ATTR_MSG,
                         NLMSGERR_ERROR, NLMSGHDR, NLMSG_FLAGS, RT_SCOPE_NOWHERE, RT_TABLE_COMPAT,
                         RT_TABLE_MAIN, RTA_DST, RTA_GATEWAY, RTA_MULTIPATH, RTA_OIF,
                         RTA_PRIORITY, RTA_TABLE, RTATTR, RTM_DELLINK, RTM_DELROUTE,
                         RTM_GETLINK, RTM_NEWLINK, RTM_NEWROUTE, RTMGRP_IPV4_ROUTE, RTMGRP_LINK,
                         RTMSG, RTNEXTHOP, RTNH_F_ONLINK, SOL_NETLINK, U32, CodecError,
                         align, iter_attrs, iter_messages)

from .routes import NextHop, Route, RouteType, Scope

_RTM_OFF = HDR_LEN                         # rtmsg starts right after nlmsghdr
_ATTR_OFF = HDR_LEN + RTMSG.size           # 28
_attrs = iter_attrs
_key = prefixkey.key
_align = align
_DEL_FLAGS = REQUEST_FLAGS["delete"]
_DEL_FLAGS_NOACK = _DEL_FLAGS & ~NLM_F_ACK

# The wire names felix's other modules (netlink, monitor) use, re-exported from nlcore.
__all__ = [
    "Ack", "CodecError", "IFINFOMSG", "IFLA_IFNAME", "NETLINK_CAP_ACK", "NETLINK_EXT_ACK",
    "NETLINK_GET_STRICT_CHK", "NETLINK_ROUTE", "NLM_F_ACK", "NLM_F_ACK_TLVS", "NLM_F_CAPPED",
    "NLM_F_DUMP_INTR", "NLM_F_MULTI", "NLM_F_REQUEST", "NLMSG_DONE", "NLMSG_ERROR",
    "NLMSGERR_ATTR_MSG", "NLMSGERR_ERROR", "NLMSGHDR", "RT_SCOPE_NOWHERE", "RT_TABLE_COMPAT",
    "RT_TABLE_MAIN", "RTA_DST", "RTA_PRIORITY", "RTA_TABLE", "RTM_DELLINK", "RTM_DELROUTE",
    "RTM_NEWLINK", "RTM_NEWROUTE", "RTMGRP_IPV4_ROUTE", "RTMGRP_LINK", "SOL_NETLINK",
    "decode_error", "decode_links", "decode_route", "dst_key_of", "encode_link_dump_request",
    "encode_route", "encode_route_dump_request", "encode_route_general", "iter_messages",
    "iter_route_messages", "route_table_of", "scan_route_messages",
]

IfIndexOf = Callable[[str], int]
IfNameOf = Callable[[int], "str | None"]


# --- encoding ------------------------------------------------------------------------------------
def encode_route(action: str, route: Route, *, seq: int, ifindex: IfIndexOf,
                 table: int = RT_TABLE_MAIN, protocol: int = PODROUTE_PROTO, pid: int = 0,
                 ack: bool = True) -> bytes:
    """See :func:`encode_route_general`, which this returns the same bytes as (property-tested):
    the common shapes (table <= 255, metric 0, a prefix length above 0, no multipath; a delete,
    or a route via a gateway with or without a device) go straight to nlcore's one-call
    packers."""
    if table > 255 or route.metric or route.multipath:
        return encode_route_general(action, route, seq=seq, ifindex=ifindex, table=table,
                                    protocol=protocol, pid=pid, ack=ack)
    if action == "delete":
        net, plen = _net_len(route.dst)  # nlcore.fast
        if plen:
            return pack_delete(_DEL_FLAGS if ack else _DEL_FLAGS_NOACK, seq, pid, net, plen, table,
                               protocol)
        return encode_route_general(action, route, seq=seq, ifindex=ifindex, table=table,
                                    protocol=protocol, pid=pid, ack=ack)
    gw = route.gateway
    flags = REQUEST_FLAGS.get(action)
    if gw is None or flags is None:
        return encode_route_general(action, route, seq=seq, ifindex=ifindex, table=table,
                                    protocol=protocol, pid=pid, ack=ack)
    net, plen, gwip = _net_len_addr(route.dst, gw)  # nlcore.fast: one call for the three ints
    if not plen:
        return encode_route_general(action, route, seq=seq, ifindex=ifindex, table=table,
                                    protocol=protocol, pid=pid, ack=ack)
    if not ack:
        flags &= ~NLM_F_ACK
    name = route.ifname
    return pack_via(flags, seq, pid, net, plen, table, protocol, route.scope, route.type,
                    RTNH_F_ONLINK if route.onlink else 0, gwip,
                    0 if name is None else ifindex(name))


def encode_route_general(action: str, route: Route, *, seq: int, ifindex: IfIndexOf,
                         table: int = RT_TABLE_MAIN, protocol: int = PODROUTE_PROTO, pid: int = 0,
                         ack: bool = True) -> bytes:
    """One RTM_NEWROUTE ("add": CREATE|EXCL, "replace": CREATE|REPLACE) or RTM_DELROUTE
    ("delete") request for ``route``, as ``ip route add|replace|del ... proto P table T`` sends
    it (:func:`nlcore.route.encode_route_general`). ``ack=False`` leaves NLM_F_ACK out.

    ``ifindex(name) -> int`` resolves device names (it raises to signal a missing device).
    Deletes carry only dst/len, table, protocol and metric with scope NOWHERE and type UNSPEC, so
    the kernel deletes our route for that prefix whatever its next hop (fib_table_delete matching).
    Raises ValueError for an unknown action, KeyError/OSError from ``ifindex``.
    """
    dst = route.dst
    net, plen = int(dst.network_address), dst.prefixlen
    if action == "delete":
        return _encode_general(action, seq, net, plen, metric=route.metric, table=table,
                             protocol=protocol, pid=pid, ack=ack)
    if action not in REQUEST_FLAGS:
        raise ValueError(f"unknown action {action!r} for a route (add, replace or delete)")
    oif = ifindex(route.ifname) if route.ifname is not None else 0
    hops = [nexthop(int(h.gateway), ifindex(h.ifname) if h.ifname is not None else 0,
                    onlink=h.onlink, weight=h.weight) for h in route.multipath]
    return _encode_general(action, seq, net, plen,
                         gateway=None if route.gateway is None else int(route.gateway), oif=oif,
                         scope=int(route.scope), rtype=int(route.type), onlink=route.onlink,
                         metric=route.metric, multipath=hops, table=table, protocol=protocol,
                         pid=pid, ack=ack)


def encode_route_dump_request(*, seq: int, table: int = RT_TABLE_MAIN, protocol: int = 0,
                              pid: int = 0) -> bytes:
    """RTM_GETROUTE NLM_F_DUMP for AF_INET (:func:`nlcore.route.encode_route_dump`). With
    NETLINK_GET_STRICT_CHK set on the socket the kernel filters by ``protocol`` (0 = any) and
    ``table``; without it the caller filters (``iter_route_messages`` does)."""
    return encode_route_dump(seq, table=table, protocol=protocol, pid=pid)


def encode_link_dump_request(*, seq: int, pid: int = 0) -> bytes:
    """RTM_GETLINK NLM_F_DUMP (AF_UNSPEC), for the ifindex <-> name map."""
    payload = IFINFOMSG.pack(0, 0, 0, 0, 0)
    return NLMSGHDR.pack(HDR_LEN + len(payload), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, pid) + payload


# --- decoding ------------------------------------------------------------------------------------
def route_table_of(buf, off: int, length: int) -> int:
    """The FIB table id of the RTM_*ROUTE message at ``off``: RTA_TABLE if present, else rtm_table."""
    for atype, aoff, alen in _attrs(buf, off + _ATTR_OFF, off + length):
        if atype == RTA_TABLE and alen >= 4:
            return U32.unpack_from(buf, aoff)[0]
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
            oif = U32.unpack_from(buf, aoff)[0]
        elif atype == RTA_TABLE:
            table = U32.unpack_from(buf, aoff)[0]
        elif atype == RTA_PRIORITY:
            metric = U32.unpack_from(buf, aoff)[0]
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
                hop = _new(NextHop)
                _hop_gateway(hop, hgw)
                _hop_ifname(hop, _name(ifname_of, nidx))
                _hop_onlink(hop, bool(nflags & RTNH_F_ONLINK))
                _hop_weight(hop, nhops + 1)
                hops.append(hop)
                p += _align(nlen)
    rt = _RTYPES.get(rtype, rtype)
    sc = _SCOPES.get(scope, scope)
    net = _new_network(IPv4Network, dst, dst_len)
    ifname = _name(ifname_of, oif) if (oif and rt is not RouteType.BLACKHOLE) else None
    onlink = bool(rflags & RTNH_F_ONLINK)
    multipath = tuple(hops)
    if not (rt is RouteType.UNICAST and sc is Scope.UNIVERSE and gateway is not None and not hops
            and not (onlink and ifname is None)):
        try:
            return (Route(dst=net, type=rt, gateway=gateway, ifname=ifname, scope=sc, onlink=onlink,
                          multipath=multipath, metric=metric), table, proto)
        except ValueError:
            pass
    # The common "via" shape (valid by construction), or a shape Route would refuse.
    route = _new(Route)
    _set_dst(route, net)
    _set_type(route, rt)
    _set_gateway(route, gateway)
    _set_ifname(route, ifname)
    _set_scope(route, sc)
    _set_onlink(route, onlink)
    _set_multipath(route, multipath)
    _set_metric(route, metric)
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


# nlcore.fast.slot_setters: a decoded route's fields were checked by the decoder; the slot
# setters cost a quarter of Route's __init__ (measured there).
_set_dst, _set_type, _set_gateway, _set_ifname, _set_scope, _set_onlink, _set_multipath, _set_metric = \
    _slot_setters(Route, "dst", "type", "gateway", "ifname", "scope", "onlink", "multipath", "metric")
_hop_gateway, _hop_ifname, _hop_onlink, _hop_weight = \
    _slot_setters(NextHop, "gateway", "ifname", "onlink", "weight")


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


def dst_key_of(buf, off: int, length: int) -> int:
    """``felix.routes.dst_key`` of the route message at ``buf[off:off+length]`` without decoding
    it (:func:`nlcore.prefixkey.key`). The kernel puts RTA_DST right after RTA_TABLE in
    its dumps (fib_dump_info), so that slot is tried first; any other layout walks the attributes.
    Raises CodecError if truncated."""
    plen = buf[off + _RTM_OFF + 1]
    if not plen:
        return 1
    a = off + _ATTR_OFF + 8
    if a + 8 <= off + length and RTATTR.unpack_from(buf, a) == (8, RTA_DST):
        return _key(BE32.unpack_from(buf, a + 4)[0], plen)
    for atype, aoff, alen in _attrs(buf, off + _ATTR_OFF, off + length):
        if atype == RTA_DST and alen >= 4:
            return _key(BE32.unpack_from(buf, aoff)[0], plen)
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


decode_error = decode_ack  # (buf, off, length, flags, seq) -> Ack; see nlcore.ack


def decode_links(buf) -> dict[int, str]:
    """``{ifindex: name}`` from RTM_NEWLINK messages in ``buf`` (a link dump or notifications)."""
    out: dict[int, str] = {}
    for mtype, _f, _s, off, length in iter_messages(buf):
        if mtype != RTM_NEWLINK or length < HDR_LEN + IFINFOMSG.size:
            continue
        index = IFINFOMSG.unpack_from(buf, off + HDR_LEN)[2]
        for atype, aoff, alen in _attrs(buf, off + HDR_LEN + IFINFOMSG.size, off + length):
            if atype == IFLA_IFNAME:
                out[index] = bytes(buf[aoff:aoff + alen]).split(b"\0", 1)[0].decode("utf-8", "replace")
                break
    return out
