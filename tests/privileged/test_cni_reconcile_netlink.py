"""The restart reconciler and CNI GC on real wiring, in throwaway namespaces: the broken
states a kill -9 mid-ADD leaves are made by hand with iproute2 (an IP with no veth; a veth
down with no route; our veth with no record), then one reconcile pass must leave only whole,
working pods. The host side runs in its own netns (``NetlinkWiring(host_netns=...)``)."""
from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from cni.ipam import IPAM
from cni.model import CNIRequest
from cni.netlink_wiring import NetlinkWiring
from cni.plugin import CNIPlugin
from cni.result import build as build_result
from cni.reconcile import FINISHED, KEPT, ROLLED_BACK, Reconciler
from nsutil import add_uplink, netns_path, sh

pytestmark = pytest.mark.privileged

CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"}
BLOCK = IPv4Network("198.19.9.0/26")


def ipj(ns: str, *args: str):
    return json.loads(sh("ip", "-j", *args, ns=ns).stdout or "[]")


def links(ns: str) -> list[str]:
    return sorted(l["ifname"] for l in ipj(ns, "link", "show"))


def proto90(ns: str) -> set[tuple[str, str]]:
    return {(r["dst"], r["dev"]) for r in ipj(ns, "route", "show", "proto", "90")}


@pytest.fixture
def host(make_netns):
    ns = make_netns("rech")
    add_uplink(ns)
    return ns


@pytest.fixture
def plugin(host, tmp_path):
    ipam = IPAM(tmp_path / "ipam", [BLOCK])
    return CNIPlugin(ipam=ipam, wiring=NetlinkWiring(host_netns=netns_path(host)), mtu=1400,
                     reap_delay=0.0)


def req(command: str, netns: str, cid: str, pod: str, **conf) -> CNIRequest:
    return CNIRequest(command, cid, netns, "eth0", {"K8S_POD_NAMESPACE": "default",
                                                    "K8S_POD_NAME": pod}, "/opt/cni/bin",
                      {**CONF, **conf})


async def check(plugin: CNIPlugin, netns: str, cid: str, pod: str) -> None:
    """CHECK with the prevResult a runtime would hold, built from the interfaces as they are
    (not from a repeated ADD, which would repair what it finds and hide a reconcile miss)."""
    alloc = plugin.ipam.get(f"podnet.{cid}.eth0")
    host_ifname = alloc.attrs["host_ifname"]
    host, pod_if = plugin.wiring.host_veth(host_ifname), plugin.wiring.pod_iface(netns, "eth0")
    assert host is not None and pod_if is not None, f"{cid}: host veth or pod interface missing"
    prev = build_result(CONF["cniVersion"], host_ifname, host.mac, "eth0", pod_if.mac, netns, alloc.ip)
    return await plugin.handle(req("CHECK", netns, cid, pod, prevResult=prev))


def record(plugin: CNIPlugin, cid: str, netns: str, host_ifname: str) -> IPv4Address:
    """The IPAM claim an ADD makes first (a kill -9 right after it leaves only this)."""
    attrs = {"network": "podnet", "container_id": cid, "ifname": "eth0", "netns": netns,
             "host_ifname": host_ifname, "mtu": 1400, "pod_namespace": None, "pod_name": None}
    return plugin.ipam.claim(f"podnet.{cid}.eth0", attrs)[0].ip


