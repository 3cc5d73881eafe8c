"""Restart reconciliation, repeated-ADD repair and CNI GC on FakeWiring (issue 14 item 4,
issue 15 GC). Half-finished states are made the way a kill -9 mid-ADD/DEL leaves them: the
ADD's own steps, stopped part-way."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from cni.errors import CNIError
from cni.fake_wiring import FakeWiring
from cni.ipam import IPAM
from cni.model import CNIRequest
from cni.plugin import CNIPlugin
from cnifakes import Sink, plugin_env
from cni.reconcile import FAILED, FINISHED, KEPT, ROLLED_BACK, Reconciler

NS = "/var/run/netns/pod1"
CONF = {"cniVersion": "1.0.0", "name": "podnet", "type": "podroute"}
STEPS = ("claim", "veth", "pod", "host", "route")


@pytest.fixture
def env(tmp_path):
    return plugin_env(tmp_path, FakeWiring(), NS)


def req(command="ADD", cid="c0ffee", netns=NS, ifname="eth0", **conf) -> CNIRequest:
    return CNIRequest(command, cid, netns, ifname, {}, "/opt/cni/bin", {**CONF, **conf})


def crashed_add(plugin: CNIPlugin, upto: str, cid: str = "c0ffee", netns: str = NS,
                ifname: str = "eth0", network: str = "podnet",
                host: str | None = None) -> tuple[str, IPv4Address, str]:
    """The ADD's steps in its order, stopped after ``upto`` (a kill -9 there). Felix is told
    as the agent's start does (from the IPAM records). ``host``: the host veth name to record
    (by default the plugin's; the reconciler only ever reads it from the record)."""
    r = req(cid=cid, netns=netns, ifname=ifname, name=network)
    host = host or plugin.host_ifname(r)
    handle = f"{network}.{cid}.{ifname}"
    attrs = {"network": network, "container_id": cid, "ifname": ifname, "netns": netns,
             "host_ifname": host, "mtu": 1450, "pod_namespace": None, "pod_name": None}
    ip = plugin.ipam.claim(handle, attrs)[0].ip
    w = plugin.wiring
    steps = {"veth": lambda: w.create_veth_in_netns(host, netns, ifname, 1450),
             "pod": lambda: w.configure_pod_side(netns, ifname, ip, 1450),
             "host": lambda: w.configure_host_side(host),
             "route": lambda: w.add_host_route(ip, host, plugin.protocol)}
    for step in STEPS[1:STEPS.index(upto) + 1]:
        steps[step]()
    for ep in plugin.endpoints():  # felix's desired state at start; its first apply is yet to come
        plugin.workloads.workloads[ep.ip] = ep.host_ifname
    return handle, ip, host


def whole(wiring: FakeWiring, ip: IPv4Address, host: str, netns: str = NS) -> None:
    h = wiring.host_links[host]
    assert h.up and h.proxy_arp == 1 and h.forwarding == 1 and not h.retired
    assert (ip, host, 90) in wiring.routes
    pod = wiring.pod_links[(netns, "eth0")]
    assert pod.up and [str(a) for a in pod.addresses] == [f"{ip}/32"] and pod.mtu == 1450


def nothing_left(wiring: FakeWiring, ipam: IPAM, sink: Sink) -> None:
    assert ipam.allocations() == {}
    assert wiring.routes == set()
    assert wiring.host_links == {} and wiring.pod_links == {}
    assert sink.workloads == {}


@pytest.mark.parametrize("upto", ["claim", "veth", "pod", "host"])
async def test_half_wired_attachment_with_live_netns_is_finished(env, upto):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, upto)
    report = await Reconciler(plugin).run()
    assert report.handles(FINISHED) == [handle] and report.errors == ()
    whole(wiring, ip, host)
    assert ipam.get(handle).ip == ip and sink.workloads == {ip: host}
    # and the runtime's retried ADD now simply gets its result
    result = await plugin.handle(req())
    assert result["ips"][0]["address"] == f"{ip}/32"


