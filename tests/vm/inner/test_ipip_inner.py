"""Runs inside the qemu VM whose kernel has the ipip module (see tests/vm/test_ipip_vm.py)."""
from __future__ import annotations

import json
import subprocess
import time
from ipaddress import IPv4Address

from ipip.modes import Encapsulation
from ipip.mtu import tunnel_mtu
from ipip.netlink import NetlinkDataplane
from ipip.tunl0 import Tunl0Manager
from nsutil import sh

A_NODE, B_NODE = "198.18.1.1", "198.18.1.2"
A_TUN, B_TUN = IPv4Address("198.19.0.1"), IPv4Address("198.19.0.65")


def _tunl0(ns: str) -> dict:
    return json.loads(sh("ip", "-j", "-d", "addr", "show", "tunl0", ns=ns).stdout)[0]


def _inet(j: dict) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in j["addr_info"] if a["family"] == "inet"]


def test_tunl0_manager_configures_fallback_device(make_netns):
    ns = make_netns("tun")
    sh("ip", "link", "set", "tunl0", "mtu", "1400", ns=ns)  # so that apply() must change it
    sh("ip", "addr", "add", "198.19.9.9/32", "dev", "tunl0", ns=ns)  # foreign: must go
    dp = NetlinkDataplane(ns)
    try:
        m = Tunl0Manager(dp, address=A_TUN, mtu=tunnel_mtu(1500, Encapsulation.IPIP))
        m.apply()
        m.apply()
        assert m.apply_and_record() and m.status.healthy
    finally:
        dp.close()
    j = _tunl0(ns)
    assert j["mtu"] == 1480 and "UP" in j["flags"], j
    assert j["linkinfo"]["info_kind"] == "ipip"
    assert _inet(j) == ["198.19.0.1/32"]


def test_ipip_ping_between_namespaces_with_df_at_tunnel_mtu(make_netns):
    a, b = make_netns("ipa"), make_netns("ipb")
    sh("ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", b, ns=a)
    for ns, ip in ((a, A_NODE), (b, B_NODE)):
        sh("ip", "addr", "add", f"{ip}/24", "dev", "ul0", ns=ns)
        sh("ip", "link", "set", "ul0", "up", ns=ns)
    for ns, tun in ((a, A_TUN), (b, B_TUN)):
        dp = NetlinkDataplane(ns)
        try:
            Tunl0Manager(dp, address=tun, mtu=1480).apply()
        finally:
            dp.close()
    # Calico-style IPIP routes (felix/'s job in the product).
    sh("ip", "route", "add", "198.19.0.64/26", "via", B_NODE, "dev", "tunl0", "onlink", ns=a)
    sh("ip", "route", "add", "198.19.0.0/26", "via", A_NODE, "dev", "tunl0", "onlink", ns=b)

    cap = subprocess.Popen(["ip", "netns", "exec", b, "tcpdump", "-n", "-l", "-U", "-i", "ul0",
                            "-c", "1", "ip", "proto", "4"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        # tcpdump prints "listening on ..." to stderr once the capture is armed.
        line = ""
        while time.monotonic() < deadline and "listening" not in line:
            line = cap.stderr.readline()
            if not line and cap.poll() is not None:
                break
        ping = sh("ping", "-c", "3", "-i", "0.2", "-W", "3", str(B_TUN), ns=a, check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        out, err = cap.communicate(timeout=20)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait(timeout=5)
    assert "IP 198.18.1." in out and "198.19.0." in out, (out, err)
    assert cap.returncode == 0, err

    # 1452 + 8 (ICMP) + 20 (IP) = 1480 = tunl0 MTU; the outer packet is 1500 = veth MTU.
    big = sh("ping", "-c", "1", "-W", "3", "-M", "do", "-s", "1452", str(B_TUN), ns=a, check=False)
    assert big.returncode == 0, big.stdout + big.stderr
    # One byte more does not fit tunl0 with DF set.
    over = sh("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1453", str(B_TUN), ns=a, check=False)
    assert over.returncode != 0, over.stdout
