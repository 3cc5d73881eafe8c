from __future__ import annotations

import asyncio
import json
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from cni.errors import CNIError
from cni.fake_wiring import FakeWiring
from cni.ipam import IPAM
from cni.model import CNIRequest, WorkloadEndpoint
from cni.plugin import CNIPlugin, host_ifname_for
from cni.route_writer import WiringRoutes
from cni.server import CNIServer
from cni.wiring import GATEWAY

NS = "/var/run/netns/pod1"
ARGS = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}
CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"}


class Sink(WiringRoutes):
    """Felix's part on the fakes: the only writer of the host route (through the FakeWiring,
    as felix writes the kernel), recording what it was told and what it saw then."""

    def __init__(self, wiring: FakeWiring) -> None:
        super().__init__(wiring, 90)
        self.events: list[tuple[str, WorkloadEndpoint]] = []
        self.host_up_at_add: list[bool] = []

    async def workload_added(self, ep: WorkloadEndpoint) -> None:
        self.events.append(("added", ep))
        link = self.wiring.host_links.get(ep.host_ifname)  # told once the veth is wired
        self.host_up_at_add.append(link is not None and link.up)
        await super().workload_added(ep)

    async def workload_removed(self, ep: WorkloadEndpoint) -> None:
        self.events.append(("removed", ep))
        await super().workload_removed(ep)


@pytest.fixture
def env(tmp_path):
    wiring = FakeWiring()
    wiring.add_netns(NS)
    sink = Sink(wiring)
    ipam = IPAM(tmp_path / "ipam", [IPv4Network("198.19.7.0/26")],
                reserved=[IPv4Address("198.19.7.0")])
    plugin = CNIPlugin(ipam=ipam, wiring=wiring, mtu=1450, workloads=sink)
    return plugin, wiring, ipam, sink


def req(command="ADD", cid="c0ffee", netns=NS, ifname="eth0", args=ARGS, **conf):
    return CNIRequest(command, cid, netns, ifname, dict(args), "/usr/lib/cni", {**CONF, **conf})


def assert_nothing_left(wiring: FakeWiring, ipam: IPAM) -> None:
    assert wiring.host_links == {}
    assert wiring.pod_links == {}
    assert wiring.routes == set()
    assert ipam.allocations() == {}


async def test_add_allocates_and_wires(env):
    plugin, wiring, ipam, sink = env
    result = await plugin.handle(req())
    host = host_ifname_for("prt", "c0ffee", "podnet", "eth0")
    assert host.startswith("prt") and len(host) == 15 and not host.startswith("cali")
    ip = ipam.get("podnet.c0ffee.eth0").ip
    assert ip == IPv4Address("198.19.7.1")
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": host, "mac": wiring.host_links[host].mac},
                       {"name": "eth0", "mac": wiring.pod_links[(NS, "eth0")].mac, "sandbox": NS}],
        "ips": [{"address": "198.19.7.1/32", "gateway": "169.254.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }
    pod = wiring.pod_links[(NS, "eth0")]
    assert pod.mtu == 1450 and pod.up and pod.default_via == GATEWAY and pod.gateway_route
    assert [str(a) for a in pod.addresses] == ["198.19.7.1/32"]
    h = wiring.host_links[host]
    assert (h.proxy_arp, h.forwarding, h.up) == (1, 1, True)
    assert wiring.routes == {(ip, host, 90)}
    assert [e for e, _ in sink.events] == ["added"] and sink.host_up_at_add == [True]
    assert plugin.endpoints() == [WorkloadEndpoint("c0ffee", "eth0", host, ip, NS, "default", "web-0")]
    # the order Calico/FACTS prescribe: peer created directly in the pod netns
    assert wiring.calls[wiring.calls.index("create_veth_in_netns"):] == [
        "create_veth_in_netns", "configure_pod_side", "configure_host_side", "add_host_route"]


async def test_config_mtu_override_and_old_version_result(env):
    plugin, wiring, ipam, _ = env
    result = await plugin.handle(req(cniVersion="0.3.1", mtu=1400))
    assert wiring.pod_links[(NS, "eth0")].mtu == 1400
    assert result["cniVersion"] == "0.3.1" and result["ips"][0]["version"] == "4"


async def test_host_name_from_container_id_without_k8s_args(env):
    plugin, wiring, _, _ = env
    await plugin.handle(req(args={}))
    assert list(wiring.host_links) == [host_ifname_for("prt", "c0ffee", "podnet", "eth0")]


@pytest.mark.parametrize("bad", [{"name": ""}, {"mtu": 10}, {"mtu": "1500"}])
async def test_bad_config_is_code_7_and_nothing_left(env, bad):
    plugin, wiring, ipam, _ = env
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(**bad))
    assert ei.value.code == 7
    assert_nothing_left(wiring, ipam)


@pytest.mark.parametrize("step", ["create_veth_in_netns", "configure_pod_side",
                                  "configure_host_side", "add_host_route"])
async def test_fault_at_each_step_rolls_back_everything(env, step):
    plugin, wiring, ipam, sink = env
    wiring.fail_at(step)
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req())
    assert ei.value.code == 999
    assert step in ei.value.msg
    assert_nothing_left(wiring, ipam)
    kinds = [e for e, _ in sink.events]
    assert kinds in ([], ["added", "removed"])
    if step == "add_host_route":
        assert kinds == ["added", "removed"]
    # and the pod can be added afterwards
    await plugin.handle(req())
    assert len(ipam.allocations()) == 1 and len(wiring.host_links) == 1


