"""The agent's collaborators on their own: VTEP reference counts, encapsulation set-up, the
BGP -> FIB path, the cluster-file watch, felix's driver and its route waiters."""
from __future__ import annotations

import asyncio
import errno
import os
import threading
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from waiting import wait_until

from bgp.model import BestRoute, SpeakerStatus
from felix.fake import FakeDataplane
from felix.routes import Route, dst_key
from felix.routetable import RouteTable
from felix.worker import RouteTableWorker
from ipip.fake import FakeDataplane as FakeIPIP
from ipip.modes import Encapsulation
from ipip.vxlan import VXLAN_IFNAME, VXLANParams
from podroute.bgp_fib import BgpToFib
from podroute.clusterwatch import ClusterWatch
from podroute.datastore import filestore as fs_mod
from podroute.datastore.filestore import FileDatastore
from podroute.config import IPPool, NodeConfig, Paths
from podroute.encap import Encap
from podroute.felix_loop import FelixDriver, RouteNotProgrammed
from podroute.gr_hold import RestartHold
from podroute.routing import FibPlanner
from podroute.vteps import VtepRefs
from podroute.workloads import FelixWorkloads, workload_route

NODE_IP = IPv4Address("198.18.0.11")
A, B = IPv4Address("198.18.0.12"), IPv4Address("198.18.0.13")
BLOCK = IPv4Network("198.19.1.0/26")


def cfg(tmp_path: Path, ipip="Never", vxlan="Never", mtu=None, **kw) -> NodeConfig:
    return NodeConfig(node_name="n1", node_ip=NODE_IP, pod_cidrs=(BLOCK,), mtu=mtu,
                      ip_pools=(IPPool(IPv4Network("198.19.0.0/16"), 26, ipip, vxlan),),
                      paths=Paths(tmp_path / "state", tmp_path / "run"), **kw)


def underlay(mtu=1500) -> FakeIPIP:
    dp = FakeIPIP()
    dp.add_foreign_link("eth0", mtu=mtu)
    dp.add_address("eth0", IPv4Interface(f"{NODE_IP}/24"))
    return dp


# -- VtepRefs ------------------------------------------------------------------------------------

def test_vtep_refs_count_routes_per_vtep_and_publish_only_changes():
    seen = []
    refs = VtepRefs(seen.append)
    refs.move(1, frozenset({A}))
    refs.move(2, frozenset({A, B}))
    assert refs.publish() and set(seen[-1]) == {str(A), str(B)}
    assert seen[-1][str(A)].node_ip == A and seen[-1][str(A)].mac
    refs.move(2, frozenset({A}))          # B loses its only route
    assert dict(refs.in_use()) == {A: 2}
    assert refs.publish() and set(seen[-1]) == {str(A)}
    refs.move(1, frozenset({A}))          # no change
    assert not refs.publish() and len(seen) == 2
    refs.move(1, frozenset())
    refs.move(2, frozenset())
    assert refs.publish() and seen[-1] == {} and not refs.by_route


# -- Encap -----------------------------------------------------------------------------------------

def test_encap_native_pools_need_no_device_and_keep_the_underlay_mtu(tmp_path):
    e = Encap(cfg(tmp_path), underlay(9000), mtu_of=lambda ifname: 9000)
    assert e.tunl0 is None and e.vxlan is None and e.modes == set()
    assert e.underlay.interface == "eth0" and e.underlay.subnets == (IPv4Network("198.18.0.0/24"),)
    assert e.pod_mtu == 9000 and e.tunnel_address == BLOCK.network_address
    st = e.status()
    assert st["underlay"] == {"interface": "eth0", "subnets": ["198.18.0.0/24"], "mtu": 9000}
    assert st["tunl0"] is None and st["pools"][0]["ipip"] == "Never"


