"""ImportPolicy.check (integer fast path) against a reference written with ipaddress."""
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings, strategies as st

from bgp.policy import ImportPolicy

POLICY = ImportPolicy(
    import_pools=(IPv4Network("10.0.0.0/8"), IPv4Network("198.19.0.0/16")),
    own_blocks=(IPv4Network("10.1.1.0/26"), IPv4Network("198.19.4.0/24")),
    node_ip=IPv4Address("10.200.0.7"),
    import_extra=(IPv4Network("172.16.0.0/12"),),
    expected_next_hops={IPv4Network("10.2.0.0/26"): IPv4Address("198.18.0.2"),
                        IPv4Network("10.2.0.0/16"): IPv4Address("198.18.0.3"),
                        IPv4Network("198.19.9.0/24"): IPv4Address("198.18.0.4")},
)


def reference(pol: ImportPolicy, prefix: IPv4Network, nh: IPv4Address, enforce: bool) -> str | None:
    if prefix.prefixlen == 0:
        return ("own_next_hop" if nh == pol.node_ip else None) if pol.accept_default else "default"
    if not any(prefix.subnet_of(p) for p in pol.import_pools + pol.import_extra):
        return "outside_pool"
    if any(prefix.overlaps(b) for b in pol.own_blocks):
        return "own_block"
    if pol.node_ip in prefix:
        return "own_node_ip"
    if nh == pol.node_ip:
        return "own_next_hop"
    if enforce:
        for block, owner in pol.expected_next_hops.items():
            if prefix.subnet_of(block) and nh != owner:
                return "wrong_next_hop"
    return None


# Addresses near the interesting ranges, so most draws hit pools, blocks and owners.
BASES = [int(IPv4Address(a)) for a in ("10.1.1.0", "10.2.0.0", "10.200.0.0", "198.19.4.0",
                                        "198.19.9.0", "172.16.0.0", "192.168.0.0", "10.0.0.0")]
HOPS = [IPv4Address(a) for a in ("198.18.0.2", "198.18.0.3", "198.18.0.4", "10.200.0.7", "198.18.0.9")]


@settings(max_examples=3000)
@given(st.sampled_from(BASES), st.integers(0, 2**17 - 1), st.integers(0, 32),
       st.sampled_from(HOPS), st.booleans())
def test_fast_check_matches_reference(base, offset, plen, nh, enforce):
    prefix = IPv4Network(((base + offset * 64) % 2**32, plen), strict=False)
    assert POLICY.check(prefix, nh, enforce_next_hop=enforce) == reference(POLICY, prefix, nh, enforce)
