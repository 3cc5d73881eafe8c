"""CNI 1.1 in the plugin and the shim: VERSION, STATUS, stricter CHECK, not-a-netns paths.

Issue 15 "CNI 1.1 and stricter checks" (GC is tested with the reconcile work).
"""
from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings, strategies as st

from cni import shim, validate
from cni.errors import CNIError
from cni.fake_wiring import FakeWiring
from cni.ipam import IPAM
from cni.model import CNIRequest
from cni.plugin import SUPPORTED_VERSIONS, CNIPlugin
from test_cni_shim import FakeAgent, base_env, conf, run_shim, sockdir  # noqa: F401

NS = "/var/run/netns/pod1"
CONF = {"cniVersion": "1.1.0", "name": "podnet", "type": "podroute"}


@pytest.fixture
def env(tmp_path):
    wiring = FakeWiring()
    wiring.add_netns(NS)
    ipam = IPAM(tmp_path / "ipam", [IPv4Network("198.19.7.0/30")],
                reserved=[IPv4Address("198.19.7.0")])
    return CNIPlugin(ipam=ipam, wiring=wiring, mtu=1450), wiring, ipam


def req(command="ADD", cid="c0ffee", netns=NS, ifname="eth0", **conf):
    return CNIRequest(command, cid, netns, ifname, {}, "/usr/lib/cni", {**CONF, **conf})


def status_req(**conf):
    return CNIRequest("STATUS", "", "", "", {}, "/usr/lib/cni", {**CONF, **conf})


# -- versions -----------------------------------------------------------------------------------

def test_shim_and_agent_advertise_the_same_versions():
    assert shim.SUPPORTED_VERSIONS == list(SUPPORTED_VERSIONS)
    assert "1.1.0" in SUPPORTED_VERSIONS and shim.SPEC_VERSION == "1.1.0"
    assert {"0.3.0", "0.3.1", "0.4.0", "1.0.0"} <= set(SUPPORTED_VERSIONS)


async def test_add_with_a_1_1_0_config_gives_a_1_1_0_result(env):
    plugin, _, _ = env
    result = await plugin.handle(req())
    assert result["cniVersion"] == "1.1.0" and "version" not in result["ips"][0]


# -- STATUS ---------------------------------------------------------------------------------------

async def test_status_ok_when_ready(env):
    plugin, wiring, _ = env
    plugin.readiness = lambda: None
    assert await plugin.handle(status_req()) is None
    assert wiring.calls == []  # STATUS reads, never wires


async def test_status_is_50_with_the_agents_reason(env):
    plugin, _, _ = env
    plugin.readiness = lambda: "the agent is shutting down"
    with pytest.raises(CNIError) as ei:
        await plugin.handle(status_req())
    assert ei.value.code == 50 and "shutting down" in ei.value.msg


async def test_status_is_50_when_the_readiness_check_itself_fails(env):
    plugin, _, _ = env

    def broken():
        raise RuntimeError("boom")

    plugin.readiness = broken
    with pytest.raises(CNIError) as ei:
        await plugin.handle(status_req())
    assert ei.value.code == 50 and "boom" in ei.value.msg


async def test_status_is_50_when_ipam_is_full_and_0_again_after_a_del(env):
    plugin, wiring, ipam = env
    for i in range(3):  # a /30 with one reserved address holds three pods
        wiring.add_netns(f"/var/run/netns/p{i}")
        await plugin.handle(req(cid=f"c{i}", netns=f"/var/run/netns/p{i}"))
    assert ipam.free_count() == 0
    with pytest.raises(CNIError) as ei:
        await plugin.handle(status_req())
    assert ei.value.code == 50 and "198.19.7.0/30" in ei.value.msg
    await plugin.handle(req("DEL", cid="c1", netns="/var/run/netns/p1"))
    assert await plugin.handle(status_req()) is None


async def test_status_is_50_when_ipam_state_is_unreadable(env, tmp_path):
    plugin, _, ipam = env
    (tmp_path / "ipam" / "block-198.19.7.0-30.json").write_text("{not json")
    with pytest.raises(CNIError) as ei:
        await plugin.handle(status_req())
    assert ei.value.code == 50 and "IPAM" in ei.value.msg


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
async def test_status_needs_a_1_1_0_config(env, version):
    plugin, _, _ = env
    with pytest.raises(CNIError) as ei:
        await plugin.handle(status_req(cniVersion=version))
    assert ei.value.code == 1 and "STATUS" in ei.value.msg