def test_encap_vxlan_pool_gets_its_manager_and_the_overhead_off_the_pod_mtu(tmp_path):
    e = Encap(cfg(tmp_path, vxlan="Always"), underlay(), mtu_of=lambda ifname: 1500)
    assert e.modes == {Encapsulation.VXLAN} and e.vxlan is not None and e.tunl0 is None
    assert e.pod_mtu == 1450 and e.vxlan.mtu == 1450 and e.vxlan.params.parent_ifname == "eth0"


def test_encap_without_the_node_ip_on_an_interface_treats_every_node_as_remote(tmp_path, caplog):
    e = Encap(cfg(tmp_path, ipip="CrossSubnet"), FakeIPIP(), mtu_of=lambda ifname: 9000)
    assert e.underlay.interface is None and e.underlay.subnets == () and e.underlay.mtu == 1500
    assert e.tunl0 is not None and e.pod_mtu == 1480
    assert "not configured on any interface" in caplog.text


def test_encap_configured_mtu_above_what_the_tunnel_carries_is_kept_and_warned(tmp_path, caplog):
    e = Encap(cfg(tmp_path, ipip="Always", mtu=1500), underlay(), mtu_of=lambda ifname: 1500)
    assert e.pod_mtu == 1500 and "exceeds" in caplog.text


def test_encap_remove_unused_deletes_our_vxlan_device_and_our_tunl0_address(tmp_path):
    dp = underlay()
    dp.add_vxlan(VXLAN_IFNAME, VXLANParams(vni=4096, port=4789, local=NODE_IP, learning=False))
    dp.ensure_ipip_fallback("tunl0")
    ours, other = IPv4Interface(f"{BLOCK.network_address}/32"), IPv4Interface("198.19.9.9/32")
    dp.add_address("tunl0", ours)
    dp.add_address("tunl0", other)
    Encap(cfg(tmp_path), dp, mtu_of=lambda ifname: 1500).remove_unused()
    assert dp.get_link(VXLAN_IFNAME) is None
    assert dp.list_addresses("tunl0") == [other]


# -- BgpToFib ------------------------------------------------------------------------------------

class Setters:
    def __init__(self):
        self.routes: dict[int, Route] = {}
        self.kicks = 0

    def set_route(self, owner, route, key=None):
        assert owner == "bgp"
        self.routes[key] = route

    def remove_key(self, owner, key):
        assert owner == "bgp"
        self.routes.pop(key, None)


def best(net: str, *hops: IPv4Address) -> tuple[int, BestRoute]:
    n = IPv4Network(net)
    return dst_key(n), BestRoute(n, hops, hops)


def bgp_path(tmp_path, vxlan="Never", held=()):
    s = Setters()
    published = []
    enc = Encap(cfg(tmp_path, vxlan=vxlan), underlay(), mtu_of=lambda ifname: 1500)
    hold = RestartHold(s, lambda: SpeakerStatus((), None, 0, None, ()), hold_s=120)
    hold.keep(held)
    kicks = []
    path = BgpToFib(FibPlanner(node_ip=NODE_IP, pools=enc.pools, local_subnets=enc.underlay.subnets),
                    s, VtepRefs(published.append), hold, lambda: kicks.append(1))
    return path, s, published, hold, kicks


def test_bgp_delta_becomes_felix_routes_and_vteps_follow_them(tmp_path):
    path, s, published, _, kicks = bgp_path(tmp_path, vxlan="Always")
    k1, b1 = best("198.19.2.0/26", A)
    k2, b2 = best("198.19.2.64/26", A, B)
    path.apply({k1: b1, k2: b2})
    assert s.routes[k1].dst == b1.prefix and s.routes[k2].multipath
    assert set(published[-1]) == {str(A), str(B)} and kicks
    path.apply({k2: None})
    assert k2 not in s.routes and set(published[-1]) == {str(A)}
    k3, b3 = best("198.19.1.0/26", NODE_IP)  # via our own node IP: no route
    path.apply({k3: b3})
    assert k3 not in s.routes


