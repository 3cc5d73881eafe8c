"""Real wiring in throwaway namespaces: a "host" netns (the agent's view) and pod netns.

The plugin runs in-process with ``NetlinkWiring(host_netns=<host path>)`` (host side done by
a thread setns'd into the host netns), and once in a subprocess started with
``ip netns exec <host>`` using the production mode (``host_netns=None``).
"""
from __future__ import annotations

import errno
import json
import os
import textwrap
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from cni.errors import CNIError
from cni.ipam import IPAM
from cni.model import CNIRequest
from cni.netlink_wiring import NetlinkWiring
from cni.plugin import CNIPlugin, host_ifname_for
from nsutil import add_uplink, netns_path, sh

pytestmark = pytest.mark.privileged

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"}
BLOCK = IPv4Network("198.19.8.0/26")


def ipj(ns: str, *args: str):
    return json.loads(sh("ip", "-j", *args, ns=ns).stdout or "[]")


def sysctl(ns: str, path: str) -> str:
    return sh("cat", f"/proc/sys/net/ipv4/{path}", ns=ns).stdout.strip()


def host_links(ns: str, prefix: str = "prt") -> list[str]:
    return [l["ifname"] for l in ipj(ns, "link", "show") if l["ifname"].startswith(prefix)]


@pytest.fixture
def host(make_netns):
    ns = make_netns("cnih")
    add_uplink(ns)
    return ns


@pytest.fixture
def plugin(host, tmp_path):
    ipam = IPAM(tmp_path / "ipam", [BLOCK])
    return CNIPlugin(ipam=ipam, wiring=NetlinkWiring(host_netns=netns_path(host)), mtu=1400)