@pytest.mark.parametrize("upto", ["claim", "veth", "host", "route"])
async def test_attachment_whose_netns_is_gone_is_rolled_back(env, upto):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, upto)
    wiring.remove_netns(NS)
    report = await Reconciler(plugin).run()
    assert report.handles(ROLLED_BACK) == [handle]
    nothing_left(wiring, ipam, sink)


async def test_whole_attachment_is_kept_untouched(env):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "route")
    wiring.calls.clear()
    report = await Reconciler(plugin).run()
    assert report.handles(KEPT) == [handle] and report.orphan_veths == ()
    changing = {"create_veth_in_netns", "configure_pod_side", "configure_host_side",
                "add_host_route", "delete_host_route", "delete_host_veth", "retire_host_veth",
                "delete_pod_iface"}
    assert changing.isdisjoint(wiring.calls), wiring.calls
    whole(wiring, ip, host)


async def test_our_veth_with_no_record_is_removed_and_others_are_not(env):
    plugin, wiring, ipam, sink = env
    wiring.add_netns("/var/run/netns/ghost")
    wiring.create_veth_in_netns("prt0123456789a", "/var/run/netns/ghost", "eth0", 1450)
    wiring.create_veth_in_netns("cali12345", "/var/run/netns/ghost", "eth1", 1450)
    handle, ip, host = crashed_add(plugin, "route")
    report = await Reconciler(plugin).run()
    assert report.orphan_veths == ("prt0123456789a",)
    assert set(wiring.host_links) == {"cali12345", host}
    assert report.handles(KEPT) == [handle]


async def test_record_whose_del_was_under_way_is_completed(env):
    """kill -9 in DEL after the veth was retired, before the IP was released."""
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "route")
    wiring.delete_host_route(ip, host, 90)
    wiring.retire_host_veth(host)
    report = await Reconciler(plugin).run()
    assert report.handles(ROLLED_BACK) == [handle]
    nothing_left(wiring, ipam, sink)


async def test_pod_iface_without_our_host_veth_cannot_be_finished_so_is_rolled_back(env):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "claim")
    wiring.create_veth_in_netns("other0", NS, "eth0", 1500)  # eth0 there, not our pair
    report = await Reconciler(plugin).run()
    assert report.handles(ROLLED_BACK) == [handle]
    assert ipam.allocations() == {} and sink.workloads == {}


async def test_finish_failure_rolls_back(env):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "pod")
    wiring.fail_at("configure_host_side")
    report = await Reconciler(plugin).run()
    assert report.handles(ROLLED_BACK) == [handle]
    nothing_left(wiring, ipam, sink)


async def test_unreadable_state_is_left_alone_and_reported(env):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "veth")
    wiring.fail_at("host_veth")
    report = await Reconciler(plugin).run()
    assert report.handles(FAILED) == [handle] and len(report.errors) == 1
    assert ipam.get(handle) is not None and host in wiring.host_links


# -- a repeated ADD repairs instead of "DEL it first" ----------------------------------------

@pytest.mark.parametrize("upto", ["claim", "veth", "pod", "host"])
async def test_repeated_add_for_a_broken_attachment_repairs_it(env, upto):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, upto)
    result = await plugin.handle(req())  # was: 999 "already attached but broken; DEL it first"
    assert result["ips"][0]["address"] == f"{ip}/32"
    assert result["interfaces"][0] == {"name": host, "mac": wiring.host_links[host].mac}
    whole(wiring, ip, host)


async def test_repeated_add_uses_the_host_veth_the_record_names(env):
    """A record written under another host veth naming (an upgrade between ADD and its retry)
    is still the same attachment."""
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "pod", host="prtoldnaming01")
    result = await plugin.handle(req())
    assert result["interfaces"][0]["name"] == "prtoldnaming01"
    whole(wiring, ip, "prtoldnaming01")
    assert set(wiring.host_links) == {"prtoldnaming01"}


async def test_repeated_add_whose_repair_fails_starts_over(env):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "route")
    wiring.retire_host_veth(host)  # a DEL under way: the pair cannot be taken back
    result = await plugin.handle(req())
    new_ip = ipam.get(handle).ip
    assert result["ips"][0]["address"] == f"{new_ip}/32"
    whole(wiring, new_ip, host)
    assert sink.workloads == {new_ip: host}


