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

GW = IPv4Address("169.254.1.1")
POD = IPv4Address("198.19.1.5")
REQ_ACK = rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK

GOLDEN = [
    # ip link add h0 mtu 1400 type veth peer name p0 mtu 1400 netns <ns>   (netns fd 4)
    (lambda: rtnl.veth_new(7, "h0", "p0", 4, 1400), rtnl.RTM_NEWLINK,
     REQ_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
     "00000000000000000000000000000000080004007805000007000300683000003c0012000800010076657468"
     "300002002c00010000000000000000000000000000000000080004007805000008001c000400000007000300"
     "70300000"),
    # ip link set dev h0 up
    (lambda: rtnl.link_set(7, 2, up=True), rtnl.RTM_NEWLINK, REQ_ACK,
     "00000000020000000100000001000000"),
    # ip link set dev h0 down group 1886549092
    (lambda: rtnl.link_set(7, 2, up=False, group=1886549092), rtnl.RTM_NEWLINK, REQ_ACK,
     "0000000002000000000000000100000008001b0064747270"),
    # ip addr add 198.19.1.5/32 dev h0
    (lambda: rtnl.addr_add(7, 2, POD, 32), rtnl.RTM_NEWADDR,
     REQ_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL,
     "022000000200000008000200c613010508000100c6130105"),
    # ip route replace 169.254.1.1/32 dev h0 scope link proto 4
    (lambda: rtnl.route(7, "replace", GW, 32, 2, scope=rtnl.RT_SCOPE_LINK, proto=4),
     rtnl.RTM_NEWROUTE, REQ_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
     "02200000fe04fd010000000008000100a9fe01010800040002000000"),
    # ip route replace default via 169.254.1.1 dev h0 proto 4
    (lambda: rtnl.route(7, "replace", IPv4Address(0), 0, 2, gateway=GW, proto=4),
     rtnl.RTM_NEWROUTE, REQ_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
     "02000000fe0400010000000008000500a9fe01010800040002000000"),
    # ip route replace default via 169.254.1.1 dev h0 proto 4 metric 2   (h0 had ifindex 3)
    (lambda: rtnl.route(7, "replace", IPv4Address(0), 0, 3, gateway=GW, proto=4, metric=2),
     rtnl.RTM_NEWROUTE, REQ_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
     "02000000fe0400010000000008000500a9fe0101080006000200000008000400" "03000000"),
    # ip route replace 198.19.1.5/32 dev h0 scope link proto 90
    (lambda: rtnl.route(7, "replace", POD, 32, 2, scope=rtnl.RT_SCOPE_LINK, proto=90),
     rtnl.RTM_NEWROUTE, REQ_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE,
     "02200000fe5afd010000000008000100c61301050800040002000000"),
    # ip route del 198.19.1.5/32 dev h0 scope link proto 90
    (lambda: rtnl.route(7, "delete", POD, 32, 2, scope=rtnl.RT_SCOPE_LINK, proto=90),
     rtnl.RTM_DELROUTE, REQ_ACK,
     "02200000fe5afd000000000008000100c61301050800040002000000"),
    # ip link del dev h0
    (lambda: rtnl.link_del(7, 2), rtnl.RTM_DELLINK, REQ_ACK, "00000000020000000000000000000000"),
    # ip link del group 1886549092
    (lambda: rtnl.group_del(7, 1886549092), rtnl.RTM_DELLINK, REQ_ACK,
     "0000000000000000000000000000000008001b0064747270"),
]


@pytest.mark.parametrize("build, kind, flags, payload", GOLDEN)
def test_requests_match_iproute2(build, kind, flags, payload):
    msg = build()
    length, mtype, mflags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, mtype, mflags, seq, pid) == (len(msg), kind, flags, 7, 0)
    assert msg[16:].hex() == payload


def test_route_table_above_255_goes_in_rta_table():
    msg = rtnl.route(1, "replace", POD, 32, 2, scope=rtnl.RT_SCOPE_LINK, proto=90, table=1000)
    assert msg[16 + 4] == 0  # rtm_table: RT_TABLE_UNSPEC
    assert msg.endswith(bytes.fromhex("08000f00e8030000"))
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
        (rtnl.IFLA_IFNAME, name.encode() + b"\0"), (rtnl.IFLA_MTU, struct.pack("=I", mtu)),
        (rtnl.IFLA_GROUP, struct.pack("=I", group)), (rtnl.IFLA_ADDRESS, mac),
        (rtnl.IFLA_LINKINFO | 0x8000, b"\x08\x00\x01\x00veth")])
    link = rtnl.parse_link(body, 0, len(body))
    assert link == rtnl.Link(index, mac.hex(":"), mtu, up, group)


def test_ack_error_carries_the_extended_ack_message():
    text = b"Nexthop has invalid gateway\0"
    attr = struct.pack("=HH", 4 + len(text), rtnl.NLMSGERR_ATTR_MSG) + text
    attr += b"\0" * (-len(attr) & 3)
    payload = struct.pack("=i", -errno.EINVAL) + bytes(16) + attr
    err = rtnl._ack_error(payload, 0, len(payload), rtnl.NLM_F_ACK_TLVS)
    assert isinstance(err, OSError) and err.errno == errno.EINVAL
    assert "Nexthop has invalid gateway" in str(err)
    assert rtnl._ack_error(struct.pack("=i", 0) + bytes(16), 0, 20, 0) is None
