"""`podroute cni install` renders a conflist the plugin accepts, for every config variant.

Each variant is the shipped configs/node.yaml with its mtu and pool encapsulation changed;
the conflist is written by the real CLI entry point and then fed, libcni-style
(podroute.lab.libcni.plugin_config), to the CNI plugin (fake wiring) for ADD, CHECK, DEL.
"""
from __future__ import annotations

import json
import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from cniconf_variants import FIXED_MTU, REPO, VARIANTS, expected_pod_mtu, node_yaml

from cni.fake_wiring import FakeWiring
from cni.install import SHEBANG
from cni.ipam import IPAM
from cni.model import CNIRequest
from cni.plugin import CNIPlugin
from ipip.mtu import pod_mtu
from ipip.modes import PoolEncap
from podroute import cli
from podroute.config import load
from podroute.cniconf import CONFLIST_NAME
from podroute.lab.libcni import plugin_config

NS = "/var/run/netns/pod-cniconf"


def install(tmp_path: Path, cfg_path: Path) -> tuple[dict, Path]:
    rc = cli.main(["cni", "install", "--config", str(cfg_path), "--bin-dir", str(tmp_path / "bin"),
                   "--conf-dir", str(tmp_path / "net.d")])
    assert rc == 0
    return json.loads((tmp_path / "net.d" / CONFLIST_NAME).read_text()), tmp_path / "bin" / "podroute"


def test_shipped_node_yaml_is_mtu_auto():
    # the bug was met with the example config as shipped: keep that case covered
    assert yaml.safe_load((REPO / "configs" / "node.yaml").read_text())["mtu"] == "auto"


@pytest.mark.parametrize("mtu,encap", VARIANTS)
def test_conflist_rendered_for_variant(tmp_path, mtu, encap):
    cfg_path = node_yaml(tmp_path, mtu, encap)
    cfg = load(cfg_path)
    doc, plugin = install(tmp_path, cfg_path)
    assert doc["cniVersion"] == "1.0.0" and doc["name"] == "podroute"
    assert [p["type"] for p in doc["plugins"]] == ["podroute", "portmap"]
    podroute, portmap = doc["plugins"]
    assert podroute["agentSocket"] == str(tmp_path / "run" / "cni.sock")
    if mtu == "auto":
        assert "mtu" not in podroute, podroute
    else:
        assert podroute["mtu"] == FIXED_MTU and type(podroute["mtu"]) is int
    assert None not in podroute.values()
    assert portmap == {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}
    # the installed plugin next to it: executable, system interpreter in isolated mode
    assert plugin.read_text().splitlines()[0] + "\n" == SHEBANG == "#!/usr/bin/python3 -IS\n"
    assert os.stat(plugin).st_mode & 0o777 == 0o755
    assert cfg.mtu == (None if mtu == "auto" else FIXED_MTU)


@pytest.mark.parametrize("mtu,encap", VARIANTS)
async def test_plugin_accepts_rendered_conflist(tmp_path, mtu, encap):
    """ADD/CHECK/DEL with the network config libcni builds from the rendered conflist; the
    pod gets the configured MTU, or with auto the agent's (underlay 1500 minus overhead)."""
    cfg_path = node_yaml(tmp_path, mtu, encap)
    cfg = load(cfg_path)
    doc, _ = install(tmp_path, cfg_path)
    auto = pod_mtu(1500, [PoolEncap(p.cidr, p.ipip_mode, p.vxlan_mode) for p in cfg.ip_pools])
    assert auto == expected_pod_mtu("auto", encap, 1500)
    wiring = FakeWiring()
    wiring.add_netns(NS)
    ipam = IPAM(tmp_path / "ipam", list(cfg.pod_cidrs), reserved=[cfg.pod_cidrs[0].network_address])
    plugin = CNIPlugin(ipam=ipam, wiring=wiring, mtu=cfg.mtu or auto)  # as the agent builds it

    def req(command, prev=None):
        return CNIRequest(command, "c0ffee01", NS, "eth0", {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web"},
                          "/opt/cni/bin", plugin_config(doc, 0, prev))

    result = await plugin.handle(req("ADD"))
    assert result["ips"][0]["address"] == "198.19.1.1/32"
    assert wiring.pod_links[(NS, "eth0")].mtu == expected_pod_mtu(mtu, encap, 1500)
    assert await plugin.handle(req("CHECK", result)) is None
    await plugin.handle(req("DEL", result))
    assert ipam.allocations() == {}
    assert IPv4Address("198.19.1.1") not in {r[0] for r in wiring.routes}


def test_example_conflist_in_configs_is_what_install_renders_for_the_example_node_yaml():
    from podroute.cniconf import conflist
    shipped = json.loads((REPO / "configs" / CONFLIST_NAME).read_text())
    assert shipped == conflist(load(REPO / "configs" / "node.yaml"))