def req(command, pod_ns: str, cid: str = "cid1", pod: str = "web-0", ifname: str = "eth0",
        netns: str | None = None, **conf) -> CNIRequest:
    return CNIRequest(command, cid, netns if netns is not None else netns_path(pod_ns), ifname,
                      {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": pod}, "/usr/lib/cni",
                      {**CONF, **conf})


async def test_add_check_del_exact_wiring(host, plugin, make_netns):
    pod = make_netns("cnip")
    result = await plugin.handle(req("ADD", pod))
    veth = host_ifname_for("prt", "cid1", "podnet", "eth0")
    ip = result["ips"][0]["address"].split("/")[0]
    assert IPv4Address(ip) in BLOCK and result["ips"][0]["address"].endswith("/32")

    # pod side
    (eth0,) = [l for l in ipj(pod, "addr", "show") if l["ifname"] == "eth0"]
    assert eth0["mtu"] == 1400 and "UP" in eth0["flags"]
    assert [(a["local"], a["prefixlen"]) for a in eth0["addr_info"] if a["family"] == "inet"] == [(ip, 32)]
    assert eth0["address"] == result["interfaces"][1]["mac"]
    assert result["interfaces"][1]["sandbox"] == netns_path(pod)
    lo = [l for l in ipj(pod, "link", "show") if l["ifname"] == "lo"][0]
    assert "UP" in lo["flags"]
    routes = {(r["dst"], r.get("gateway"), r["dev"], r.get("scope")) for r in ipj(pod, "route", "show")}
    assert routes == {("169.254.1.1", None, "eth0", "link"), ("default", "169.254.1.1", "eth0", None)}

    # host side
    assert host_links(host) == [veth]
    assert len(veth) <= 15 and veth.startswith("prt")
    (hl,) = [l for l in ipj(host, "link", "show") if l["ifname"] == veth]
    assert "UP" in hl["flags"] and hl["mtu"] == 1400 and hl["address"] == result["interfaces"][0]["mac"]
    assert sysctl(host, f"conf/{veth}/proxy_arp") == "1"
    assert sysctl(host, f"neigh/{veth}/proxy_delay") == "0"
    assert sysctl(host, f"conf/{veth}/forwarding") == "1"
    (rt,) = ipj(host, "route", "show", "proto", "90")
    assert (rt["dst"], rt["dev"], rt["scope"]) == (ip, veth, "link")

    # CHECK passes, then detects the missing host route by name
    assert await plugin.handle(req("CHECK", pod, prevResult=result)) is None
    sh("ip", "route", "del", f"{ip}/32", "dev", veth, ns=host)
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", pod, prevResult=result))
    assert f"host route {ip}/32 dev {veth}" in ei.value.msg and "missing" in ei.value.msg
    # and a proxy_arp change
    sh("sh", "-c", f"echo 0 > /proc/sys/net/ipv4/conf/{veth}/proxy_arp", ns=host)
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", pod, prevResult=result))
    assert "proxy_arp=0" in ei.value.msg

    # DEL detaches at once (route gone, IP released, host end down in the retired group);
    # the reaper's one group deletion removes both ends; DEL again is fine
    assert await plugin.handle(req("DEL", pod)) is None
    assert ipj(host, "route", "show", "proto", "90") == []
    assert plugin.ipam.allocations() == {}
    (hl,) = [l for l in ipj(host, "-d", "link", "show") if l["ifname"] == veth]
    assert "UP" not in hl["flags"] and hl["group"] == str(0x70727464)
    assert await plugin.reap() is True
    assert host_links(host) == []
    assert [l["ifname"] for l in ipj(pod, "link", "show")] == ["lo"]
    assert await plugin.handle(req("DEL", pod)) is None
    assert await plugin.reap() is False


async def test_add_del_add_in_the_same_netns_before_reap(host, plugin, make_netns):
    """The runtime's retry after a failed sandbox set-up: ADD, DEL, ADD with the same netns and
    CNI_IFNAME while the first pair is only retired."""
    pod = make_netns("cnip")
    await plugin.handle(req("ADD", pod))
    await plugin.handle(req("DEL", pod))
    result = await plugin.handle(req("ADD", pod, cid="cid2"))
    veth = result["interfaces"][0]["name"]
    assert host_links(host) == [veth]
    assert [l["ifname"] for l in ipj(pod, "link", "show")] == ["lo", "eth0"]
    assert await plugin.handle(req("CHECK", pod, cid="cid2", prevResult=result)) is None
    assert await plugin.reap() is False


def test_rtnl_batch_attributes_each_error_to_its_request(host):
    """One sendmsg, four requests: each answer lands in its own slot (cni.rtnl.Rtnl.transact)."""
    from cni import rtnl
    from cni.netlink_wiring import run_in_netns
    with run_in_netns(netns_path(host), rtnl.Rtnl) as nl:
        idx = nl.link("dummy0").index
        seq = nl.next_seq
        res = nl.transact([
            rtnl.link_set(seq(), 1, up=True),
            rtnl.addr_add(seq(), 9999, IPv4Address("198.18.0.9"), 32),
            rtnl.route(seq(), "replace", IPv4Address("198.19.8.0"), 26, idx,
                       gateway=IPv4Address("198.18.9.1"), proto=90),
            rtnl.link_get(seq(), "dummy0"),
        ])
        assert res[0] is None
        assert isinstance(res[1], rtnl.RtnlError) and res[1].errno == errno.ENODEV
        assert isinstance(res[2], rtnl.RtnlError) and res[2].errno == errno.ENETUNREACH
        assert isinstance(res[3], rtnl.Link) and res[3].index == idx and res[3].up
        assert nl.link("nosuch0") is None
        with pytest.raises(rtnl.RtnlError) as ei:
            nl.call(rtnl.addr_add(seq(), 9999, IPv4Address("198.18.0.9"), 32))
        assert ei.value.errno == errno.ENODEV
    assert ipj(host, "route", "show", "proto", "90") == []


async def test_reap_deletes_a_burst_of_dels_in_one_request(host, plugin, make_netns):
    pods = [make_netns("cnip") for _ in range(5)]
    for i, pod in enumerate(pods):
        await plugin.handle(req("ADD", pod, cid=f"c{i}", pod=f"p{i}"))
    sh("ip", "link", "add", "keep0", "type", "veth", "peer", "name", "keep0p", ns=host)
    for i, pod in enumerate(pods):
        await plugin.handle(req("DEL", pod, cid=f"c{i}", pod=f"p{i}"))
    assert len(host_links(host)) == 5
    assert await plugin.reap() is True
    assert host_links(host) == []
    assert {"keep0", "keep0p", "dummy0"} <= {l["ifname"] for l in ipj(host, "link", "show")}
    for pod in pods:
        assert [l["ifname"] for l in ipj(pod, "link", "show")] == ["lo"]


async def test_repeat_add_is_idempotent(host, plugin, make_netns):
    pod = make_netns("cnip")
    first = await plugin.handle(req("ADD", pod))
    assert await plugin.handle(req("ADD", pod)) == first
    assert len(host_links(host)) == 1


async def test_ifname_taken_in_pod_rolls_back(host, plugin, make_netns):
    pod = make_netns("cnip")
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", ns=pod)
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("ADD", pod))
    assert "eth0" in ei.value.msg and "already exists" in ei.value.msg
    assert host_links(host) == []
    assert sorted(l["ifname"] for l in ipj(pod, "link", "show")) == ["eth0", "eth0p", "lo"]
    assert ipj(pod, "addr", "show", "dev", "eth0")[0]["addr_info"] == []
    assert plugin.ipam.allocations() == {}


