"""Attachments keyed as the CNI spec keys them, request validation, and the veth reaper.

Issue 14 items 2 (a second attachment destroyed the first), 3 (container IDs and interface
names reached the kernel and the log unvalidated) and 5 (the reaper lost its last batch).
"""
from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from cni.errors import CNIError
from cni.fake_wiring import FakeWiring
from cni.ipam import IPAM
from cni.model import CNIRequest
from cni.plugin import CNIPlugin
from cni.server import CNIServer

NS = "/var/run/netns/pod1"
ARGS = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}
CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"}


@pytest.fixture
def env(tmp_path):
    wiring = FakeWiring()
    wiring.add_netns(NS)
    ipam = IPAM(tmp_path / "ipam", [IPv4Network("198.19.7.0/26")])
    return CNIPlugin(ipam=ipam, wiring=wiring, mtu=1450), wiring, ipam


def req(command="ADD", cid="c0ffee", netns=NS, ifname="eth0", args=ARGS, **conf):
    return CNIRequest(command, cid, netns, ifname, dict(args), "/usr/lib/cni", {**CONF, **conf})


def veth_of(wiring: FakeWiring, netns: str, ifname: str) -> str:
    return wiring.pod_links[(netns, ifname)].host


async def assert_checks(plugin: CNIPlugin, r: CNIRequest, result: dict) -> None:
    assert await plugin.handle(CNIRequest("CHECK", r.container_id, r.netns, r.ifname, r.args,
                                          r.path, {**r.config, "prevResult": result})) is None


# -- item 2: attachments ---------------------------------------------------------------------

async def test_second_ifname_of_one_container_leaves_the_first_intact(env):
    """Multus: the same container gets net1 after eth0 (same network here)."""
    plugin, wiring, ipam = env
    eth0, net1 = req(), req(ifname="net1")
    r0 = await plugin.handle(eth0)
    r1 = await plugin.handle(net1)
    v0, v1 = veth_of(wiring, NS, "eth0"), veth_of(wiring, NS, "net1")
    assert v0 != v1 and r0["interfaces"][0]["name"] == v0 and r1["interfaces"][0]["name"] == v1
    ip0, ip1 = ipam.get("podnet.c0ffee.eth0").ip, ipam.get("podnet.c0ffee.net1").ip
    assert wiring.routes == {(ip0, v0, 90), (ip1, v1, 90)}
    await assert_checks(plugin, eth0, r0)
    await assert_checks(plugin, net1, r1)
    await plugin.handle(req("DEL", ifname="net1"))
    await plugin.reap()
    assert set(wiring.pod_links) == {(NS, "eth0")} and set(wiring.host_links) == {v0}
    assert wiring.routes == {(ip0, v0, 90)}
    await assert_checks(plugin, eth0, r0)


async def test_two_networks_of_one_container_are_independent(env):
    plugin, wiring, ipam = env
    a, b = req(), req(ifname="net1", name="othernet")
    ra = await plugin.handle(a)
    rb = await plugin.handle(b)
    assert ra["interfaces"][0]["name"] != rb["interfaces"][0]["name"]
    assert set(ipam.allocations()) == {"podnet.c0ffee.eth0", "othernet.c0ffee.net1"}
    await plugin.handle(req("DEL"))  # DEL of the first network leaves the second
    await plugin.reap()
    assert set(wiring.pod_links) == {(NS, "net1")}
    await assert_checks(plugin, b, rb)


async def test_same_ifname_on_a_second_network_fails_and_leaves_the_first(env):
    """Both networks want eth0 in the one netns: the second ADD fails (the pod name is taken)
    instead of deleting the first attachment's veth as "stale"."""
    plugin, wiring, ipam = env
    first = req()
    r0 = await plugin.handle(first)
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(name="othernet"))
    assert "eth0" in ei.value.msg and "already exists" in ei.value.msg
    assert set(ipam.allocations()) == {"podnet.c0ffee.eth0"}
    await assert_checks(plugin, first, r0)


async def test_new_sandbox_of_a_live_pod_does_not_take_the_old_sandboxes_veth(env):
    """Same pod name, new container ID, while the old sandbox is still attached (its DEL not
    yet run): both attachments stay wired."""
    plugin, wiring, ipam = env
    old = req(cid="sandbox1")
    r_old = await plugin.handle(old)
    wiring.add_netns("/var/run/netns/pod2")
    await plugin.handle(req(cid="sandbox2", netns="/var/run/netns/pod2"))
    assert len(wiring.host_links) == 2 and len(ipam.allocations()) == 2
    await assert_checks(plugin, old, r_old)


