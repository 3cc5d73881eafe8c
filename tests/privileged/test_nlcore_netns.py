"""nlcore against the kernel: the setns helper, and extended-ACK text with and without
NETLINK_CAP_ACK (the kernel echoes the whole request in an error reply when the socket did not
cap acks; cni.rtnl used to read the request's bytes as the TLVs and lost the text)."""
from __future__ import annotations

import errno
import os
import socket
import threading
from ipaddress import IPv4Address

import pytest

from nlcore import wire as W
from nlcore.ack import decode_ack
from nlcore.netns import SetnsError, call_in_netns
from nlcore.route import encode_route
from nsutil import netns_path, sh

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns(make_netns):
    name = make_netns("nlc")
    sh("ip", "link", "add", "nlc0", "type", "veth", "peer", "name", "nlc0p", ns=name)
    sh("ip", "link", "set", "nlc0", "up", ns=name)
    return name


def _my_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


def test_fn_runs_in_the_namespace_and_the_caller_stays(ns):
    before = _my_netns()
    names = {n for _i, n in call_in_netns(ns, socket.if_nameindex)}
    assert {"lo", "nlc0", "nlc0p"} == names
    assert _my_netns() == before and "nlc0" not in {n for _i, n in socket.if_nameindex()}
    # a socket made there stays there: an RTM_GETLINK on it finds nlc0
    sock = call_in_netns(netns_path(ns), lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                               W.NETLINK_ROUTE))
    with sock:
        body = W.IFINFOMSG.pack(0, 0, 0, 0, 0) + W.attr(W.IFLA_IFNAME, b"nlc0\0")
        sock.send(W.request(W.RTM_GETLINK, W.NLM_F_REQUEST | W.NLM_F_ACK, 1, body))
        kinds = [m[0] for m in W.iter_messages(sock.recv(65536))]
        assert kinds[0] == W.RTM_NEWLINK


def test_an_open_descriptor_stays_the_callers(ns):
    fd = os.open(netns_path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert call_in_netns(fd, lambda: socket.if_nametoindex("nlc0")) > 0
        os.fstat(fd)  # still open: the thread had a duplicate
    finally:
        os.close(fd)


def test_errors(ns, tmp_path):
    with pytest.raises(FileNotFoundError):
        call_in_netns("prt-nlc-does-not-exist", lambda: None)
    plain = tmp_path / "not-a-namespace"
    plain.write_text("")
    with pytest.raises(SetnsError) as ei:
        call_in_netns(str(plain), lambda: None)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(KeyError, match="from fn"):
        call_in_netns(ns, lambda: {}["from fn"])


def test_timeout_leaves_the_thread_to_finish(ns):
    release, finished = threading.Event(), threading.Event()

    def slow():
        release.wait(30)
        finished.set()

    with pytest.raises(TimeoutError) as ei:
        call_in_netns(ns, slow, timeout=0.05)
    assert ei.value.errno == errno.ETIMEDOUT
    release.set()
    assert finished.wait(10)


def _unreachable_gateway_reply(cap_ack: bool) -> tuple[int, bytes, int, int, int]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, W.NETLINK_ROUTE)
    with s:
        s.setsockopt(W.SOL_NETLINK, W.NETLINK_CAP_ACK, int(cap_ack))
        s.setsockopt(W.SOL_NETLINK, W.NETLINK_EXT_ACK, 1)
        s.settimeout(10)
        oif = socket.if_nametoindex("nlc0")
        s.send(encode_route("replace", 3, int(IPv4Address("198.19.8.0")), 26,
                            gateway=int(IPv4Address("198.18.9.1")), oif=oif))
        buf = s.recv(65536)
    (kind, flags, seq, off, length), = W.iter_messages(buf)
    assert kind == W.NLMSG_ERROR and seq == 3
    return flags, buf, off, length, seq


@pytest.mark.parametrize("cap_ack", [True, False])
def test_nlcore_finds_the_extended_ack_text_either_way(ns, cap_ack):
    flags, buf, off, length, seq = call_in_netns(ns, lambda: _unreachable_gateway_reply(cap_ack))
    assert bool(flags & W.NLM_F_CAPPED) == cap_ack and flags & W.NLM_F_ACK_TLVS
    ack = decode_ack(buf, off, length, flags, seq)
    # the kernel's text ("Nexthop has invalid gateway" on 6.x)
    assert ack.errno == errno.ENETUNREACH and ack.message
    assert "\0" not in ack.message and ack.message.isprintable()


@pytest.mark.parametrize("cap_ack", [True, False])
def test_cni_rtnl_reports_the_extended_ack_text_either_way(ns, cap_ack):
    from cni import rtnl

    def attempt():
        with rtnl.Rtnl() as nl:
            nl.sock.setsockopt(W.SOL_NETLINK, W.NETLINK_CAP_ACK, int(cap_ack))
            with pytest.raises(rtnl.RtnlError) as ei:
                nl.call(rtnl.route(nl.next_seq(), "replace", IPv4Address("198.19.8.0"), 26,
                                   nl.link("nlc0").index, gateway=IPv4Address("198.18.9.1"),
                                   proto=90))
            return ei.value

    err = call_in_netns(ns, attempt)
    expected = decode_ack(*_reply_args(ns)).message
    assert err.errno == errno.ENETUNREACH
    assert err.strerror == f"{os.strerror(errno.ENETUNREACH)} ({expected})"


def _reply_args(ns):
    flags, buf, off, length, seq = call_in_netns(ns, lambda: _unreachable_gateway_reply(True))
    return buf, off, length, flags, seq