def test_status_request_needs_no_attachment_but_validates_what_it_carries():
    assert CNIRequest.from_wire({"command": "STATUS", "config": CONF}).container_id == ""
    with pytest.raises(CNIError) as ei:
        CNIRequest.from_wire({"command": "STATUS", "containerID": "a\nb", "config": CONF})
    assert ei.value.code == 4


def test_shim_status_with_no_agent_is_50(sockdir):
    path = sockdir / "nobody.sock"
    rc, out, _ = run_shim({"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"},
                          conf(path, cniVersion="1.1.0"))
    assert rc == 1 and out["code"] == 50
    assert str(path) in out["msg"] and "not reachable" in out["msg"]


def test_shim_status_forwards_and_relays(sockdir):
    agent = FakeAgent(sockdir / "ok.sock", {"ok": True, "result": None})
    try:
        rc, out, _ = run_shim({"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"},
                              conf(agent.path, cniVersion="1.1.0"))
    finally:
        agent.close()
    assert rc == 0 and out is None
    (sent,) = agent.requests
    assert sent["command"] == "STATUS" and sent["containerID"] == "" and sent["ifName"] == ""
    agent = FakeAgent(sockdir / "no.sock", {"ok": False, "code": 50, "msg": "not ready: x"})
    try:
        rc, out, _ = run_shim({"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"},
                              conf(agent.path, cniVersion="1.1.0"))
    finally:
        agent.close()
    assert rc == 1 and out == {"cniVersion": "1.1.0", "code": 50, "msg": "not ready: x"}


@pytest.mark.parametrize("env_, version, code", [
    ({"CNI_COMMAND": "STATUS"}, "1.1.0", 4),                              # CNI_PATH missing
    ({"CNI_COMMAND": "STATUS", "CNI_PATH": "/usr/lib/cni"}, "1.0.0", 1),  # config too old
])
def test_shim_status_refusals(sockdir, env_, version, code):
    rc, out, _ = run_shim(env_, conf(sockdir / "x.sock", cniVersion=version))
    assert (rc, out["code"]) == (1, code)


# -- ID / ifname checks in the shim, before it connects ------------------------------------------

@pytest.mark.parametrize("var, value", [
    ("CNI_CONTAINERID", "../../etc/passwd"), ("CNI_CONTAINERID", "abc\ndef"),
    ("CNI_CONTAINERID", "a" * 1000), ("CNI_CONTAINERID", "abc\x01"),
    ("CNI_IFNAME", "eth0:1"), ("CNI_IFNAME", "eth0\n"), ("CNI_IFNAME", "a" * 16),
])
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_shim_rejects_bad_ids_before_contacting_the_agent(sockdir, var, value, command):
    path = sockdir / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)  # a connect would succeed (backlog) and be seen by accept below
        rc, out, _ = run_shim(base_env(CNI_COMMAND=command, **{var: value}), conf(path))
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert rc == 1 and out["code"] == 4 and var in out["msg"] and "\n" not in out["msg"]


def _agent_verdict(fn, value):
    try:
        fn(value)
        return None
    except CNIError as e:
        return e.code


def _shim_verdict(fn, value):
    try:
        fn(value)
        return None
    except shim.ShimError as e:
        return e.code


ID_TABLE = ["abc", "A", "0", "a.b-c_d", "a" * 255, "a" * 256, "", "-a", ".a", "_a", "a b",
            "a/b", "a:b", "a\n", "\u00e9", "a\x00", "a\u00e9"]
IFNAME_TABLE = ["eth0", "net1", "e" * 15, "e" * 16, "", ".", "..", "...", "a.b", "eth0:1",
                "a/b", "a b", "a\t", "a\n", "a\x01", "a\x7f", "\u00e9" * 7, "\u00e9" * 8,
                "a\u00a0", "a\udcff"]


@pytest.mark.parametrize("value", ID_TABLE)
def test_shim_and_agent_agree_on_container_ids(value):
    assert _shim_verdict(shim.validate_container_id, value) == \
        _agent_verdict(validate.container_id, value)


