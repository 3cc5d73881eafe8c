"""cni.rtnl: the CNI hot path's request packer.

Golden payloads (everything after the 16-byte nlmsghdr) were captured from iproute2 6.1
(``strace -e trace=sendmsg -xx ip -n <ns> ...`` in throwaway namespaces where h0 had ifindex 2
and the peer's netns file was fd 4); the header's type and flags are what iproute2 sent
(strace decodes them: e.g. ``NLM_F_REQUEST|NLM_F_ACK|0x600`` for ``ip link add``).
"""
from __future__ import annotations

import errno
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given, strategies as st

from cni import rtnl
from nlcore import wire as W
from nlcore.ack import decode_ack

GW = IPv4Address("169.254.1.1")
POD = IPv4Address("198.19.1.5")
REQ_ACK = W.NLM_F_REQUEST | W.NLM_F_ACK

GOLDEN = [
    # ip link add h0 mtu 1400 type veth peer name p0 mtu 1400 netns <ns>   (netns fd 4)
    (lambda: rtnl.veth_new(7, "h0", "p0", 4, 1400), W.RTM_NEWLINK,
     REQ_ACK | W.NLM_F_CREATE | W.NLM_F_EXCL,
     "00000000000000000000000000000000080004007805000007000300683000003c0012000800010076657468"
     "300002002c00010000000000000000000000000000000000080004007805000008001c000400000007000300"
     "70300000"),
    # ip link set dev h0 up
    (lambda: rtnl.link_set(7, 2, up=True), W.RTM_NEWLINK, REQ_ACK,
     "00000000020000000100000001000000"),
    # ip link set dev h0 down group 1886549092
    (lambda: rtnl.link_set(7, 2, up=False, group=1886549092), W.RTM_NEWLINK, REQ_ACK,
     "0000000002000000000000000100000008001b0064747270"),
    # ip addr add 198.19.1.5/32 dev h0
    (lambda: rtnl.addr_add(7, 2, POD, 32), W.RTM_NEWADDR,
     REQ_ACK | W.NLM_F_CREATE | W.NLM_F_EXCL,
     "022000000200000008000200c613010508000100c6130105"),
    # ip route replace 169.254.1.1/32 dev h0 scope link proto 4
    (lambda: rtnl.route(7, "replace", GW, 32, 2, scope=W.RT_SCOPE_LINK, proto=4),
     W.RTM_NEWROUTE, REQ_ACK | W.NLM_F_CREATE | W.NLM_F_REPLACE,
     "02200000fe04fd010000000008000100a9fe01010800040002000000"),
    # ip route replace default via 169.254.1.1 dev h0 proto 4
    (lambda: rtnl.route(7, "replace", IPv4Address(0), 0, 2, gateway=GW, proto=4),
     W.RTM_NEWROUTE, REQ_ACK | W.NLM_F_CREATE | W.NLM_F_REPLACE,
     "02000000fe0400010000000008000500a9fe01010800040002000000"),
    # ip route replace default via 169.254.1.1 dev h0 proto 4 metric 2   (h0 had ifindex 3)
    (lambda: rtnl.route(7, "replace", IPv4Address(0), 0, 3, gateway=GW, proto=4, metric=2),
     W.RTM_NEWROUTE, REQ_ACK | W.NLM_F_CREATE | W.NLM_F_REPLACE,
     "02000000fe0400010000000008000500a9fe0101080006000200000008000400" "03000000"),
    # ip route replace 198.19.1.5/32 dev h0 scope link proto 90
    (lambda: rtnl.route(7, "replace", POD, 32, 2, scope=W.RT_SCOPE_LINK, proto=90),
     W.RTM_NEWROUTE, REQ_ACK | W.NLM_F_CREATE | W.NLM_F_REPLACE,
     "02200000fe5afd010000000008000100c61301050800040002000000"),
    # ip route del 198.19.1.5/32 dev h0 scope link proto 90
    (lambda: rtnl.route(7, "delete", POD, 32, 2, scope=W.RT_SCOPE_LINK, proto=90),
     W.RTM_DELROUTE, REQ_ACK,
     "02200000fe5afd000000000008000100c61301050800040002000000"),
    # ip link del dev h0
    (lambda: rtnl.link_del(7, 2), W.RTM_DELLINK, REQ_ACK, "00000000020000000000000000000000"),
    # ip link del group 1886549092
    (lambda: rtnl.group_del(7, 1886549092), W.RTM_DELLINK, REQ_ACK,
     "0000000000000000000000000000000008001b0064747270"),
]


