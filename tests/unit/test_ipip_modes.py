from ipaddress import IPv4Address, IPv4Network

import pytest

from ipip.errors import EncapConfigError
from ipip.modes import EncapMode, Encapsulation, PoolEncap, route_encap

POOL = IPv4Network("198.19.0.0/16")
LOCAL = [IPv4Network("198.18.1.0/24")]
SAME = IPv4Address("198.18.1.7")
OTHER = IPv4Address("198.18.2.7")


def test_both_tunnels_enabled_is_rejected_naming_the_pool():
    with pytest.raises(EncapConfigError, match=r"198\.19\.0\.0/16.*mutually exclusive"):
        PoolEncap(POOL, ipip=EncapMode.ALWAYS, vxlan=EncapMode.CROSS_SUBNET)


def test_strings_from_config_are_accepted_and_bad_ones_rejected():
    p = PoolEncap(POOL, ipip="CrossSubnet")
    assert p.ipip is EncapMode.CROSS_SUBNET and p.encapsulation is Encapsulation.IPIP
    with pytest.raises(EncapConfigError, match="ipipMode 'Sometimes'"):
        PoolEncap(POOL, ipip="Sometimes")


def test_default_pool_is_never_encapsulated():
    p = PoolEncap(POOL)
    assert p.encapsulation is Encapsulation.NONE
    assert route_encap(p, local_subnets=LOCAL, next_hop=OTHER) is Encapsulation.NONE


@pytest.mark.parametrize("kw,tunnel", [({"ipip": EncapMode.ALWAYS}, Encapsulation.IPIP),
                                       ({"vxlan": EncapMode.ALWAYS}, Encapsulation.VXLAN)])
def test_always_encapsulates_even_on_the_same_subnet(kw, tunnel):
    p = PoolEncap(POOL, **kw)
    assert route_encap(p, local_subnets=LOCAL, next_hop=SAME) is tunnel
    assert route_encap(p, local_subnets=LOCAL, next_hop=OTHER) is tunnel


@pytest.mark.parametrize("field,tunnel", [("ipip", Encapsulation.IPIP), ("vxlan", Encapsulation.VXLAN)])
def test_cross_subnet_encapsulates_only_across_subnets(field, tunnel):
    p = PoolEncap(POOL, **{field: EncapMode.CROSS_SUBNET})
    assert route_encap(p, local_subnets=LOCAL, next_hop=SAME) is Encapsulation.NONE
    assert route_encap(p, local_subnets=LOCAL, next_hop=OTHER) is tunnel
    assert route_encap(p, local_subnets=[], next_hop=SAME) is tunnel
    two = LOCAL + [IPv4Network("198.18.2.0/24")]
    assert route_encap(p, local_subnets=two, next_hop=OTHER) is Encapsulation.NONE


def test_enum_values_are_calicos_spelling():
    assert [m.value for m in EncapMode] == ["Always", "CrossSubnet", "Never"]
