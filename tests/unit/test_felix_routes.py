from ipaddress import IPv4Address, IPv4Network

import pytest

from felix.errors import InvalidRoute
from felix.routes import NextHop, Route, RouteType, Scope


def test_constructors_build_expected_shapes():
    r = Route.via("198.19.0.0/26", "198.18.0.2", "eth0", onlink=True)
    assert r.dst == IPv4Network("198.19.0.0/26") and r.gateway == IPv4Address("198.18.0.2")
    assert (r.ifname, r.onlink, r.type, r.scope) == ("eth0", True, RouteType.UNICAST, Scope.UNIVERSE)
    b = Route.blackhole("198.19.1.0/26")
    assert b.type is RouteType.BLACKHOLE and b.gateway is None and b.ifname is None
    d = Route.device("198.19.0.5/32", "prv0")
    assert d.scope is Scope.LINK and d.ifname == "prv0" and d.gateway is None
    e = Route.ecmp("198.19.2.0/26", [NextHop("198.18.0.2"), NextHop("198.18.0.3", weight=2)])
    assert len(e.multipath) == 2 and e.multipath[1].weight == 2 and e.gateway is None


@pytest.mark.parametrize("kwargs, field", [
    (dict(dst="198.19.0.0/26", type=RouteType.BLACKHOLE, gateway="198.18.0.1"), "gateway"),
    (dict(dst="198.19.0.0/26", type=RouteType.BLACKHOLE, ifname="eth0"), "ifname"),
    (dict(dst="198.19.0.1/26", gateway="198.18.0.1"), "dst"),           # host bits set
    (dict(dst="2001:db8::/64", gateway="198.18.0.1"), "dst"),            # not IPv4
    (dict(dst="198.19.0.0/26"), "gateway"),                              # no next hop at all
    (dict(dst="198.19.0.0/26", gateway="198.18.0.1", onlink=True), "onlink"),   # onlink without dev
    (dict(dst="198.19.0.0/26", gateway="198.18.0.1", scope=Scope.LINK), "scope"),
    (dict(dst="198.19.0.0/26", gateway="198.18.0.1", multipath=(NextHop("198.18.0.2"), NextHop("198.18.0.3"))), "gateway"),
    (dict(dst="198.19.0.0/26", multipath=(NextHop("198.18.0.2"),)), "multipath"),
    (dict(dst="198.19.0.0/26", ifname="x" * 16), "ifname"),
    (dict(dst="198.19.0.0/26", ifname="eth0", metric=-1), "metric"),
])
def test_invalid_routes_name_the_field(kwargs, field):
    with pytest.raises(InvalidRoute) as ei:
        Route(**kwargs)
    assert ei.value.field == field
    assert isinstance(ei.value, ValueError)


def test_nexthop_validation():
    with pytest.raises(InvalidRoute) as ei:
        NextHop("198.18.0.1", weight=0)
    assert ei.value.field == "weight"
    with pytest.raises(InvalidRoute) as ei:
        NextHop("198.18.0.1", onlink=True)
    assert ei.value.field == "onlink"


def test_routes_are_hashable_values():
    a = Route.via("198.19.0.0/26", "198.18.0.2")
    assert a == Route.via(IPv4Network("198.19.0.0/26"), IPv4Address("198.18.0.2"))
    assert len({a, Route.via("198.19.0.0/26", "198.18.0.2")}) == 1
    with pytest.raises(Exception):
        a.gateway = None  # frozen


def test_satisfied_by_accepts_kernel_chosen_device_only_when_unspecified():
    want = Route.via("198.19.0.0/26", "198.18.0.2")
    kernel = Route.via("198.19.0.0/26", "198.18.0.2", "eth0")
    assert want.satisfied_by(kernel)
    assert not Route.via("198.19.0.0/26", "198.18.0.2", "eth1").satisfied_by(kernel)
    assert not want.satisfied_by(Route.via("198.19.0.0/26", "198.18.0.3", "eth0"))
    assert not want.satisfied_by(Route.via("198.19.0.0/26", "198.18.0.2", "eth0", metric=5))
    mp_want = Route.ecmp("198.19.0.0/26", [NextHop("198.18.0.2"), NextHop("198.18.0.3")])
    mp_kernel = Route.ecmp("198.19.0.0/26", [NextHop("198.18.0.2", "eth0"), NextHop("198.18.0.3", "eth0")])
    assert mp_want.satisfied_by(mp_kernel)
    assert not mp_want.satisfied_by(Route.ecmp("198.19.0.0/26", [NextHop("198.18.0.2", "eth0"),
                                                                  NextHop("198.18.0.3", "eth0", weight=2)]))


def test_str_is_ip_route_like():
    assert str(Route.via("198.19.0.0/26", "198.18.0.2", "tunl0", onlink=True)) == \
        "198.19.0.0/26 via 198.18.0.2 dev tunl0 onlink"
    assert str(Route.blackhole("198.19.1.0/26")) == "blackhole 198.19.1.0/26"


def test_via_hop_equals_via_and_checks_what_it_is_given():
    dst = IPv4Network("10.1.2.0/26")
    for hop in (NextHop("198.18.0.2"), NextHop("198.18.0.2", "tunl0", onlink=True)):
        fast = Route.via_hop(dst, hop, metric=7)
        slow = Route.via(dst, hop.gateway, hop.ifname, hop.onlink, metric=7)
        assert fast == slow and hash(fast) == hash(slow) and str(fast) == str(slow)
    with pytest.raises(InvalidRoute):
        Route.via_hop("10.1.2.0/26", NextHop("198.18.0.2"))
    with pytest.raises(InvalidRoute):
        Route.via_hop(dst, NextHop("198.18.0.2", weight=3))
    with pytest.raises(InvalidRoute):
        Route.via_hop(dst, NextHop("198.18.0.2"), metric=-1)
    with pytest.raises(InvalidRoute):
        Route.via_hop(dst, ("198.18.0.2", None))