def test_bgp_reannouncing_a_held_route_takes_it_out_of_the_hold(tmp_path):
    k1, b1 = best("198.19.2.0/26", A)
    k2, _ = best("198.19.2.64/26", A)
    held = [Route.via(IPv4Network("198.19.2.0/26"), A), Route.via(IPv4Network("198.19.2.64/26"), A)]
    path, s, _, hold, _ = bgp_path(tmp_path, held=held)
    path.apply({k1: b1})
    assert set(hold.stale) == {k2} and hold.active


# -- ClusterWatch ------------------------------------------------------------------------------

CLUSTER = """nodes:
  - {{name: n1, ip: {ip}, podCIDRs: [198.19.1.0/26]}}
  - {{name: n2, ip: 198.18.0.12, podCIDRs: [198.19.2.0/26]}}
{extra}"""


def write(path: Path, ip=NODE_IP, extra="") -> None:
    path.write_text(CLUSTER.format(ip=ip, extra=extra))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a visible change


def watch_file(path: Path, got: list, poll_s: float = 0.01) -> tuple[ClusterWatch, FileDatastore]:
    store = FileDatastore(path, poll_s=poll_s)
    w = ClusterWatch(store, node_name="n1", node_ip=NODE_IP, on_change=got.append)
    w.prime(store.load())
    return w, store


def test_the_file_keeps_this_nodes_route_reflector_cluster_id_over_its_registration(tmp_path):
    """On the file datastore the operator's file is the node's whole record: the agent's own
    registration (name, address, AS) must not hide the file's routeReflectorClusterID (it did
    once, for the Kubernetes overlay, and a podroute-rr lab's reflector never peered)."""
    from podroute.datastore import Node
    f = tmp_path / "cluster.yaml"
    f.write_text("""nodes:
  - {name: n1, ip: 198.18.0.11, podCIDRs: [198.19.1.0/26], routeReflectorClusterID: 198.18.0.11}
  - {name: n2, ip: 198.18.0.12, podCIDRs: [198.19.2.0/26]}
""")
    store = FileDatastore(f)
    w = ClusterWatch(store, node_name="n1", node_ip=NODE_IP, on_change=lambda c: None,
                     register=Node("n1", NODE_IP, 64512))
    cluster = w.prime(store.load())
    assert cluster.node("n1").rr_cluster_id == IPv4Address("198.18.0.11")


async def test_cluster_watch_hands_a_changed_file_over_and_keeps_the_last_good_one(tmp_path, caplog):
    f = tmp_path / "cluster.yaml"
    write(f)
    got = []
    w, store = watch_file(f, got)
    assert [n.name for n in w.cluster.nodes] == ["n1", "n2"]
    it = store.watch(w.revision).__aiter__()

    async def step() -> bool:
        assert await store.poll_once()
        return await w.handle(await asyncio.wait_for(it.__anext__(), 10))

    assert not await store.poll_once()          # unchanged
    write(f, extra="  - {name: n3, ip: 198.18.0.13, podCIDRs: [198.19.3.0/26]}\n")
    assert await step() and len(got[-1].nodes) == 3
    write(f, ip="198.18.0.99")                   # this node with another IP: rejected
    assert not await step() and len(w.cluster.nodes) == 3
    (rec,) = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert "198.18.0.99" in rec.kv["error"] and rec.kv["key"] == "nodes/n1"
    assert not await store.poll_once()          # not re-read until it changes again
    f.write_text("nodes: [")                     # does not parse: the last good state stays
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    assert not await step() and len(w.cluster.nodes) == 3
    assert [r.kv["key"] for r in caplog.records if "rejected" in r.getMessage()][-1] == str(f)
    await it.aclose()
    await store.close()


async def test_cluster_watch_loads_off_the_event_loop(tmp_path, monkeypatch):
    f = tmp_path / "cluster.yaml"
    write(f)
    w, store = watch_file(f, [])
    loader_threads = []
    real = fs_mod.load_file_resources
    monkeypatch.setattr(fs_mod, "load_file_resources",
                        lambda p: (loader_threads.append(threading.current_thread()), real(p))[1])
    write(f, extra="  - {name: n3, ip: 198.18.0.13, podCIDRs: [198.19.3.0/26]}\n")
    assert await store.poll_once()
    assert loader_threads and threading.main_thread() not in loader_threads