async def test_reconcile_repairs_the_three_broken_states(host, plugin, make_netns):
    pod_a, pod_b, ghost = make_netns("reca"), make_netns("recb"), make_netns("recg")
    # 1. an IP with no veth
    ip_a = record(plugin, "cida", netns_path(pod_a), "prtreca0000001")
    # 2. a veth down with no route (killed after the pod side, before the host side)
    ip_b = record(plugin, "cidb", netns_path(pod_b), "prtrecb0000001")
    sh("ip", "link", "add", "prtrecb0000001", "mtu", "1400", "type", "veth", "peer", "name",
       "eth0", "mtu", "1400", "netns", pod_b, ns=host)
    sh("ip", "addr", "add", f"{ip_b}/32", "dev", "eth0", ns=pod_b)
    sh("ip", "link", "set", "eth0", "up", ns=pod_b)
    sh("ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link", ns=pod_b)
    sh("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0", ns=pod_b)
    # 3. our veth with no record (its pod end in a netns nobody knows)
    sh("ip", "link", "add", "prtorphan00001", "type", "veth", "peer", "name", "eth0",
       "netns", ghost, ns=host)
    # and an IP whose netns is gone: nobody owns it
    ip_c = record(plugin, "cidc", "/var/run/netns/prt-recgone-000000", "prtrecc0000001")
    assert "prtrecb0000001" in links(host) and proto90(host) == set()

    report = await Reconciler(plugin).run()

    assert report.handles(FINISHED) == ["podnet.cida.eth0", "podnet.cidb.eth0"]
    assert report.handles(ROLLED_BACK) == ["podnet.cidc.eth0"]
    assert report.orphan_veths == ("prtorphan00001",) and report.errors == ()
    assert links(host) == ["dummy0", "dummy0p", "lo", "prtreca0000001", "prtrecb0000001"]
    assert links(ghost) == ["lo"]
    assert proto90(host) == {(str(ip_a), "prtreca0000001"), (str(ip_b), "prtrecb0000001")}
    assert set(plugin.ipam.allocations()) == {"podnet.cida.eth0", "podnet.cidb.eth0"}
    assert ip_c not in {a.ip for a in plugin.ipam.allocations().values()}
    for cid, pod in (("cida", pod_a), ("cidb", pod_b)):
        assert await check(plugin, netns_path(pod), cid, "ignored") is None
    p = sh("ping", "-c", "2", "-i", "0.2", "-W", "2", str(ip_b), ns=pod_a, check=False, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr

    again = await Reconciler(plugin).run()  # a second pass finds nothing to do
    assert again.handles(KEPT) == ["podnet.cida.eth0", "podnet.cidb.eth0"]
    assert again.orphan_veths == () and again.handles(FINISHED) == []


async def test_retried_add_repairs_a_broken_pod(host, plugin, make_netns):
    pod = make_netns("recr")
    first = await plugin.handle(req("ADD", netns_path(pod), "cid1", "web-0"))
    veth, ip = first["interfaces"][0]["name"], first["ips"][0]["address"].split("/")[0]
    sh("ip", "route", "del", f"{ip}/32", "dev", veth, ns=host)
    sh("ip", "link", "set", veth, "down", ns=host)
    again = await plugin.handle(req("ADD", netns_path(pod), "cid1", "web-0"))
    assert again["ips"] == first["ips"] and again["interfaces"] == first["interfaces"]
    assert proto90(host) == {(ip, veth)}
    assert await check(plugin, netns_path(pod), "cid1", "web-0") is None


async def test_gc_removes_attachments_the_runtime_no_longer_lists(host, plugin, make_netns):
    pod1, pod2 = make_netns("gc1"), make_netns("gc2")
    r1 = await plugin.handle(req("ADD", netns_path(pod1), "cid1", "web-1"))
    r2 = await plugin.handle(req("ADD", netns_path(pod2), "cid2", "web-2"))
    gc = CNIRequest("GC", "", "", "", {}, "/opt/cni/bin",
                    {**CONF, "cniVersion": "1.1.0",
                     "cni.dev/valid-attachments": [{"containerID": "cid1", "ifname": "eth0"}]})
    assert await plugin.handle(gc) is None
    await plugin.reap()
    v1, v2 = r1["interfaces"][0]["name"], r2["interfaces"][0]["name"]
    assert v2 not in links(host) and v1 in links(host)
    assert links(pod2) == ["lo"]
    assert proto90(host) == {(r1["ips"][0]["address"].split("/")[0], v1)}
    assert set(plugin.ipam.allocations()) == {"podnet.cid1.eth0"}
    assert await check(plugin, netns_path(pod1), "cid1", "web-1") is None


def test_host_route_exists_is_exact_among_many_routes(host):
    """The kernel-filtered dump answers for exactly ``ip/32 dev veth scope link proto 90`` in
    the main table, whatever else is there."""
    w = NetlinkWiring(host_netns=netns_path(host))
    sh("ip", "link", "add", "prtrt00000001", "type", "veth", "peer", "name", "prtrt0000000p",
       ns=host)
    for dev in ("prtrt00000001", "prtrt0000000p"):
        sh("ip", "link", "set", dev, "up", ns=host)
    batch = "\n".join(f"route add 198.18.{1 + i // 250}.{i % 250}/32 dev dummy0 proto 186"
                      for i in range(3000))
    sh("ip", "-batch", "-", ns=host, input=batch + "\n")
    for args in (["198.19.9.5/32", "dev", "prtrt00000001", "scope", "link", "proto", "90"],
                 ["198.19.9.6/32", "dev", "prtrt0000000p", "scope", "link", "proto", "90"],
                 ["198.19.9.7/32", "dev", "prtrt00000001", "scope", "link", "proto", "91"],
                 ["198.19.9.8/32", "dev", "prtrt00000001", "scope", "link", "proto", "90",
                  "table", "100"],
                 ["198.19.9.9/32", "dev", "prtrt00000001", "scope", "global", "proto", "90"]):
        sh("ip", "route", "add", *args, ns=host)
    found = {ip: w.host_route_exists(IPv4Address(ip), "prtrt00000001", 90)
             for ip in ("198.19.9.5", "198.19.9.6", "198.19.9.7", "198.19.9.8", "198.19.9.9",
                        "198.18.1.1")}
    assert found == {"198.19.9.5": True, "198.19.9.6": False, "198.19.9.7": False,
                     "198.19.9.8": False, "198.19.9.9": False, "198.18.1.1": False}
    assert w.host_route_exists(IPv4Address("198.19.9.5"), "prtnosuchdev1", 90) is False
