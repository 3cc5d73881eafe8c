from ipaddress import IPv4Address, IPv4Interface

import pytest

from ipip.dataplane import FDBEntry, NeighEntry, VXLANParams
from ipip.fake import FakeDataplane
from ipip.vxlan import VTEP, VXLAN_IFNAME, VXLANManager, vtep_mac

LOCAL = IPv4Address("198.18.1.1")


def mk(dp, **kw):
    return VXLANManager(dp, node_name="node-a", local_ip=LOCAL,
                        vtep_ip=IPv4Address("198.19.0.1"), mtu=1450, **kw)


def test_vtep_mac_is_deterministic_unicast_and_local():
    m = vtep_mac("node-b")
    assert m == vtep_mac("node-b") != vtep_mac("node-c")
    first = int(m.split(":")[0], 16)
    assert first & 0x01 == 0 and first & 0x02 == 2
    assert len(VXLAN_IFNAME) <= 15


def test_device_fdb_and_neighbours_converge_and_stale_ones_go():
    dp = FakeDataplane()
    m = mk(dp)
    b = VTEP(IPv4Address("198.18.1.2"), IPv4Address("198.19.0.65"), vtep_mac("node-b"))
    c = VTEP(IPv4Address("198.18.1.3"), IPv4Address("198.19.0.129"), vtep_mac("node-c"))
    m.set_remote_vteps({"node-a": b, "node-b": b, "node-c": c})  # own name ignored
    m.apply()
    link = dp.get_link(VXLAN_IFNAME)
    assert link.vxlan == VXLANParams(4096, 4789, LOCAL, False)
    assert (link.mtu, link.up, link.mac) == (1450, True, vtep_mac("node-a"))
    assert dp.list_addresses(VXLAN_IFNAME) == [IPv4Interface("198.19.0.1/32")]
    assert set(dp.list_fdb(VXLAN_IFNAME)) == {FDBEntry(b.mac, b.node_ip), FDBEntry(c.mac, c.node_ip)}
    assert set(dp.list_neighbours(VXLAN_IFNAME)) == {NeighEntry(b.vtep_ip, b.mac),
                                                    NeighEntry(c.vtep_ip, c.mac)}
    n = len(dp.calls)
    m.apply()
    assert len(dp.calls) == n
    m.set_remote_vteps({"node-c": c})
    m.apply()
    assert dp.list_fdb(VXLAN_IFNAME) == [FDBEntry(c.mac, c.node_ip)]
    assert dp.list_neighbours(VXLAN_IFNAME) == [NeighEntry(c.vtep_ip, c.mac)]


def test_changed_parameters_recreate_the_device():
    dp = FakeDataplane()
    mk(dp).apply()
    m2 = VXLANManager(dp, node_name="node-a", local_ip=IPv4Address("198.18.1.9"),
                      vtep_ip=IPv4Address("198.19.0.1"))
    m2.apply()
    assert ("delete_link", VXLAN_IFNAME) in dp.calls
    assert dp.get_link(VXLAN_IFNAME).vxlan.local == IPv4Address("198.18.1.9")


def test_failure_is_recorded_then_recovered():
    dp = FakeDataplane()
    dp.fail_next("add_fdb")
    m = mk(dp)
    m.set_remote_vteps({"node-b": VTEP("198.18.1.2", "198.19.0.65", vtep_mac("node-b"))})
    assert not m.apply_and_record()
    assert "injected failure in add_fdb" in m.status.last_error
    assert m.apply_and_record() and m.status.healthy


def test_long_ifname_rejected():
    with pytest.raises(ValueError):
        mk(FakeDataplane(), ifname="vxlan.podroute00")