async def test_sink_failure_rolls_back(env):
    plugin, wiring, ipam, sink = env

    def boom(ep):
        raise RuntimeError("felix is down")

    sink.workload_added = boom
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req())
    assert ei.value.code == 999 and "workload_added" in ei.value.msg
    assert_nothing_left(wiring, ipam)


async def test_missing_netns_is_code_3_and_nothing_left(env):
    plugin, wiring, ipam, _ = env
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(netns="/var/run/netns/gone"))
    assert ei.value.code == 3 and "/var/run/netns/gone" in ei.value.msg
    assert_nothing_left(wiring, ipam)


async def test_pod_ifname_taken_rolls_back(env):
    plugin, wiring, ipam, _ = env
    await plugin.handle(req())
    with pytest.raises(CNIError) as ei:  # another pod name, same netns and ifname
        await plugin.handle(req(cid="other", args={"K8S_POD_NAMESPACE": "x", "K8S_POD_NAME": "y"}))
    assert "eth0" in ei.value.msg and "already exists" in ei.value.msg
    assert len(ipam.allocations()) == 1 and len(wiring.host_links) == 1


async def test_repeated_add_is_idempotent_and_different_add_fails(env):
    plugin, wiring, ipam, _ = env
    first = await plugin.handle(req())
    assert await plugin.handle(req()) == first
    wiring.add_netns("/var/run/netns/pod2")
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(netns="/var/run/netns/pod2"))
    assert "netns" in ei.value.msg
    assert len(ipam.allocations()) == 1


async def test_stale_host_veth_from_dead_sandbox_is_replaced(env):
    """A veth with this attachment's name that no allocation owns (IPAM state lost)."""
    plugin, wiring, ipam, _ = env
    wiring.add_netns("/var/run/netns/old")
    host = host_ifname_for("prt", "c0ffee", "podnet", "eth0")
    wiring.create_veth_in_netns(host, "/var/run/netns/old", "eth0", 1500)
    await plugin.handle(req())
    assert wiring.host_links[host].peer == (NS, "eth0")