async def test_a_name_collision_never_deletes_a_veth_another_attachment_owns(env):
    """If two attachments ever map to one host name (a hash collision), the second ADD fails
    with the owner named; the first attachment is untouched."""
    plugin, wiring, ipam = env
    plugin.host_ifname = lambda r: "prtcollision0"  # type: ignore[method-assign]
    first = req()
    r0 = await plugin.handle(first)
    wiring.add_netns("/var/run/netns/pod2")
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(cid="other", netns="/var/run/netns/pod2"))
    assert "prtcollision0" in ei.value.msg and "podnet.c0ffee.eth0" in ei.value.msg
    assert set(ipam.allocations()) == {"podnet.c0ffee.eth0"}
    assert "delete_host_veth" not in wiring.calls
    await assert_checks(plugin, first, r0)


async def test_host_names_are_short_prefixed_and_distinct_per_attachment(env):
    plugin, wiring, _ = env
    names = set()
    for cid in ("a", "b"):
        for net in ("n1", "n2"):
            for ifname in ("eth0", "net1"):
                names.add(plugin.host_ifname(req(cid=cid, ifname=ifname, name=net)))
    assert len(names) == 8
    assert all(n.startswith("prt") and len(n) <= 15 for n in names)
    # the pod name plays no part: a runtime's ID is the key (CNI spec "Attachment Parameters")
    assert plugin.host_ifname(req(args={})) == plugin.host_ifname(req())


# -- item 3: validation ----------------------------------------------------------------------

BAD_IDS = ["../../etc/passwd", "abc\ndef", "abc\x01def", "a" * 1000, "-abc", ".abc", "ab c",
           "ab/c", "abc\n", "\u00e9abc", "abc\x00"]
BAD_IFNAMES = ["eth0:1", "eth/0", "eth 0", ".", "..", "a" * 16, "eth0\n", "\u00e9" * 8, "et\x01h"]


@pytest.mark.parametrize("cid", BAD_IDS)
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
async def test_bad_container_id_is_code_4_before_anything_happens(env, cid, command, caplog):
    plugin, wiring, ipam = env
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(command, cid=cid))
    assert ei.value.code == 4 and "CNI_CONTAINERID" in ei.value.msg
    assert "\n" not in ei.value.msg and len(ei.value.msg) < 200
    assert wiring.calls == [] and ipam.allocations() == {}
    assert not [r for r in caplog.records if cid in r.getMessage() or "\n" in r.getMessage()]


@pytest.mark.parametrize("ifname", BAD_IFNAMES)
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
async def test_bad_ifname_is_code_4_before_anything_happens(env, ifname, command):
    plugin, wiring, ipam = env
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(command, ifname=ifname))
    assert ei.value.code == 4 and "CNI_IFNAME" in ei.value.msg and "\n" not in ei.value.msg
    assert wiring.calls == [] and ipam.allocations() == {}


async def test_longest_valid_id_and_ifname_work(env):
    plugin, wiring, ipam = env
    cid = "a" + "b-._" * 63 + "z"  # 254 characters
    result = await plugin.handle(req(cid=cid[:255], ifname="e" * 15))
    assert result["interfaces"][1]["name"] == "e" * 15
    await plugin.handle(req("DEL", cid=cid[:255], ifname="e" * 15))
    assert ipam.allocations() == {}


@pytest.mark.parametrize("name", ["a b", "net/1", "-x", "x\ny"])
async def test_bad_network_name_is_code_7(env, name):
    plugin, wiring, ipam = env
    for command in ("ADD", "DEL"):
        with pytest.raises(CNIError) as ei:
            await plugin.handle(req(command, name=name))
        assert ei.value.code == 7 and "\n" not in ei.value.msg
    assert wiring.calls == [] and ipam.allocations() == {}


@pytest.mark.parametrize("netns", ["relative/path", "/var/run/netns/x\ny"])
async def test_bad_netns_path_is_code_4(env, netns):
    plugin, wiring, ipam = env
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(netns=netns))
    assert ei.value.code == 4 and "CNI_NETNS" in ei.value.msg
    assert wiring.calls == [] and ipam.allocations() == {}