@pytest.mark.parametrize("value", IFNAME_TABLE)
def test_shim_and_agent_agree_on_ifnames(value):
    assert _shim_verdict(shim.validate_ifname, value) == _agent_verdict(validate.ifname, value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_shim_and_agent_agree_on_any_text(value):
    assert _shim_verdict(shim.validate_container_id, value) == \
        _agent_verdict(validate.container_id, value)
    assert _shim_verdict(shim.validate_ifname, value) == _agent_verdict(validate.ifname, value)


# -- CHECK -----------------------------------------------------------------------------------------

async def test_check_without_prev_result_is_an_error(env):
    plugin, _, _ = env
    await plugin.handle(req())
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK"))
    assert ei.value.code == 7 and "prevResult" in ei.value.msg


async def test_check_passes_with_the_add_result_of_each_version(env):
    plugin, wiring, _ = env
    for i, version in enumerate(v for v in SUPPORTED_VERSIONS if v >= "0.4.0"):
        netns = wiring.add_netns(f"/var/run/netns/v{i}")
        result = await plugin.handle(req(cid=f"v{i}", netns=netns, cniVersion=version))
        assert await plugin.handle(req("CHECK", cid=f"v{i}", netns=netns, cniVersion=version,
                                       prevResult=result)) is None
        await plugin.handle(req("DEL", cid=f"v{i}", netns=netns, cniVersion=version))


@pytest.mark.parametrize("which", [0, 1])
async def test_check_compares_interface_macs_with_prev_result(env, which):
    plugin, wiring, _ = env
    result = await plugin.handle(req())
    what = ("host veth", "pod interface")[which]
    prev = {**result, "interfaces": [dict(i) for i in result["interfaces"]]}
    prev["interfaces"][which]["mac"] = "02:de:ad:be:ef:00"
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult=prev))
    assert ei.value.code == 999 and what in ei.value.msg and "02:de:ad:be:ef:00" in ei.value.msg
    # the real MAC changed under the runtime's feet: same verdict
    if which:
        wiring.pod_links[(NS, "eth0")].mac = "02:00:00:ff:ff:ff"
    else:
        next(iter(wiring.host_links.values())).mac = "02:00:00:ff:ff:ff"
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult=result))
    assert "02:00:00:ff:ff:ff" in ei.value.msg
    # MACs compare case-insensitively
    upper = {**result, "interfaces": [{**i, "mac": i["mac"].upper()} for i in result["interfaces"]]}
    with pytest.raises(CNIError):
        await plugin.handle(req("CHECK", prevResult=upper))  # still the changed MAC
    if which:
        wiring.pod_links[(NS, "eth0")].mac = result["interfaces"][1]["mac"]
    else:
        next(iter(wiring.host_links.values())).mac = result["interfaces"][0]["mac"]
    assert await plugin.handle(req("CHECK", prevResult=upper)) is None


async def test_check_needs_our_interfaces_in_prev_result(env):
    plugin, _, _ = env
    result = await plugin.handle(req())
    other_sandbox = {**result, "interfaces": [result["interfaces"][0],
                                              {**result["interfaces"][1], "sandbox": "/x"}]}
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult=other_sandbox))
    assert "prevResult lists no pod interface eth0 in sandbox " + NS in ei.value.msg
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult={**result, "interfaces": []}))
    assert "no host veth" in ei.value.msg and "no pod interface" in ei.value.msg
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req("CHECK", prevResult="nope"))
    assert ei.value.code == 7


# -- CNI_NETNS that is not a network namespace ------------------------------------------------------

async def test_add_into_a_plain_file_is_code_4_and_rolls_back(env):
    plugin, wiring, ipam = env
    stale = wiring.add_plain_file("/var/run/netns/stale")
    with pytest.raises(CNIError) as ei:
        await plugin.handle(req(netns=stale))
    assert ei.value.code == 4 and stale in ei.value.msg and "not a usable network namespace" \
        in ei.value.msg
    assert ipam.allocations() == {} and wiring.host_links == {}


async def test_del_with_a_plain_file_is_like_a_gone_netns(env):
    plugin, wiring, ipam = env
    await plugin.handle(req())
    wiring.remove_netns(NS)
    wiring.add_plain_file(NS)  # the bind mount vanished, its mount point stayed
    assert await plugin.handle(req("DEL")) is None
    await plugin.reap()
    assert ipam.allocations() == {} and wiring.host_links == {} and wiring.routes == set()


# -- the agent's readiness, as STATUS asks it ----------------------------------------------------

async def test_agent_readiness_reasons():
    import asyncio
    from types import SimpleNamespace

    from podroute.agent import Agent
    from podroute.tasks import TaskGuard

    a = SimpleNamespace(_stop=asyncio.Event(), guard=TaskGuard(), felix=SimpleNamespace(last_apply=None))
    assert "not programmed its routes" in Agent.cni_readiness(a)
    a.felix.last_apply = {"added": 1}
    assert Agent.cni_readiness(a) is None
    a.guard.failed.set()
    assert "task failed" in Agent.cni_readiness(a)
    a._stop.set()
    assert "shutting down" in Agent.cni_readiness(a)