async def test_del_is_idempotent(env):
    plugin, wiring, ipam, sink = env
    await plugin.handle(req())
    host = next(iter(wiring.host_links))
    assert await plugin.handle(req("DEL")) is None
    # detached at once: no route, no IP, the host end down and retired; the pair goes at reap
    assert wiring.routes == set() and ipam.allocations() == {}
    assert wiring.host_links[host].retired and not wiring.host_links[host].up
    assert await plugin.reap() is True
    assert_nothing_left(wiring, ipam)
    assert [e for e, _ in sink.events] == ["added", "removed"]
    assert await plugin.handle(req("DEL")) is None
    assert await plugin.handle(req("DEL", netns="")) is None
    assert [e for e, _ in sink.events] == ["added", "removed"]


async def test_del_reaps_retired_pairs_by_itself_in_one_batch(env):
    plugin, wiring, ipam, _ = env
    plugin.reap_delay = 0.05
    for i in range(3):
        await plugin.handle(req(cid=f"c{i}", args={"K8S_POD_NAMESPACE": "d", "K8S_POD_NAME": f"p{i}"},
                                ifname=f"eth{i}"))
    for i in range(3):
        await plugin.handle(req("DEL", cid=f"c{i}", args={"K8S_POD_NAMESPACE": "d", "K8S_POD_NAME": f"p{i}"},
                                ifname=f"eth{i}"))
    assert len(wiring.host_links) == 3 and wiring.calls.count("reap_retired") == 0
    for _ in range(100):
        if not wiring.host_links:
            break
        await asyncio.sleep(0.01)
    assert_nothing_left(wiring, ipam)
    assert wiring.calls.count("reap_retired") == 1


async def test_add_again_before_reap_replaces_the_retired_veth(env):
    plugin, wiring, ipam, _ = env
    await plugin.handle(req())
    await plugin.handle(req("DEL"))
    result = await plugin.handle(req(cid="newsandbox"))
    host = result["interfaces"][0]["name"]
    assert not wiring.host_links[host].retired and wiring.host_links[host].up
    assert len(ipam.allocations()) == 1
    assert await plugin.reap() is False  # the retired pair was deleted by the ADD


async def test_del_after_netns_gone_releases_ip(env):
    plugin, wiring, ipam, _ = env
    await plugin.handle(req())
    wiring.remove_netns(NS)
    await plugin.handle(req("DEL"))
    assert_nothing_left(wiring, ipam)
    assert "retire_host_veth" in wiring.calls and await plugin.reap() is False


async def test_del_never_added_is_ok(env):
    plugin, wiring, ipam, sink = env
    await plugin.handle(req("DEL", cid="never"))
    assert sink.events == []


async def test_del_wiring_failure_still_releases_and_reports(env):
    plugin, wiring, ipam, _ = env
    await plugin.handle(req())
    wiring.fail_at("delete_pod_iface")
    wiring.fail_at("retire_host_veth")
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("DEL"))
    assert ei.value.code == 999 and "retire host veth" in ei.value.msg
    assert ipam.allocations() == {}
    await plugin.handle(req("DEL"))  # the runtime's retry finishes the job
    await plugin.reap()
    assert wiring.host_links == {}


async def test_check_ok_then_detects_missing_route(env):
    plugin, wiring, ipam, _ = env
    prev = await plugin.handle(req())
    assert await plugin.handle(req("CHECK", prevResult=prev)) is None
    wiring.routes.clear()
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult=prev))
    assert ei.value.code == 999
    assert "host route 198.19.7.1/32" in ei.value.msg and "missing" in ei.value.msg


async def test_check_detects_each_mismatch(env):
    plugin, wiring, ipam, _ = env
    prev = await plugin.handle(req())
    host = next(iter(wiring.host_links))
    wiring.host_links[host].proxy_arp = 0
    pod = wiring.pod_links[(NS, "eth0")]
    pod.mtu = 1500
    pod.default_via = None
    pod.addresses.clear()
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult=prev))
    msg = ei.value.msg
    for needle in ("proxy_arp=0", "MTU 1500", "default route", "lacks address 198.19.7.1/32"):
        assert needle in msg


async def test_check_without_allocation_and_prev_result(env):
    plugin, wiring, ipam, _ = env
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult={}))
    assert "no IP allocation" in ei.value.msg
    result = await plugin.handle(req())
    prev = {**result, "ips": [{"address": "198.19.7.9/32"}]}
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult=prev))
    assert "prevResult ips" in ei.value.msg and "198.19.7.1/32" in ei.value.msg


