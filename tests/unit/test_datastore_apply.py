"""``podroute datastore apply`` and ``podroute ipam show --endpoints`` against a real etcd on
loopback: a cluster file in today's format and a list of resources are written through the etcd
datastore; bad files and rule breakers are refused with one line naming the file and key, and
leave etcd as it was."""
from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from etcdstoreutil import EtcdHarness
from podroute.cli import main
from podroute.datastore import BGPConfiguration, BGPPeer, IPAMBlock, IPPool, Node

CLUSTER = """\
bgp:
  nodeToNodeMesh: false
  asn: 64512
  peers: [{address: 198.18.0.1, asn: 65000}]
nodes:
  - {name: n1, ip: 198.18.0.11, podCIDRs: [198.19.1.0/26], routeReflectorClusterID: 198.18.0.11}
  - {name: n2, ip: 198.18.0.12, labels: {rack: r2}}
ipPools:
  - {cidr: 198.19.0.0/16, blockSize: 26, vxlanMode: Always}
"""


@pytest.fixture
async def h(etcd_server):
    harness = EtcdHarness(etcd_server)
    yield harness
    await harness.close()


def run(*argv: str) -> int:
    return main(list(argv))


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(run, *argv)


async def test_apply_a_cluster_file_then_ipam_show_reads_etcd(h, tmp_path, capsys):
    f = tmp_path / "cluster.yaml"
    f.write_text(CLUSTER)
    assert await cli("datastore", "apply", "--file", str(f), "--endpoints", h.server.endpoint,
                     "--prefix", h.prefix) == 0
    out = capsys.readouterr().out
    assert f"claimed  {h.prefix}ipamblocks/198-19-1-0-26" in out and "applied 6 resource(s)" in out
    items = {k: s.value for k, s in (await h.client().snapshot()).items.items()}
    assert items["bgpconfigurations/default"] == BGPConfiguration(False, 64512)
    assert items["nodes/n1"] == Node("n1", IPv4Address("198.18.0.11"), rr_cluster_id=IPv4Address("198.18.0.11"))
    assert items["nodes/n2"].labels == (("rack", "r2"),)
    assert items["ippools/198-19-0-0-16"] == IPPool("198-19-0-0-16", IPv4Network("198.19.0.0/16"), vxlan_mode="Always")
    assert items["bgppeers/global-198.18.0.1"] == BGPPeer("global-198.18.0.1", IPv4Address("198.18.0.1"), 65000)
    assert items["ipamblocks/198-19-1-0-26"] == IPAMBlock(IPv4Network("198.19.1.0/26"), "n1")
    # applying again replaces and re-claims its own block: idempotent
    assert await cli("datastore", "apply", "--file", str(f), "--endpoints", h.server.endpoint,
                     "--prefix", h.prefix) == 0
    capsys.readouterr()
    assert await cli("ipam", "show", "--config", str(tmp_path / "none.yaml"), "--endpoints", h.server.endpoint,
                     "--prefix", h.prefix, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["pools"] == [{"cidr": "198.19.0.0/16", "blockSize": 26, "disabled": False, "size": 65536,
                               "blocks": 1, "used": None}]
    assert shown["blocks"] == [{"cidr": "198.19.1.0/26", "node": "n1", "state": "confirmed", "size": 64, "used": None}]


async def test_apply_a_list_of_resources(h, tmp_path, capsys):
    f = tmp_path / "pools.yaml"
    f.write_text("- {kind: IPPool, name: default, cidr: 198.19.0.0/16, blockSize: 28}\n"
                 "- {kind: BGPPeer, name: tor, peerIP: 198.18.0.254, asNumber: 65000, nodeSelector: {rack: r1}}\n")
    assert await cli("datastore", "apply", "--file", str(f), "--endpoints", h.server.endpoint,
                     "--prefix", h.prefix) == 0
    items = (await h.client().snapshot()).items
    assert items["ippools/default"].value.block_size == 28
    assert items["bgppeers/tor"].value.node_selector == (("rack", "r1"),)


@pytest.mark.parametrize("text,error", [
    ("- {kind: IPPool, name: p, cidr: 198.19.0.0/16, colour: red}\n", "pools.yaml: [0].colour: unknown key"),
    ("- {kind: Pod, name: p}\n", "pools.yaml: [0].kind: 'Pod' found where one of"),
    ("- {kind: IPPool, name: P_1, cidr: 198.19.0.0/16}\n", "pools.yaml: [0].name: bad name 'P_1'"),
    ("nodes: [{name: n1, ip: nope}]\n", "pools.yaml: nodes[0].ip: 'nope' is not an IPv4 address"),
    ("- {kind: IPPool, name: p2, cidr: 198.19.128.0/17}\n", "ippools/p2: pool 198.19.128.0/17 overlaps pool 198.19.0.0/16 (ippools/p1)"),
    ("- {kind: IPAMBlock, cidr: 10.0.0.0/26, affinity: 'host:n1', state: confirmed}\n",
     "ipamblocks/10-0-0-0-26: block 10.0.0.0/26 is outside every IP pool"),
])
async def test_bad_files_are_refused_naming_the_key_and_nothing_is_written(h, tmp_path, capsys, text, error):
    await h.seed(IPPool("p1", IPv4Network("198.19.0.0/16")))
    before = (await h.client().snapshot()).items
    f = tmp_path / "pools.yaml"
    f.write_text(text)
    assert await cli("datastore", "apply", "--file", str(f), "--endpoints", h.server.endpoint,
                     "--prefix", h.prefix) == 2
    err = capsys.readouterr().err
    assert error in err and "Traceback" not in err and err.count("\n") == 1
    assert (await h.client().snapshot()).items == before


async def test_a_block_held_by_another_node_is_an_error_and_etcd_down_is_one_line(h, tmp_path, capsys):
    await h.seed(IPPool("p1", IPv4Network("198.19.0.0/16")))
    await h.client().claim_block(IPAMBlock(IPv4Network("198.19.1.0/26"), "n9"))
    f = tmp_path / "c.yaml"
    f.write_text("nodes: [{name: n1, ip: 198.18.0.11, podCIDRs: [198.19.1.0/26]}]\n")
    assert await cli("datastore", "apply", "--file", str(f), "--endpoints", h.server.endpoint,
                     "--prefix", h.prefix) == 1
    assert "ipamblocks/198-19-1-0-26: held by node n9" in capsys.readouterr().err
    from etcdutil import free_port
    assert await cli("datastore", "apply", "--file", str(f), "--endpoints", f"http://127.0.0.1:{free_port()}") == 1
    err = capsys.readouterr().err
    assert "podroute datastore apply: etcd at http://127.0.0.1:" in err and "Traceback" not in err


async def test_ipam_show_reads_etcd_through_the_node_config(h, tmp_path, capsys):
    """A node config with ``datastore.type: etcd`` (podroute.datastore.open) needs no flags."""
    await h.seed(IPPool("p1", IPv4Network("198.19.0.0/16")))
    await h.client().claim_block(IPAMBlock(IPv4Network("198.19.3.0/26"), "n1"))
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"""nodeName: n1
nodeIP: 198.18.0.11
datastore:
  type: etcd
  etcd: {{endpoints: ["{h.server.endpoint}"], prefix: "{h.prefix}"}}
paths: {{stateDir: {tmp_path}/state, runDir: {tmp_path}/run}}
""")
    assert await cli("ipam", "show", "--config", str(cfg), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["blocks"] == [{"cidr": "198.19.3.0/26", "node": "n1", "state": "confirmed", "size": 64, "used": None}]
    assert [p["cidr"] for p in shown["pools"]] == ["198.19.0.0/16"]