async def test_cluster_watch_run_follows_the_file(tmp_path):
    f = tmp_path / "cluster.yaml"
    write(f)
    got = []
    w, store = watch_file(f, got)
    task = asyncio.create_task(w.run())
    try:
        write(f, extra="  - {name: n3, ip: 198.18.0.13, podCIDRs: [198.19.3.0/26]}\n")
        await wait_until(lambda: got)
        assert [n.name for n in got[-1].nodes] == ["n1", "n2", "n3"]
    finally:
        task.cancel()
        await store.close()


# -- FelixDriver and FelixWorkloads ------------------------------------------------------------

@pytest.fixture
async def felix():
    dp = FakeDataplane(links=("eth0", "prtveth0"))
    routes = RouteTableWorker(RouteTable(dp, protocol=90))
    stopping = [False]
    driver = FelixDriver(routes, stopping=lambda: stopping[0], resync_s=3600)
    task = asyncio.create_task(driver.run())
    driver.kick()
    yield SimpleNamespace(dp=dp, routes=routes, driver=driver, sink=FelixWorkloads(routes, driver),
                          stopping=stopping)
    dp.unblock()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def ep(ip, host="prtveth0"):
    return SimpleNamespace(ip=IPv4Address(ip), host_ifname=host)


async def test_workload_added_resolves_once_felix_programmed_the_route(felix):
    await wait_until(lambda: felix.driver.last_apply is not None)
    felix.dp.block()
    added = asyncio.create_task(felix.sink.workload_added(ep("198.19.1.5")))
    await wait_until(felix.dp.waiting.is_set)
    assert not added.done() and IPv4Network("198.19.1.5/32") not in felix.dp.ours()
    felix.dp.unblock()
    await asyncio.wait_for(added, 10)
    assert felix.dp.ours()[IPv4Network("198.19.1.5/32")] == workload_route(ep("198.19.1.5"))
    await asyncio.wait_for(felix.sink.workload_removed(ep("198.19.1.5")), 10)
    assert IPv4Network("198.19.1.5/32") not in felix.dp.ours()


async def test_workload_added_fails_with_felix_reason(felix):
    with pytest.raises(RouteNotProgrammed, match="198.19.1.6/32"):
        await asyncio.wait_for(felix.sink.workload_added(ep("198.19.1.6", "prtgone")), 10)
    # another workload in the same apply is not failed with it
    ok = asyncio.create_task(felix.sink.workload_added(ep("198.19.1.7")))
    bad = asyncio.create_task(felix.sink.workload_added(ep("198.19.1.8", "prtgone")))
    await asyncio.wait_for(ok, 10)
    with pytest.raises(RouteNotProgrammed):
        await asyncio.wait_for(bad, 10)


async def test_waiters_fail_when_the_agent_stops(felix):
    await wait_until(lambda: felix.driver.last_apply is not None)
    felix.stopping[0] = True
    with pytest.raises(RouteNotProgrammed, match="stopping"):
        await asyncio.wait_for(felix.sink.workload_added(ep("198.19.1.9")), 10)


async def test_drift_and_resync_mark_felix_dirty(felix):
    await wait_until(lambda: felix.driver.last_apply is not None)
    dumps = felix.dp.dumps
    felix.driver.on_drift()
    await wait_until(lambda: felix.dp.dumps > dumps)
    assert felix.driver.drifts == 1