async def test_endpoints_survive_agent_restart(env, tmp_path):
    plugin, wiring, ipam, _ = env
    await plugin.handle(req())
    await plugin.handle(req(cid="second", netns=wiring.add_netns("/var/run/netns/p2"),
                            args={"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-1"}))
    again = CNIPlugin(ipam=IPAM(tmp_path / "ipam", [IPv4Network("198.19.7.0/26")]),
                      wiring=wiring, mtu=1450)
    assert again.endpoints() == plugin.endpoints() and len(again.endpoints()) == 2


def test_rejects_calico_prefix():
    with pytest.raises(ValueError):
        CNIPlugin(ipam=None, wiring=FakeWiring(), mtu=1500, host_prefix="cali")


# -- server ------------------------------------------------------------------------------------

async def _roundtrip(path: Path, payload: bytes) -> dict:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(payload)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return json.loads(line)


class Crashy:
    async def handle(self, req):
        if req.command == "CHECK":
            raise CNIError(7, "nope", "d")
        raise ZeroDivisionError("boom")


async def test_server_end_to_end_and_survives_handler_crash(env):
    plugin, wiring, ipam, _ = env
    with tempfile.TemporaryDirectory(prefix="cnisrv-", dir="/tmp") as d:
        path = Path(d) / "cni.sock"
        path.write_bytes(b"")  # not a socket: refuse to remove it
        server = CNIServer(path, plugin)
        with pytest.raises(RuntimeError):
            await server.run()
        path.unlink()
        import socket
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()  # leaves a stale socket file behind
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.ready.wait(), 5)
        assert (path.stat().st_mode & 0o777) == 0o600
        resp = await _roundtrip(path, json.dumps(req().to_wire()).encode() + b"\n")
        assert resp["ok"] is True and resp["result"]["ips"][0]["address"] == "198.19.7.1/32"
        resp = await _roundtrip(path, b"{broken\n")
        assert resp["ok"] is False and resp["code"] == 6
        resp = await _roundtrip(path, json.dumps({**req().to_wire(), "command": "FOO"}).encode() + b"\n")
        assert resp["code"] == 4
        resp = await _roundtrip(path, json.dumps(req("DEL").to_wire()).encode() + b"\n")
        assert resp == {"ok": True, "result": None}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not path.exists()

        server = CNIServer(path, Crashy())
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.ready.wait(), 5)
        resp = await _roundtrip(path, json.dumps(req().to_wire()).encode() + b"\n")
        assert resp["ok"] is False and resp["code"] == 999 and "boom" in resp["msg"]
        resp = await _roundtrip(path, json.dumps(req("CHECK").to_wire()).encode() + b"\n")
        assert resp == {"ok": False, "code": 7, "msg": "nope", "details": "d"}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_shim_against_real_server(env):
    """The shim subprocess talking to CNIServer + CNIPlugin on FakeWiring."""
    plugin, wiring, ipam, _ = env
    with tempfile.TemporaryDirectory(prefix="cnisrv-", dir="/tmp") as d:
        path = Path(d) / "cni.sock"
        server = CNIServer(path, plugin)
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.ready.wait(), 5)
        shim = Path(__file__).resolve().parents[2] / "cni" / "shim.py"
        envv = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": NS,
                "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
                "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"}
        conf = json.dumps({**CONF, "agentSocket": str(path)}).encode()
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-I", "-S", str(shim), env=envv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(conf), 20)
        assert proc.returncode == 0
        assert json.loads(out)["ips"][0]["address"] == "198.19.7.1/32"
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-I", "-S", str(shim), env={**envv, "CNI_NETNS": "/var/run/netns/zz",
                                                            "CNI_CONTAINERID": "other"},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(conf), 20)
        assert proc.returncode == 1 and json.loads(out)["code"] == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