async def test_missing_netns_is_not_created(host, plugin):
    missing = "/var/run/netns/prt-cnimissing-000000"
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("ADD", "", netns=missing))
    assert ei.value.code == 3 and missing in ei.value.msg
    assert not os.path.exists(missing)
    assert host_links(host) == [] and plugin.ipam.allocations() == {}
    assert await plugin.handle(req("DEL", "", netns=missing)) is None


class FailingRoute(NetlinkWiring):
    def add_host_route(self, ip, host_ifname, proto):
        raise CNIError(999, "injected")


async def test_failure_after_wiring_removes_both_ends(host, make_netns, tmp_path):
    pod = make_netns("cnip")
    plugin = CNIPlugin(ipam=IPAM(tmp_path / "i", [BLOCK]),
                       wiring=FailingRoute(host_netns=netns_path(host)), mtu=1400)
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("ADD", pod))
    assert "add_host_route" in ei.value.msg
    assert host_links(host) == []
    assert [l["ifname"] for l in ipj(pod, "link", "show")] == ["lo"]
    assert plugin.ipam.allocations() == {}


async def test_del_after_netns_deleted(host, plugin, make_netns):
    pod = make_netns("cnip")
    await plugin.handle(req("ADD", pod))
    sh("ip", "netns", "delete", pod)
    for _ in range(50):  # the veth dies asynchronously with the namespace
        if not host_links(host):
            break
        time.sleep(0.05)
    assert await plugin.handle(req("DEL", pod)) is None
    assert host_links(host) == [] and plugin.ipam.allocations() == {}
    assert ipj(host, "route", "show", "proto", "90") == []


