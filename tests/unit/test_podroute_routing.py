"""podroute.routing: Loc-RIB entries to felix routes per pool encapsulation."""
from ipaddress import IPv4Address, IPv4Network

from bgp.model import BestRoute
from felix.routes import NextHop, Route
from ipip.modes import EncapMode, PoolEncap
from podroute.routing import FibPlanner

ME = IPv4Address("198.18.0.11")
SAME, OTHER = IPv4Address("198.18.0.12"), IPv4Address("198.18.1.12")
LOCAL = (IPv4Network("198.18.0.0/24"),)
POOLS = (PoolEncap(IPv4Network("10.0.0.0/16"), ipip=EncapMode.CROSS_SUBNET),
         PoolEncap(IPv4Network("10.1.0.0/16"), vxlan=EncapMode.ALWAYS),
         PoolEncap(IPv4Network("10.2.0.0/16")))


def best(prefix: str, *hops: IPv4Address) -> tuple[IPv4Network, BestRoute]:
    p = IPv4Network(prefix)
    return p, BestRoute(p, tuple(hops), tuple(hops))


def test_native_ipip_crosssubnet_and_vxlan():
    planner = FibPlanner(node_ip=ME, pools=POOLS, local_subnets=LOCAL)
    assert planner.plan(*best("10.0.1.0/26", SAME)) == (Route.via("10.0.1.0/26", SAME), frozenset())
    assert planner.plan(*best("10.0.1.0/26", OTHER)) == (
        Route.via("10.0.1.0/26", OTHER, ifname="tunl0", onlink=True), frozenset())
    assert planner.plan(*best("10.1.1.0/26", SAME)) == (
        Route.via("10.1.1.0/26", SAME, ifname="vxlan.podroute", onlink=True), frozenset({SAME}))
    assert planner.plan(*best("10.2.1.0/26", OTHER)) == (Route.via("10.2.1.0/26", OTHER), frozenset())
    # outside every pool (policy's import_extra): native
    assert planner.plan(*best("172.16.0.0/26", OTHER)) == (Route.via("172.16.0.0/26", OTHER), frozenset())


def test_own_next_hop_dropped_and_ecmp():
    planner = FibPlanner(node_ip=ME, pools=POOLS, local_subnets=LOCAL)
    assert planner.plan(*best("10.2.1.0/26", ME)) == (None, frozenset())
    assert planner.plan(*best("10.2.1.0/26", ME, SAME)) == (Route.via("10.2.1.0/26", SAME), frozenset())
    route, vteps = planner.plan(*best("10.1.1.0/26", OTHER, SAME))
    assert route == Route.ecmp("10.1.1.0/26", (NextHop(SAME, "vxlan.podroute", onlink=True),
                                                NextHop(OTHER, "vxlan.podroute", onlink=True)))
    assert vteps == frozenset({SAME, OTHER})


def test_the_speakers_prefix_key_is_felixs_dst_key():
    """The agent hands the Loc-RIB delta's keys to felix as they are (podroute.bgp_fib.BgpToFib.apply)."""
    from hypothesis import given, strategies as st

    from bgp.prefix import key_of, parse, unpack_keys
    from felix.routes import dst_key

    @given(st.integers(0, 2**32 - 1), st.integers(0, 32))
    def check(addr, plen):
        net = IPv4Network((addr, plen), strict=False)
        wire = bytes([plen]) + int(net.network_address).to_bytes(4, "big")[:(plen + 7) // 8]
        assert key_of(net) == key_of(parse(str(net))) == dst_key(net) == unpack_keys(wire)[0]
    check()
