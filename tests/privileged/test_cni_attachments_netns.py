"""Real netns: several attachments of one container, CNI_NETNS that is no network namespace,
and CNI 1.1 STATUS/CHECK through the installed shim against a live CNIServer + CNIPlugin.

Issue 14 item 2 and issue 15 "CNI 1.1 and stricter checks". The host side runs in a
throwaway "host" namespace (``NetlinkWiring(host_netns=...)``), as in test_cni_netlink.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from cni.errors import CNIError
from cni.install import install_shim
from cni.ipam import IPAM
from cni.model import CNIRequest
from cni.netlink_wiring import NetlinkWiring
from cni.plugin import CNIPlugin
from cni.server import CNIServer
from nsutil import netns_path, sh
from test_cni_netlink import host, host_links, ipj  # noqa: F401  (host is a fixture)

pytestmark = pytest.mark.privileged

BLOCK = IPv4Network("198.19.8.0/26")


@pytest.fixture
def plugin(host, tmp_path):  # noqa: F811
    return CNIPlugin(ipam=IPAM(tmp_path / "ipam", [BLOCK]),
                     wiring=NetlinkWiring(host_netns=netns_path(host)), mtu=1400)


def req(command: str, netns: str, cid: str = "cid1", ifname: str = "eth0",
        network: str = "podnet", **conf) -> CNIRequest:
    return CNIRequest(command, cid, netns, ifname, {"K8S_POD_NAMESPACE": "default",
                                                    "K8S_POD_NAME": "web-0"},
                      "/usr/lib/cni", {"cniVersion": "1.0.0", "name": network,
                                       "type": "podroute", **conf})


def pod_links(ns: str) -> list[str]:
    return sorted(l["ifname"] for l in ipj(ns, "link", "show"))


def ping(ns: str, ip: str) -> bool:
    return sh("ping", "-c", "1", "-W", "2", ip, ns=ns, check=False, timeout=20).returncode == 0


async def check_ok(plugin: CNIPlugin, r: CNIRequest, result: dict) -> None:
    assert await plugin.handle(CNIRequest("CHECK", r.container_id, r.netns, r.ifname, r.args,
                                          r.path, {**r.config, "prevResult": result})) is None


@pytest.mark.parametrize("second_network", ["podnet", "othernet"])
async def test_two_attachments_of_one_container_coexist(host, plugin, make_netns,  # noqa: F811
                                                        second_network):
    """eth0 + net1 (Multus' secondary interface, on the same or another network): both wired,
    both CHECK, and the DEL of either leaves the other working."""
    pod = make_netns("cnip")
    ns = netns_path(pod)
    eth0, net1 = req("ADD", ns), req("ADD", ns, ifname="net1", network=second_network)
    r0 = await plugin.handle(eth0)
    r1 = await plugin.handle(net1)
    v0, v1 = r0["interfaces"][0]["name"], r1["interfaces"][0]["name"]
    assert v0 != v1 and sorted(host_links(host)) == sorted([v0, v1])
    assert pod_links(pod) == ["eth0", "lo", "net1"]
    ip0, ip1 = (r["ips"][0]["address"].split("/")[0] for r in (r0, r1))
    assert {(r["dst"], r["dev"]) for r in ipj(host, "route", "show", "proto", "90")} == \
        {(ip0, v0), (ip1, v1)}
    # each interface keeps its own gateway and default route (the first one wins)
    defaults = sorted((r.get("metric", 0), r["dev"]) for r in ipj(pod, "route", "show", "default"))
    assert [d for _, d in defaults] == ["eth0", "net1"]
    await check_ok(plugin, eth0, r0)
    await check_ok(plugin, net1, r1)
    assert ping(pod, "198.18.0.1")

    await plugin.handle(req("DEL", ns, ifname="net1", network=second_network))
    await plugin.reap()
    assert host_links(host) == [v0] and pod_links(pod) == ["eth0", "lo"]
    await check_ok(plugin, eth0, r0)
    assert ping(pod, "198.18.0.1")

    # and the other way round: DEL of eth0 leaves a re-added net1 alone
    r1 = await plugin.handle(net1)
    await plugin.handle(req("DEL", ns))
    await plugin.reap()
    assert host_links(host) == [r1["interfaces"][0]["name"]] and pod_links(pod) == ["lo", "net1"]
    await check_ok(plugin, net1, r1)
    assert ping(pod, "198.18.0.1")


async def test_netns_that_is_a_plain_file(host, plugin, tmp_path):  # noqa: F811
    """A bind mount that vanished leaves its mount point: ADD is a clear code 4, DEL is fine."""
    stale = tmp_path / "netns-gone"
    stale.write_bytes(b"")
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("ADD", str(stale)))
    assert ei.value.code == 4 and str(stale) in ei.value.msg
    assert "not a namespace file" in ei.value.msg and "0x6e736673" in ei.value.msg
    assert host_links(host) == [] and plugin.ipam.allocations() == {}
    assert await plugin.handle(req("DEL", str(stale))) is None


async def test_netns_of_another_type_is_code_4(host, plugin):  # noqa: F811
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("ADD", "/proc/self/ns/mnt"))
    assert ei.value.code == 4 and "another type" in ei.value.msg
    assert host_links(host) == [] and plugin.ipam.allocations() == {}


async def test_the_host_netns_is_never_a_pod_netns(host, plugin):  # noqa: F811
    """CNI_NETNS naming the agent's own namespace: ADD would put a default route in it, DEL
    would delete the node's CNI_IFNAME. Both refuse and leave the host as it was."""
    before_routes = ipj(host, "route", "show")
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("ADD", netns_path(host)))
    assert ei.value.code == 4 and "host's own network namespace" in ei.value.msg
    assert ipj(host, "route", "show") == before_routes and host_links(host) == []
    assert plugin.ipam.allocations() == {}
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("DEL", netns_path(host), ifname="dummy0"))
    assert "host's own network namespace" in ei.value.msg
    assert "dummy0" in {l["ifname"] for l in ipj(host, "link", "show")}


