"""``podroute lab up``'s options are checked before anything is created, each with a
message naming the option as the CLI spells it (podroute.lab.options)."""
from __future__ import annotations

import pytest

from podroute.lab.netns import LabError
from podroute.lab.options import LabOptions, required_tools, validate_encapsulation, validate_name


def test_defaults_of_a_three_node_lab_are_valid() -> None:
    LabOptions(name="lab", nodes=3).validate()


@pytest.mark.parametrize("opts", [
    LabOptions(name="a-1", nodes=2, pods_per_node=1),
    LabOptions(name="x" * 12, nodes=200, pods_per_node=20),
    LabOptions(name="l", nodes=8, subnets=8, encapsulation="vxlan", encap_mode="CrossSubnet"),
    LabOptions(name="l", nodes=3, topology="rr2", subnets=1, peer="frr"),
    LabOptions(name="l", nodes=3, topology="tor", encapsulation="ipip"),
    LabOptions(name="l", nodes=3, topology="mesh", subnets=3),
    LabOptions(name="l", nodes=3, topology="podroute-rr"),
])
def test_edges_of_every_range_are_accepted(opts: LabOptions) -> None:
    opts.validate()


@pytest.mark.parametrize("opts, message", [
    (LabOptions(name="", nodes=3), "lab name '' must be 1-12"),
    (LabOptions(name="x" * 13, nodes=3), "must be 1-12 letters"),
    (LabOptions(name="a_b", nodes=3), "lab name 'a_b'"),
    (LabOptions(name="a/b", nodes=3), "lab name 'a/b'"),
    (LabOptions(name="l", nodes=3, encapsulation="gre"), "--encapsulation gre: need one of none, ipip, vxlan"),
    (LabOptions(name="l", nodes=3, encap_mode="Never"), "--encap-mode Never: need Always or CrossSubnet"),
    (LabOptions(name="l", nodes=3, subnets=0), "--subnets 0: need 1..3"),
    (LabOptions(name="l", nodes=3, subnets=4), "--subnets 4: need 1..3"),
    (LabOptions(name="l", nodes=20, subnets=9), "--subnets 9: need 1..8"),
    (LabOptions(name="l", nodes=3, topology="ring"), "--topology ring: need one of rr, rr2, tor, mesh, podroute-rr"),
    (LabOptions(name="l", nodes=3, peer="gobgp"), "--peer gobgp: need one of bird, frr"),
    (LabOptions(name="l", nodes=3, topology="rr2", subnets=2), "--topology rr2 needs --subnets 1"),
    (LabOptions(name="l", nodes=1), "--nodes 1: need 2..200 nodes"),
    (LabOptions(name="l", nodes=201), "--nodes 201: need 2..200 nodes"),
    (LabOptions(name="l", nodes=3, pods_per_node=0), "--pods 0: need 1..20 pods per node"),
    (LabOptions(name="l", nodes=3, pods_per_node=21), "--pods 21: need 1..20 pods per node"),
])
def test_each_bad_option_is_named(opts: LabOptions, message: str) -> None:
    with pytest.raises(LabError, match=message.replace("+", r"\+").replace(".", r"\.")):
        opts.validate()


def test_the_first_bad_option_in_cli_order_is_reported() -> None:
    # Name before encapsulation before subnets ... before pods, as lab up always checked them.
    with pytest.raises(LabError, match="lab name"):
        LabOptions(name="bad name", nodes=1, encapsulation="gre", pods_per_node=0).validate()
    with pytest.raises(LabError, match="--encapsulation"):
        LabOptions(name="ok", nodes=1, encapsulation="gre", pods_per_node=0).validate()
    with pytest.raises(LabError, match="--nodes"):
        LabOptions(name="ok", nodes=1, pods_per_node=0).validate()


def test_reconfigure_uses_the_same_encapsulation_check() -> None:
    validate_encapsulation("ipip", "CrossSubnet")
    with pytest.raises(LabError, match="--encapsulation"):
        validate_encapsulation("IPIP", "Always")
    with pytest.raises(LabError, match="--encap-mode"):
        validate_encapsulation("vxlan", "always")


def test_name_check_alone() -> None:
    validate_name("n-1")
    with pytest.raises(LabError):
        validate_name("-" * 3)


def test_tools_follow_the_router_implementation() -> None:
    assert set(required_tools("bird")) == {"ip", "ping", "bird", "birdc"}
    frr_tools = required_tools("frr")
    assert "vtysh" in frr_tools and any(t.endswith("/bgpd") for t in frr_tools) and "bird" not in frr_tools
