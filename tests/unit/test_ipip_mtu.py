from ipaddress import IPv4Network

import pytest

from ipip.errors import InterfaceNotFound, IPIPError
from ipip.modes import EncapMode, Encapsulation, PoolEncap
from ipip.mtu import IPIP_OVERHEAD, VXLAN_OVERHEAD, detect_underlay_mtu, pod_mtu, tunnel_mtu


def test_overheads():
    assert (IPIP_OVERHEAD, VXLAN_OVERHEAD) == (20, 50)
    assert tunnel_mtu(1500, Encapsulation.IPIP) == 1480
    assert tunnel_mtu(1500, Encapsulation.VXLAN) == 1450
    assert tunnel_mtu(9000, Encapsulation.NONE) == 9000


def test_tiny_underlay_is_an_error():
    with pytest.raises(IPIPError, match="below the IPv4 minimum"):
        tunnel_mtu(100, Encapsulation.VXLAN)


def test_pod_mtu_is_the_minimum_over_encapsulations_in_use():
    a = PoolEncap(IPv4Network("198.19.0.0/17"), ipip=EncapMode.CROSS_SUBNET)
    b = PoolEncap(IPv4Network("198.19.128.0/17"), vxlan=EncapMode.ALWAYS)
    n = PoolEncap(IPv4Network("198.19.128.0/17"))
    assert pod_mtu(1500, []) == 1500
    assert pod_mtu(1500, [n]) == 1500
    assert pod_mtu(1500, [a]) == 1480
    assert pod_mtu(1500, [a, b]) == 1450
    assert pod_mtu(9000, [Encapsulation.IPIP]) == 8980


def test_detect_underlay_mtu(tmp_path):
    (tmp_path / "eth9").mkdir()
    (tmp_path / "eth9" / "mtu").write_text("9000\n")
    assert detect_underlay_mtu("eth9", sys_class_net=tmp_path) == 9000
    with pytest.raises(InterfaceNotFound, match="'nope' does not exist"):
        detect_underlay_mtu("nope", sys_class_net=tmp_path)
    with pytest.raises(InterfaceNotFound):
        detect_underlay_mtu("../x", sys_class_net=tmp_path)


def test_detect_loopback_on_this_host():
    assert detect_underlay_mtu("lo") >= 1500