async def test_repeated_add_into_a_gone_netns_leaves_nothing(env):
    plugin, wiring, ipam, sink = env
    crashed_add(plugin, "veth")
    wiring.remove_netns(NS)
    with pytest.raises(CNIError) as e:
        await plugin.handle(req())
    assert e.value.code == 3
    nothing_left(wiring, ipam, sink)


# -- CNI 1.1 GC ---------------------------------------------------------------------------------

def gc_req(valid, **conf) -> CNIRequest:
    config = {**CONF, "cniVersion": "1.1.0", **conf}
    if valid is not ...:
        config["cni.dev/valid-attachments"] = valid
    return CNIRequest("GC", "", "", "", {}, "/opt/cni/bin", config)


async def test_gc_releases_what_is_not_valid_on_that_network_only(env):
    plugin, wiring, ipam, sink = env
    wiring.add_netns("/var/run/netns/pod2")
    wiring.add_netns("/var/run/netns/pod3")
    keep, keep_ip, keep_host = crashed_add(plugin, "route", cid="keep")
    gone, gone_ip, gone_host = crashed_add(plugin, "route", cid="gone", netns="/var/run/netns/pod2")
    other, other_ip, _ = crashed_add(plugin, "route", cid="gone", netns="/var/run/netns/pod3",
                                     network="othernet", host="prtothernet0")
    assert await plugin.handle(gc_req([{"containerID": "keep", "ifname": "eth0"}])) is None
    assert set(ipam.allocations()) == {keep, other}
    assert gone_host not in wiring.host_links or wiring.host_links[gone_host].retired
    assert not any(r[0] == gone_ip for r in wiring.routes)
    assert gone_ip not in sink.workloads and keep_ip in sink.workloads
    whole(wiring, keep_ip, keep_host)
    await plugin.reap()
    assert gone_host not in wiring.host_links


async def test_gc_null_list_means_no_valid_attachment(env):
    plugin, wiring, ipam, sink = env
    crashed_add(plugin, "route")
    await plugin.handle(gc_req(None))
    await plugin.reap()
    nothing_left(wiring, ipam, sink)


@pytest.mark.parametrize("version,valid,code", [
    ("1.0.0", [], 1),                      # GC exists only for 1.1.0 configs
    ("1.1.0", ..., 7),                     # no list: never read as "nothing is valid"
    ("1.1.0", [{"containerID": 5}], 7),
    ("1.1.0", {"containerID": "x"}, 7),
])
async def test_gc_rejects_bad_requests_and_touches_nothing(env, version, valid, code):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "route")
    with pytest.raises(CNIError) as e:
        await plugin.handle(gc_req(valid, cniVersion=version))
    assert e.value.code == code
    whole(wiring, ip, host)
    assert ipam.get(handle) is not None


async def test_gc_accepts_the_older_key_libcni_also_sends(env):
    plugin, wiring, ipam, sink = env
    handle, ip, host = crashed_add(plugin, "route")
    await plugin.handle(gc_req(..., **{"cni.dev/attachments": [{"containerID": "c0ffee",
                                                                "ifname": "eth0"}]}))
    assert ipam.get(handle) is not None


async def test_gc_goes_on_past_errors_and_reports_them(env):
    plugin, wiring, ipam, sink = env
    wiring.add_netns("/var/run/netns/pod2")
    a, _, _ = crashed_add(plugin, "route", cid="a")
    b, _, _ = crashed_add(plugin, "route", cid="b", netns="/var/run/netns/pod2")
    wiring.fail_at("delete_host_route")
    with pytest.raises(CNIError) as e:
        await plugin.handle(gc_req([]))
    assert e.value.code == 999 and "GC incomplete" in e.value.msg
    assert ipam.allocations() == {}  # both IPs released regardless


def test_gc_request_needs_no_container_id_or_ifname():
    r = CNIRequest.from_wire({"command": "GC", "args": {}, "config": {"name": "podnet"}})
    assert (r.command, r.container_id, r.ifname) == ("GC", "", "")
    with pytest.raises(CNIError) as e:
        CNIRequest.from_wire({"command": "ADD", "ifName": "eth0", "config": {}})
    assert e.value.code == 4
