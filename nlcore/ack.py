"""NLMSG_ERROR replies: acknowledgements, errors and their extended-ACK text.

``struct nlmsgerr`` (netlink(7), linux/netlink.h) is an s32 ``error`` (-errno, 0 = success)
followed by the request it answers: only that request's 16-byte nlmsghdr when the kernel
sets NLM_F_CAPPED in the reply's flags (always for a success; for an error when the socket
set NETLINK_CAP_ACK), otherwise the whole request, padded to 4 bytes. When NLM_F_ACK_TLVS is
set (the socket set NETLINK_EXT_ACK and the kernel had something to say), NLMSGERR_ATTR_*
TLVs follow; NLMSGERR_ATTR_MSG is a NUL-terminated text such as "Nexthop has invalid
gateway" (net/netlink/af_netlink.c, netlink_ack()).
"""
from __future__ import annotations

from dataclasses import dataclass

from .wire import (HDR_LEN, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSGERR_ATTR_MSG, NLMSGERR_ERROR,
                   NLMSGHDR, CodecError, align, iter_attrs)


@dataclass(frozen=True)
class Ack:
    """One NLMSG_ERROR reply: ``seq`` of the request it answers, ``errno`` positive (0 =
    success), ``message`` the extended-ACK text or ''."""

    seq: int
    errno: int
    message: str = ""


def decode_ack(buf, off: int, length: int, flags: int, seq: int) -> Ack:
    """Decode the NLMSG_ERROR message at ``buf[off:off+length]`` whose header carried
    ``flags`` and ``seq``, with or without NETLINK_CAP_ACK on the socket (module doc).
    Raises CodecError if it is shorter than nlmsghdr + error; extended-ACK TLVs that do not
    parse are ignored (the errno is still right)."""
    if length < HDR_LEN + 4:
        raise CodecError("truncated NLMSG_ERROR")
    err = NLMSGERR_ERROR.unpack_from(buf, off + HDR_LEN)[0]
    message = ""
    inner = off + HDR_LEN + 4
    if flags & NLM_F_ACK_TLVS and length >= HDR_LEN + 4 + HDR_LEN:
        echoed = HDR_LEN if flags & NLM_F_CAPPED else align(NLMSGHDR.unpack_from(buf, inner)[0])
        try:
            for atype, aoff, alen in iter_attrs(buf, inner + echoed, off + length):
                if atype == NLMSGERR_ATTR_MSG:
                    message = bytes(buf[aoff:aoff + alen]).rstrip(b"\0").decode("utf-8", "replace")
        except CodecError:
            pass
    return Ack(seq, -err, message)
