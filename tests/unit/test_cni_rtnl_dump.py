"""cni.rtnl's filtered route dump: the request matches iproute2 6.1 byte for byte
(``strace -e trace=sendto -xx ip -n <ns> route show table main proto 90 dev h0`` with h0 at
ifindex 3), and replies decode to RouteEntry."""
from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

from cni import rtnl
from nlcore import wire as W


def test_route_dump_request_matches_iproute2():
    msg = rtnl.route_dump(9, oif=3, protocol=90)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (44, W.RTM_GETROUTE,
                                               W.NLM_F_REQUEST | W.NLM_F_DUMP, 9, 0)
    assert msg[16:].hex() == "02000000005a00000000000008000f00fe0000000800040003000000"


def _route_msg(dst: str, dst_len: int, oif: int, proto: int, scope: int, table: int) -> bytes:
    body = (struct.pack("=BBBBBBBBI", socket.AF_INET, dst_len, 0, 0, table if table < 256 else 252,
                        proto, scope, 1, 0)
            + struct.pack("=HH", 8, W.RTA_TABLE) + struct.pack("=I", table)
            + struct.pack("=HH", 8, W.RTA_DST) + IPv4Address(dst).packed
            + struct.pack("=HH", 8, W.RTA_OIF) + struct.pack("=I", oif))
    return body


def test_parse_route_reads_dst_oif_protocol_scope_table():
    body = _route_msg("198.19.1.5", 32, 3, 90, 253, 254)
    r = rtnl.parse_route(body, 0, len(body))
    assert r == rtnl.RouteEntry(IPv4Address("198.19.1.5"), 32, 3, 90, 253, 254)
    big_table = _route_msg("198.19.1.6", 32, 4, 90, 253, 1000)  # table id only in RTA_TABLE
    assert rtnl.parse_route(big_table, 0, len(big_table)).table == 1000
    v6 = struct.pack("=BBBBBBBBI", socket.AF_INET6, 128, 0, 0, 254, 90, 0, 1, 0)
    assert rtnl.parse_route(v6, 0, len(v6)) is None