async def test_server_rejects_bad_ids_without_logging_them(env, caplog):
    """Over the socket, as the shim sends it: the bad value never reaches a log line."""
    plugin, wiring, ipam = env
    caplog.set_level(logging.DEBUG)
    with tempfile.TemporaryDirectory(prefix="cnisrv-", dir="/tmp") as d:
        path = Path(d) / "cni.sock"
        server = CNIServer(path, plugin)
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.ready.wait(), 5)
        try:
            for cid, ifname in [("evil\nFAKE LOG LINE", "eth0"), ("a" * 1000, "eth0"),
                                ("../../etc/passwd", "eth0"), ("c0ffee", "eth0:1")]:
                reader, writer = await asyncio.open_unix_connection(str(path))
                writer.write(json.dumps({**req(cid="x").to_wire(), "containerID": cid,
                                         "ifName": ifname}).encode() + b"\n")
                await writer.drain()
                resp = json.loads(await asyncio.wait_for(reader.readline(), 10))
                writer.close()
                assert resp["ok"] is False and resp["code"] == 4, resp
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert wiring.calls == [] and ipam.allocations() == {}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "FAKE LOG LINE" not in text and "etc/passwd" not in text and "a" * 100 not in text


# -- item 5: the reaper ----------------------------------------------------------------------

class BlockingReap(FakeWiring):
    """The first reap_retired deletes the group, then its worker thread stalls until
    ``release`` is set (the kernel has answered, the task has not finished yet)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self._block_once = True

    def reap_retired(self) -> bool:
        done = super().reap_retired()
        if self._block_once:
            self._block_once = False
            self.entered.set()
            if not self.release.wait(10):
                raise RuntimeError("test never released the reap")
        return done


async def _wait_for(cond, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if cond():
            return True
        await asyncio.sleep(0.01)
    return cond()


async def test_del_during_an_inflight_reap_is_reaped_too(tmp_path):
    wiring = BlockingReap()
    for ns in ("/var/run/netns/a", "/var/run/netns/b"):
        wiring.add_netns(ns)
    plugin = CNIPlugin(ipam=IPAM(tmp_path / "ipam", [IPv4Network("198.19.7.0/26")]),
                       wiring=wiring, mtu=1450, reap_delay=0.0)
    pod = {c: {"K8S_POD_NAMESPACE": "d", "K8S_POD_NAME": c} for c in ("a", "b", "b2")}
    await plugin.handle(req(cid="a", netns="/var/run/netns/a", args=pod["a"]))
    await plugin.handle(req(cid="b", netns="/var/run/netns/b", args=pod["b"]))
    await plugin.handle(req("DEL", cid="a", netns="/var/run/netns/a", args=pod["a"]))
    assert await asyncio.to_thread(wiring.entered.wait, 5)  # the reap of a is in flight
    await plugin.handle(req("DEL", cid="b", netns="/var/run/netns/b", args=pod["b"]))
    wiring.release.set()
    assert await _wait_for(lambda: not wiring.host_links), \
        f"retired veths left behind: {sorted(wiring.host_links)}"
    # the pod end went with its pair: the netns can take eth0 again
    assert wiring.pod_links == {}
    await plugin.handle(req(cid="b2", netns="/var/run/netns/b", args=pod["b2"]))
    assert (("/var/run/netns/b", "eth0")) in wiring.pod_links


async def test_reaper_survives_a_failed_reap_and_retries_on_the_next_del(env):
    plugin, wiring, ipam = env
    plugin.reap_delay = 0.0
    wiring.add_netns("/var/run/netns/p2")
    two = {"K8S_POD_NAMESPACE": "d", "K8S_POD_NAME": "two"}
    await plugin.handle(req())
    await plugin.handle(req(cid="two", netns="/var/run/netns/p2", args=two))
    wiring.fail_at("reap_retired")
    await plugin.handle(req("DEL"))
    assert await _wait_for(lambda: "reap_retired" in wiring.calls)
    await plugin.handle(req("DEL", cid="two", netns="/var/run/netns/p2", args=two))
    assert await _wait_for(lambda: not wiring.host_links)


def test_validation_rejects_id_over_limit_and_accepts_at_limit():
    from cni import validate
    validate.container_id("a" * validate.MAX_CONTAINER_ID)
    with pytest.raises(CNIError) as ei:
        validate.container_id("a" * (validate.MAX_CONTAINER_ID + 1))
    assert ei.value.code == 4 and str(validate.MAX_CONTAINER_ID) in ei.value.msg



async def test_attachments_made_under_the_old_host_name_still_work(env):
    """An allocation recorded before the naming change keeps its veth name for a repeated
    ADD, CHECK and DEL (the name is read from the allocation, not recomputed)."""
    plugin, wiring, ipam = env
    plugin.host_ifname = lambda r: "prtold00000000"  # type: ignore[method-assign]
    first = await plugin.handle(req())
    del plugin.host_ifname  # back to the (container ID, network, ifname) name
    assert plugin.host_ifname(req()) != "prtold00000000"
    assert await plugin.handle(req()) == first
    await assert_checks(plugin, req(), first)
    await plugin.handle(req("DEL"))
    await plugin.reap()
    assert wiring.host_links == {} and ipam.allocations() == {}
