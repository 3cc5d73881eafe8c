"""VXLANManager on the host kernel (which has vxlan but no ipip), in throwaway netns."""
from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest

from ipip.errors import IPIPUnavailable
from ipip.netlink import NetlinkDataplane
from ipip.tunl0 import Tunl0Manager
from ipip.vxlan import VTEP, VXLAN_IFNAME, VXLANManager, vtep_mac
from nsutil import sh

pytestmark = pytest.mark.privileged

A_NODE, B_NODE = IPv4Address("198.18.1.1"), IPv4Address("198.18.1.2")
A_VTEP, B_VTEP = IPv4Address("198.19.0.1"), IPv4Address("198.19.0.65")


def _underlay(a: str, b: str) -> None:
    sh("ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", b, ns=a)
    for ns, ip in ((a, A_NODE), (b, B_NODE)):
        sh("ip", "addr", "add", f"{ip}/24", "dev", "ul0", ns=ns)
        sh("ip", "link", "set", "ul0", "up", ns=ns)


@pytest.fixture
def pair(make_netns):
    a, b = make_netns("vxa"), make_netns("vxb")
    _underlay(a, b)
    dps = [NetlinkDataplane(a), NetlinkDataplane(b)]
    yield a, b, dps
    for dp in dps:
        dp.close()


def test_vxlan_between_two_namespaces(pair):
    a, b, (dpa, dpb) = pair
    ma = VXLANManager(dpa, node_name="node-a", local_ip=A_NODE, vtep_ip=A_VTEP, mtu=1450)
    mb = VXLANManager(dpb, node_name="node-b", local_ip=B_NODE, vtep_ip=B_VTEP, mtu=1450)
    vteps = {"node-a": VTEP(A_NODE, A_VTEP, vtep_mac("node-a")),
             "node-b": VTEP(B_NODE, B_VTEP, vtep_mac("node-b"))}
    for m in (ma, mb):
        m.set_remote_vteps(vteps)
        m.apply()
        m.apply()  # idempotent on the real kernel too
    # Routes to the peer's block are felix/'s job; the test adds them by hand.
    sh("ip", "route", "add", "198.19.0.64/26", "via", str(B_VTEP), "dev", VXLAN_IFNAME, "onlink", ns=a)
    sh("ip", "route", "add", "198.19.0.0/26", "via", str(A_VTEP), "dev", VXLAN_IFNAME, "onlink", ns=b)

    detail = sh("ip", "-d", "link", "show", VXLAN_IFNAME, ns=a).stdout
    for word in ("vxlan id 4096", "dstport 4789", "nolearning", f"local {A_NODE}", "mtu 1450",
                 vtep_mac("node-a")):
        assert word in detail, detail
    fdb = sh("bridge", "fdb", "show", "dev", VXLAN_IFNAME, ns=a).stdout
    assert f"{vtep_mac('node-b')} dst {B_NODE}" in fdb and "permanent" in fdb, fdb
    neigh = sh("ip", "neigh", "show", "dev", VXLAN_IFNAME, ns=a).stdout
    assert f"{B_VTEP} lladdr {vtep_mac('node-b')} PERMANENT" in neigh, neigh

    ping = sh("ping", "-c", "2", "-i", "0.2", "-W", "2", "-I", str(A_VTEP), str(B_VTEP),
              ns=a, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # 1450-byte VXLAN MTU: 1422 bytes of ICMP payload + 28 of headers fit with DF set.
    ping = sh("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", str(B_VTEP), ns=a, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    # node-b leaves: its FDB and neighbour entries vanish from node-a.
    ma.set_remote_vteps({"node-a": vteps["node-a"]})
    ma.apply()
    assert vtep_mac("node-b") not in sh("bridge", "fdb", "show", "dev", VXLAN_IFNAME, ns=a).stdout
    assert str(B_VTEP) not in sh("ip", "neigh", "show", "dev", VXLAN_IFNAME, ns=a).stdout
    assert dpa.list_fdb(VXLAN_IFNAME) == [] and dpa.list_neighbours(VXLAN_IFNAME) == []


def test_vxlan_repairs_drift_and_recreates_changed_device(pair):
    a, _, (dpa, _) = pair
    m = VXLANManager(dpa, node_name="node-a", local_ip=A_NODE, vtep_ip=A_VTEP, mtu=1450)
    m.apply()
    sh("ip", "link", "set", VXLAN_IFNAME, "mtu", "1300", "down", ns=a)
    sh("ip", "addr", "add", "198.19.7.7/32", "dev", VXLAN_IFNAME, ns=a)
    m.apply()
    j = json.loads(sh("ip", "-j", "-d", "addr", "show", VXLAN_IFNAME, ns=a).stdout)[0]
    assert j["mtu"] == 1450 and "UP" in j["flags"]
    assert [x["local"] for x in j["addr_info"] if x["family"] == "inet"] == [str(A_VTEP)]
    assert j["linkinfo"]["info_data"]["id"] == 4096
    m2 = VXLANManager(dpa, node_name="node-a", local_ip=A_NODE, vtep_ip=A_VTEP, vni=4097)
    m2.apply()
    assert "vxlan id 4097" in sh("ip", "-d", "link", "show", VXLAN_IFNAME, ns=a).stdout


def test_tunl0_on_a_kernel_without_ipip_raises_one_line_error(make_netns):
    if sh("sh", "-c", "grep -qw ipip /proc/modules", check=False).returncode == 0:
        pytest.skip("this kernel has the ipip module loaded")
    ns = make_netns("noip")
    dp = NetlinkDataplane(ns)
    try:
        with pytest.raises(IPIPUnavailable) as ei:
            Tunl0Manager(dp, address=IPv4Address("198.19.0.1")).apply()
    finally:
        dp.close()
    assert str(ei.value) == ("this kernel has no IPIP support (module ipip not available); "
                             "use VXLAN encapsulation")
    assert sh("ip", "link", "show", "tunl0", ns=ns, check=False).returncode != 0
