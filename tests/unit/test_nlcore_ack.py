"""nlcore.ack: NLMSG_ERROR with and without NETLINK_CAP_ACK (net/netlink/af_netlink.c
netlink_ack: the request's header only, with NLM_F_CAPPED, when the socket capped acks or the
answer is a success; the whole request otherwise), with and without extended-ACK TLVs."""
from __future__ import annotations

import errno
import struct

import pytest

from nlcore import wire as W
from nlcore.ack import Ack, decode_ack
from nlcore.route import encode_route

REQUEST = encode_route("replace", 7, 0xC6130100, 26, gateway=0xC6120909, oif=3)


def reply(err: int, text: bytes = b"", *, capped: bool, seq: int = 7) -> bytes:
    flags = W.NLM_F_CAPPED if capped else 0
    tlv = b""
    if text:
        tlv = W.attr(W.NLMSGERR_ATTR_MSG, text + b"\0")
        flags |= W.NLM_F_ACK_TLVS
    echoed = REQUEST[:16] if capped else REQUEST + b"\0" * (-len(REQUEST) & 3)
    body = struct.pack("=i", -err) + echoed + tlv
    return W.NLMSGHDR.pack(16 + len(body), W.NLMSG_ERROR, flags, seq, 99) + body


def decode(buf: bytes) -> Ack:
    (kind, flags, seq, off, length), = W.iter_messages(buf)
    assert kind == W.NLMSG_ERROR
    return decode_ack(buf, off, length, flags, seq)


@pytest.mark.parametrize("capped", [True, False])
def test_extended_ack_text_is_found_behind_the_echoed_request(capped):
    ack = decode(reply(errno.ENETUNREACH, b"Nexthop has invalid gateway", capped=capped))
    assert ack == Ack(7, errno.ENETUNREACH, "Nexthop has invalid gateway")


@pytest.mark.parametrize("capped", [True, False])
def test_plain_error_and_success(capped):
    assert decode(reply(errno.EEXIST, capped=capped)) == Ack(7, errno.EEXIST, "")
    assert decode(reply(0, capped=True, seq=8)) == Ack(8, 0, "")


def test_garbled_tlvs_keep_the_errno():
    buf = bytearray(reply(errno.EINVAL, b"x", capped=True))
    struct.pack_into("=H", buf, 16 + 4 + 16, 200)  # the TLV claims 200 bytes
    assert decode(bytes(buf)) == Ack(7, errno.EINVAL, "")


def test_truncated_error_raises():
    buf = reply(errno.EINVAL, capped=True)
    with pytest.raises(W.CodecError):
        decode_ack(buf, 0, 18, 0, 7)