async def _shim(shim: Path, env: dict[str, str], conf: dict) -> tuple[int, dict | None]:
    proc = await asyncio.create_subprocess_exec(
        str(shim), env={"CNI_PATH": "/usr/lib/cni", **env}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), 30)
    return proc.returncode, (json.loads(out) if out.strip() else None)


async def test_status_add_check_del_through_the_installed_shim(host, make_netns,  # noqa: F811
                                                               tmp_path):
    """The installed plugin file against a live CNIServer + CNIPlugin: STATUS 0 when ready,
    50 with the reason when not and when no agent listens; ADD/CHECK/DEL of a 1.1.0 config,
    CHECK with the prevResult as libcni passes it."""
    reason: list[str | None] = ["the agent has not programmed its routes yet"]
    plugin = CNIPlugin(ipam=IPAM(tmp_path / "ipam", [BLOCK]),
                       wiring=NetlinkWiring(host_netns=netns_path(host)), mtu=1400,
                       readiness=lambda: reason[0])
    shim = install_shim(tmp_path / "bin")
    pod = make_netns("cnip")
    with tempfile.TemporaryDirectory(prefix="cnist-", dir="/tmp") as d:
        sock = Path(d) / "cni.sock"
        conf = {"cniVersion": "1.1.0", "name": "podnet", "type": "podroute",
                "agentSocket": str(sock), "agentTimeout": 20}
        server = CNIServer(sock, plugin)
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.ready.wait(), 5)
        try:
            rc, out = await _shim(shim, {"CNI_COMMAND": "STATUS"}, conf)
            assert rc == 1 and out["code"] == 50 and "not programmed its routes" in out["msg"]
            reason[0] = None
            assert await _shim(shim, {"CNI_COMMAND": "STATUS"}, conf) == (0, None)

            att = {"CNI_CONTAINERID": "live1", "CNI_NETNS": netns_path(pod), "CNI_IFNAME": "eth0"}
            rc, result = await _shim(shim, {"CNI_COMMAND": "ADD", **att}, conf)
            assert rc == 0 and result["cniVersion"] == "1.1.0"
            rc, out = await _shim(shim, {"CNI_COMMAND": "CHECK", **att},
                                  {**conf, "prevResult": result})
            assert (rc, out) == (0, None)
            rc, out = await _shim(shim, {"CNI_COMMAND": "CHECK", **att}, conf)
            assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"]
            rc, out = await _shim(shim, {"CNI_COMMAND": "ADD", **att, "CNI_IFNAME": "eth0:1"},
                                  conf)
            assert rc == 1 and out["code"] == 4 and "CNI_IFNAME" in out["msg"]
            assert await _shim(shim, {"CNI_COMMAND": "DEL", **att}, conf) == (0, None)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        rc, out = await _shim(shim, {"CNI_COMMAND": "STATUS"}, conf)
        assert rc == 1 and out["code"] == 50 and "not reachable" in out["msg"]
    await plugin.reap()
    assert host_links(host) == [] and plugin.ipam.allocations() == {}
