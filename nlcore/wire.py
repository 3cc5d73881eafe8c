"""Netlink and rtnetlink wire format: constants, structs and TLV walking.

Formats (netlink(7), rtnetlink(7), linux/netlink.h, linux/rtnetlink.h, linux/if_link.h,
linux/if_addr.h, linux/veth.h); every field is host byte order except addresses:

- ``struct nlmsghdr``  u32 len, u16 type, u16 flags, u32 seq, u32 pid                  (16 bytes)
- ``struct rtmsg``     u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags (12)
- ``struct ifinfomsg`` u8 family, pad, u16 type, s32 index, u32 flags, u32 change       (16)
- ``struct ifaddrmsg`` u8 family, prefixlen, flags, scope; u32 index                    (8)
- ``struct rtattr``    u16 len, u16 type, payload padded to 4 bytes (the type's top two bits
  are NLA_F_NESTED / NLA_F_NET_BYTEORDER, masked off when reading)
- ``struct rtnexthop`` u16 len, u8 flags, u8 hops (= weight-1), s32 ifindex, then rtattrs (8)
- ``struct nlmsgerr``  s32 error (-errno, 0 = ack), then the request's nlmsghdr (see
  :mod:`nlcore.ack` for what follows it)

Errors: :class:`CodecError` (a ValueError) for bytes that are not well-formed netlink.
"""
from __future__ import annotations

import socket
import struct
from typing import Iterator

# --- netlink(7) ----------------------------------------------------------------------------------
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO = 0x1, 0x2, 0x4, 0x8
NLM_F_DUMP_INTR = 0x10  # on a dump's messages: the table changed meanwhile, dump again
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
# In an NLMSG_ERROR's flags: the echoed request is only its header / extack TLVs follow.
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS = 1, 2

# --- rtnetlink(7) --------------------------------------------------------------------------------
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY = 1, 2, 3, 4, 5, 6
RTA_PREFSRC, RTA_METRICS, RTA_MULTIPATH, RTA_TABLE = 7, 8, 9, 15
RTNH_F_DEAD, RTNH_F_PERVASIVE, RTNH_F_ONLINK, RTNH_F_OFFLOAD, RTNH_F_LINKDOWN = 1, 2, 4, 8, 16
RT_TABLE_UNSPEC, RT_TABLE_COMPAT, RT_TABLE_MAIN = 0, 252, 254
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
RTN_UNSPEC, RTN_UNICAST, RTN_BLACKHOLE = 0, 1, 6
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_GROUP, IFLA_NET_NS_FD, IFLA_EXT_MASK = 27, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link reply without ~1 KiB of counters
IFA_ADDRESS, IFA_LOCAL = 1, 2
AF_INET = socket.AF_INET

NLMSGHDR = struct.Struct("=IHHII")
NLMSG_FLAGS = struct.Struct("=H")           # nlmsg_flags, at offset 6 of NLMSGHDR
RTMSG = struct.Struct("=BBBBBBBBI")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")
RTNEXTHOP = struct.Struct("=HBBi")
NLMSGERR_ERROR = struct.Struct("=i")
U32 = struct.Struct("=I")
BE32 = struct.Struct(">I")
HDR_LEN = NLMSGHDR.size                    # 16: a message's body starts here
ATTR_MASK = 0x3FFF                         # rtattr type without NLA_F_NESTED / NLA_F_NET_BYTEORDER


class CodecError(ValueError):
    """Bytes that are not a well-formed netlink message (truncated header or attribute)."""


def align(n: int) -> int:
    """``n`` rounded up to NLMSG_ALIGN / RTA_ALIGN (4 bytes)."""
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr: header, ``payload``, zero padding to 4 bytes."""
    n = 4 + len(payload)
    return RTATTR.pack(n, kind) + payload + b"\0" * (-n & 3)


def attr_u32(kind: int, value: int) -> bytes:
    """An rtattr carrying a host-order u32 (RTA_OIF, RTA_PRIORITY, RTA_TABLE, IFLA_MTU ...)."""
    return RTATTR.pack(8, kind) + U32.pack(value)


def request(kind: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    """``body`` behind an nlmsghdr of ``kind`` with ``flags`` as given (the caller adds
    NLM_F_REQUEST / NLM_F_ACK)."""
    return NLMSGHDR.pack(HDR_LEN + len(body), kind, flags, seq, pid) + body


def iter_messages(buf) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield ``(type, flags, seq, offset, length)`` for each netlink message in ``buf`` (bytes,
    bytearray or memoryview). Raises CodecError on a truncated or malformed header."""
    off, end = 0, len(buf)
    unpack = NLMSGHDR.unpack_from
    while off + HDR_LEN <= end:
        length, mtype, flags, seq, _pid = unpack(buf, off)
        if length < HDR_LEN or off + length > end:
            raise CodecError(f"bad nlmsg length {length} at offset {off} (buffer {end})")
        yield mtype, flags, seq, off, length
        off += align(length)
    if off < end and end - off >= 4:
        raise CodecError(f"{end - off} trailing bytes after last message")


def iter_attrs(buf, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, payload_offset, payload_len)`` of the rtattrs in ``buf[start:end]``, the
    type masked with :data:`ATTR_MASK`. Raises CodecError on an attribute running past ``end``
    or shorter than its header."""
    unpack = RTATTR.unpack_from
    while start + 4 <= end:
        alen, atype = unpack(buf, start)
        if alen < 4 or start + alen > end:
            raise CodecError(f"bad rtattr length {alen} at offset {start}")
        yield atype & ATTR_MASK, start + 4, alen - 4
        start += align(alen)