async def test_a_kick_during_an_apply_is_applied_next_without_a_second_debounce(felix, monkeypatch):
    """The tail of a BGP burst that arrives while felix applies is taken in by the next apply at
    once: that apply's duration already batched it (a second debounce held the last ~1,000 of a
    10k withdrawal back). A kick that finds felix idle is still debounced into one batch."""
    import podroute.felix_loop as felix_loop

    await wait_until(lambda: felix.driver.last_apply is not None)
    monkeypatch.setattr(felix_loop, "DEBOUNCE_S", 3.0)
    first, tail = Route.blackhole(IPv4Network("198.19.9.0/26")), Route.blackhole(IPv4Network("198.19.9.64/26"))
    felix.dp.block()
    felix.routes.set_route("bgp", first)
    waited = felix.driver.wait_programmed(first.dst)  # a waiter skips the debounce: the apply starts now
    await wait_until(felix.dp.waiting.is_set)
    felix.routes.set_route("bgp", tail)  # the burst's tail, kicked while the apply runs
    felix.driver.kick()
    felix.dp.unblock()
    await asyncio.wait_for(waited, 10)
    t0 = asyncio.get_running_loop().time()
    await wait_until(lambda: tail.dst in felix.dp.ours(), timeout=10)
    assert asyncio.get_running_loop().time() - t0 < 1.5  # well under DEBOUNCE_S: no second sleep

    # The tail shows in the fake's table while its apply is still returning to the loop; a
    # waiter's verdict comes after felix has looked for kicks, so felix is idle from here on.
    await asyncio.wait_for(felix.driver.wait_programmed(tail.dst), 10)
    idle = Route.blackhole(IPv4Network("198.19.9.128/26"))
    felix.routes.set_route("bgp", idle)
    felix.driver.kick()
    await asyncio.sleep(0.3)
    assert idle.dst not in felix.dp.ours()  # an idle kick waits DEBOUNCE_S for more of its burst


# -- status_view -------------------------------------------------------------------------------

def test_bgp_section_sums_rejections_and_marks_passive_peers_from_the_effective_config():
    from bgp.model import PeerConfig, PeerStatus
    from podroute.status_view import STATUS_ROUTES, bgp_section

    peers = (PeerStatus(A, 64512, "established", 1.0, 3, 1, 2, None, rejected_by_reason=(("not-in-pool", 2),)),
             PeerStatus(B, 65001, "idle", 0.0, 0, 0, 0, "hold timer expired",
                        rejected_by_reason=(("not-in-pool", 1), ("max-prefixes", 4))))
    routes = {}
    for i in range(STATUS_ROUTES + 5):
        net = IPv4Network((0xC6130000 + (200 - i) * 64, 26))
        routes[net] = BestRoute(net, (A,), (A,))
    speaker = SimpleNamespace(
        config=SimpleNamespace(peers=(PeerConfig(address=A, asn=64512, passive=True),)),
        status=lambda: SpeakerStatus(peers, 4242, 1, None, (BLOCK,)),
        best_routes_view=lambda: routes)
    sec = bgp_section(speaker, 64512)
    assert sec["rejections"] == {"not-in-pool": 3, "max-prefixes": 4}
    assert [(p["type"], p["passive"], p["info"]) for p in sec["peers"]] == [
        ("iBGP", True, ""), ("eBGP", None, "hold timer expired")]
    assert sec["routes_total"] == STATUS_ROUTES + 5 and len(sec["routes"]) == STATUS_ROUTES
    assert sec["routes"][0]["prefix"] == str(min(routes))  # the first ones, in prefix order
    assert sec["exabgp"] == {"pid": 4242, "restarts": 1, "last_exit": None} and sec["announced"] == [str(BLOCK)]


async def test_a_failed_dump_keeps_the_waiter_until_an_apply_settles_its_route(felix):
    # Under veth churn a full-sync dump can be interrupted (NLM_F_DUMP_INTR) on every retry;
    # that says nothing about the route waited on, so the CNI ADD/DEL waiting on it must not
    # fail (the churn test's DEL got 999 "felix could not read the FIB"): the next apply decides.
    await wait_until(lambda: felix.driver.last_apply is not None)
    felix.driver.routes.mark_dirty()
    felix.dp.fail_dump_next(errno.EINTR, times=8, message="dump interrupted")
    await asyncio.wait_for(felix.sink.workload_added(ep("198.19.1.10")), 10)
    assert felix.dp.ours()[IPv4Network("198.19.1.10/32")] == workload_route(ep("198.19.1.10"))