async def test_two_pods_ping_each_other(host, plugin, make_netns):
    a, b = make_netns("cnia"), make_netns("cnib")
    ra = await plugin.handle(req("ADD", a, cid="ca", pod="a"))
    rb = await plugin.handle(req("ADD", b, cid="cb", pod="b"))
    ipa = ra["ips"][0]["address"].split("/")[0]
    ipb = rb["ips"][0]["address"].split("/")[0]
    p = sh("ping", "-c", "2", "-i", "0.2", "-W", "2", ipb, ns=a, check=False, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    p = sh("ping", "-c", "1", "-W", "2", ipa, ns=b, check=False, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    # the pod learned the gateway's MAC = its host veth's MAC (proxy ARP)
    neigh = {n["dst"]: n.get("lladdr") for n in ipj(a, "neigh", "show")}
    assert neigh.get("169.254.1.1") == ra["interfaces"][0]["mac"]


PRODUCTION = textwrap.dedent("""
    import asyncio, json, subprocess, sys
    from ipaddress import IPv4Network
    from pathlib import Path
    from cni.ipam import IPAM
    from cni.model import CNIRequest
    from cni.netlink_wiring import NetlinkWiring
    from cni.plugin import CNIPlugin
    from cni.server import CNIServer
    state, pods, shim = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    plugin = CNIPlugin(ipam=IPAM(Path(state) / "ipam", [IPv4Network("198.19.9.0/26")]),
                       wiring=NetlinkWiring(), mtu=1400)   # production mode: host = our netns
    conf = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"}
    args = lambda i: {"K8S_POD_NAMESPACE": "b", "K8S_POD_NAME": f"p{i}"}

    def run_cni(argv, cmd, cid, ns, ifname, conf_json):
        env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": ns, "CNI_IFNAME": ifname,
               "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=b;K8S_POD_NAME={cid}",
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        r = subprocess.run(argv, env=env, input=conf_json, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise SystemExit(f"{argv[-1]} {cmd} failed: {r.stdout} {r.stderr}")
        return r.stdout

    async def main():
        out = {"shim_add": [], "shim_del": []}
        checks = 0
        for i, ns in enumerate(pods):
            res = await plugin.handle(CNIRequest("ADD", f"c{i}", ns, "eth0", args(i), "", conf))
            await plugin.handle(CNIRequest("CHECK", f"c{i}", ns, "eth0", args(i), "",
                                           {**conf, "prevResult": res})); checks += 1
        for i, ns in enumerate(pods):
            await plugin.handle(CNIRequest("DEL", f"c{i}", ns, "eth0", args(i), "", conf))
        # end to end as the runtime sees it: exec the shim, socket, agent
        sock = Path(state) / "cni.sock"
        server = CNIServer(sock, plugin)
        task = asyncio.create_task(server.run())
        await server.ready.wait()
        sconf = json.dumps({**conf, "agentSocket": str(sock)})
        argv = ["/usr/bin/python3", "-I", "-S", shim]
        for cmd in ("ADD", "DEL"):
            for i, ns in enumerate(pods):
                out["shim_" + cmd.lower()].append(await asyncio.to_thread(
                    run_cni, argv, cmd, f"s{i}", ns, "eth1", sconf))
        task.cancel()
        await plugin.reap()  # the pairs retired by the DELs above
        out["checks"] = checks
        out["left"] = len(plugin.ipam.allocations())
        print(json.dumps(out))
    asyncio.run(main())
""")


def test_production_mode_add_check_del_leaves_nothing(host, make_netns, tmp_path):
    """ADD/CHECK/DEL with the host side in the process's own netns (as the agent runs), in the
    agent and end to end through the exec'd shim: every ADD through the shim returns the pod's
    address, and nothing is left (no IPAM record, host link or proto-90 route). The latency
    against ptp + host-local is bench/cni.py's (cni_add_p50, cni_del_p50, concurrent)."""
    n = 20
    pods = [make_netns(f"cnb{i}") for i in range(n)]
    proc = sh(PY, "-c", PRODUCTION, str(tmp_path), json.dumps([netns_path(p) for p in pods]),
              str(ROOT / "cni" / "shim.py"), ns=host, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["checks"] == n and out["left"] == 0
    ips = [json.loads(r)["ips"][0]["address"] for r in out["shim_add"]]
    assert len(set(ips)) == n and all(ip.startswith("198.19.9.") for ip in ips), ips
    assert out["shim_del"] == [""] * n   # DEL prints nothing on success
    assert host_links(host) == []
    assert ipj(host, "route", "show", "proto", "90") == []