@pytest.mark.parametrize("build, kind, flags, payload", GOLDEN)
def test_requests_match_iproute2(build, kind, flags, payload):
    msg = build()
    length, mtype, mflags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, mflags, seq, pid) == (len(msg), kind, flags, 7, 0)
    assert msg[16:].hex() == payload


def test_route_table_above_255_goes_in_rta_table_where_iproute2_puts_it():
    # ip route replace|del 198.19.1.5/32 dev h0 scope link proto 90 table 1000   (h0 ifindex 3):
    # RTA_TABLE right after RTA_DST, the device last; rtm_table RT_TABLE_UNSPEC.
    for action, kind, flags, payload in (
            ("replace", W.RTM_NEWROUTE, REQ_ACK | W.NLM_F_CREATE | W.NLM_F_REPLACE,
             "02200000005afd010000000008000100c613010508000f00e80300000800040003000000"),
            ("delete", W.RTM_DELROUTE, REQ_ACK,
             "02200000005afd000000000008000100c613010508000f00e80300000800040003000000")):
        msg = rtnl.route(7, action, POD, 32, 3, scope=W.RT_SCOPE_LINK, proto=90, table=1000)
        assert struct.unpack_from("=IHHII", msg) == (len(msg), kind, flags, 7, 0)
        assert msg[16:].hex() == payload
    with pytest.raises(ValueError, match="'add'"):
        rtnl.route(1, "add", POD, 32, 2)


def _link_reply(index: int, flags: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0)
    for kind, payload in attrs:
        n = 4 + len(payload)
        body += struct.pack("=HH", n, kind) + payload + b"\0" * (-n & 3)
    return body


@given(index=st.integers(1, 2**31 - 1), up=st.booleans(), mtu=st.integers(68, 65535),
       group=st.integers(0, 2**32 - 1), mac=st.binary(min_size=6, max_size=6),
       name=st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=15))
def test_parse_link_reads_what_the_kernel_sends(index, up, mtu, group, mac, name):
    body = _link_reply(index, 0x1002 | int(up), [
        (W.IFLA_IFNAME, name.encode() + b"\0"), (W.IFLA_MTU, struct.pack("=I", mtu)),
        (W.IFLA_GROUP, struct.pack("=I", group)), (W.IFLA_ADDRESS, mac),
        (W.IFLA_LINKINFO | 0x8000, b"\x08\x00\x01\x00veth")])
    link = rtnl.parse_link(body, 0, len(body))
    assert link == rtnl.Link(index, mac.hex(":"), mtu, up, group)


def _error_reply(err: int, request: bytes, text: bytes, *, capped: bool) -> bytes:
    """An NLMSG_ERROR as netlink_ack() builds it: the request's header only when capped (and
    NLM_F_CAPPED set), the whole request otherwise; then the extended-ACK TLV."""
    tlv = struct.pack("=HH", 4 + len(text), W.NLMSGERR_ATTR_MSG) + text
    tlv += b"\0" * (-len(tlv) & 3)
    echoed = request[:16] if capped else request + b"\0" * (-len(request) & 3)
    body = struct.pack("=i", -err) + echoed + tlv
    flags = W.NLM_F_ACK_TLVS | (W.NLM_F_CAPPED if capped else 0)
    return struct.pack("=IHHII", 16 + len(body), W.NLMSG_ERROR, flags, 7, 4242) + body


@pytest.mark.parametrize("capped", [True, False], ids=["NETLINK_CAP_ACK", "whole-request-echoed"])
def test_ack_error_carries_the_extended_ack_message(capped):
    request = rtnl.route(7, "replace", IPv4Address(0), 0, 2, gateway=GW, proto=4)
    reply = _error_reply(errno.EINVAL, request, b"Nexthop has invalid gateway\0", capped=capped)
    (kind, flags, seq, off, length), = W.iter_messages(reply)
    err = rtnl.ack_error(decode_ack(reply, off, length, flags, seq))
    assert isinstance(err, rtnl.RtnlError) and err.errno == errno.EINVAL
    assert err.strerror == "Invalid argument (Nexthop has invalid gateway)"
    ok = struct.pack("=IHHII", 36, W.NLMSG_ERROR, W.NLM_F_CAPPED, 7, 0) + bytes(4) + request[:16]
    assert rtnl.ack_error(decode_ack(ok, 0, 36, W.NLM_F_CAPPED, 7)) is None
