"""The per-node agent: wires felix (FIB), bgp (speaker) and cni (pod wiring) together.

Data flow (ARCHITECTURE.md): the speaker hands Loc-RIB changes to :meth:`Agent._on_bgp_changes`,
which turns best paths into felix routes; the CNI plugin tells the agent about each
workload so felix owns its ``/32 dev <veth>`` route; felix applies on every event
(debounced a few ms so a burst of updates becomes one batch) and fully resyncs every
``resyncInterval`` seconds, the kube-router pattern of immediate apply plus a periodic
safety net. The netlink monitor marks felix dirty when someone touches our routes.

Start-up after a restart (graceful restart, RFC 4724 §4.2 receiving-speaker view): the
routes we programmed last time are still in the FIB. Until BGP has re-converged
(End-of-RIB from every established peer, or the restart time elapsing) those
BGP-learned routes are kept as *stale* desired routes, so no route is removed before
its replacement could have arrived.
"""
from __future__ import annotations

import asyncio
import heapq
import ipaddress
import logging
import signal
import time
from typing import Any, Mapping

from podroute import statusd
from podroute.config import NodeConfig
from podroute.routing import VXLAN_DEV, FibPlanner
from podroute.tasks import TaskGuard

log = logging.getLogger("podroute.agent")

DEBOUNCE_S = 0.005
_NO_VTEPS: frozenset[Any] = frozenset()
CLUSTER_POLL_S = 0.5
STATUS_ROUTES = 100


def _exabgp_bin() -> str:
    # The exabgp entry point sits next to the interpreter in the venv; PATH may not have it.
    import shutil
    import sys
    from pathlib import Path
    local = Path(sys.executable).parent / "exabgp"
    return str(local) if local.exists() else (shutil.which("exabgp") or "exabgp")


def _exabgp_python() -> str | None:
    # ExaBGP under bgp/exabgp_launch.py (pure withdrawals undecoded) when this interpreter
    # has it, which is how it is installed: in the agent's own environment.
    import importlib.util
    import sys
    return sys.executable if importlib.util.find_spec("exabgp") is not None else None


class Agent:
    """One node's podroute agent. ``await run()`` until SIGTERM/SIGINT or a task crash.

    Collaborators can be injected for tests (``dataplane``, ``wiring``, ``speaker_factory``);
    by default the real netlink adapters and the ExaBGP speaker are used.
    """

    def __init__(self, cfg: NodeConfig, *, dataplane: Any = None, wiring: Any = None,
                 speaker_factory: Any = None, start_monitor: bool = True, ipip_dataplane: Any = None) -> None:
        from cni.ipam import IPAM
        from cni.plugin import CNIPlugin
        from felix.backoff import FailureBackoff
        from felix.routes import Route, dst_key
        from felix.routetable import RouteTable
        from felix.worker import RouteTableWorker
        from podroute.looplag import LoopLag
        from ipip.modes import Encapsulation, PoolEncap

        self.cfg = cfg
        self.guard = TaskGuard()
        self.started = time.time()
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._stop_reason = "signal"
        self._draining = False
        self._start_monitor = start_monitor
        self.resyncs = 0
        self.monitor_triggers = 0
        self.last_apply: dict[str, Any] | None = None
        self.looplag = LoopLag()
        self.route_failures = FailureBackoff()
        self._vxlan_users: dict[Any, int] = {}      # remote VTEP (node IP) -> routes using it
        self._route_vxlan: dict[int, frozenset[Any]] = {}  # dst key -> VTEPs its route uses

        if dataplane is None:
            from felix.netlink import NetlinkDataplane
            dataplane = NetlinkDataplane()
        self.dataplane = dataplane
        # One felix thread owns the RouteTable from run() on (felix.worker): setters are queued.
        self.routes = RouteTableWorker(RouteTable(dataplane, protocol=cfg.route_protocol))
        self.routes.set_routes("blocks", [Route.blackhole(c) for c in cfg.pod_cidrs])

        # Encapsulation (ipip/): per-pool modes, the underlay they are judged against, MTUs.
        self.pool_encaps = tuple(PoolEncap(p.cidr, p.ipip_mode, p.vxlan_mode) for p in cfg.ip_pools)
        self.encaps = {pe.encapsulation for pe in self.pool_encaps} - {Encapsulation.NONE}
        if ipip_dataplane is None:
            from ipip.netlink import NetlinkDataplane as IPIPNetlink
            ipip_dataplane = IPIPNetlink()
        self.ipip_dp = ipip_dataplane
        self._setup_underlay()
        self._setup_tunnels()
        self._planner = FibPlanner(node_ip=cfg.node_ip, pools=self.pool_encaps, local_subnets=self.local_subnets)

        cfg.paths.state_dir.mkdir(parents=True, exist_ok=True)
        # The first address of the first block is the node's tunnel address (tunl0 / VXLAN
        # device), as Calico gives tunl0 an IP from the node's block; no pod may get it.
        self.ipam = IPAM(cfg.paths.state_dir / "ipam", blocks=cfg.pod_cidrs, reserved=[self.tunnel_address])
        if wiring is None:
            from cni.netlink_wiring import NetlinkWiring
            wiring = NetlinkWiring()
        self.cni = CNIPlugin(ipam=self.ipam, wiring=wiring, mtu=self.pod_mtu, protocol=cfg.route_protocol,
                             workloads=self, readiness=self.cni_readiness)
        self.routes.set_routes("workloads", [self._workload_route(ep) for ep in self.cni.endpoints()])

        # Graceful restart: keep what BGP installed last time until BGP re-converges.
        self._stale_until: float | None = None
        stale = self._stale_bgp_routes()
        self._stale = {dst_key(r.dst): r for r in stale}
        if stale:
            self._stale_until = time.monotonic() + cfg.graceful_restart_time
            self.routes.set_routes("bgp", stale)
            log.info("keeping routes from the previous run until BGP converges",
                     extra={"kv": {"routes": len(stale), "max_wait_s": cfg.graceful_restart_time}})

        # File datastore: the cluster file says which other nodes exist and the BGP topology.
        self.cluster = None
        self._cluster_stamp: tuple[float, int] | None = None
        if cfg.cluster_file is not None:
            self.cluster = self._load_cluster()
        self.speaker = (speaker_factory or self._make_speaker)(cfg, self._on_bgp_changes, self)
        self.speaker.set_announcements(cfg.pod_cidrs)

    # --- encapsulation -----------------------------------------------------------------
    def _setup_underlay(self) -> None:
        from ipip.mtu import detect_underlay_mtu
        found = self.ipip_dp.interface_of(self.cfg.node_ip)
        if found is None:
            # Without the node IP on an interface, CrossSubnet cannot tell local from remote:
            # every remote node then counts as another subnet (tunnelled), the safe side.
            log.warning("nodeIP is not configured on any interface; CrossSubnet treats every node as remote",
                        extra={"kv": {"node_ip": self.cfg.node_ip}})
            self.underlay_if, self.local_subnets, self.underlay_mtu = None, (), 1500
        else:
            self.underlay_if = found[0]
            self.local_subnets = (found[1].network,)
            self.underlay_mtu = detect_underlay_mtu(found[0])
        from ipip.mtu import pod_mtu
        auto = pod_mtu(self.underlay_mtu, self.pool_encaps)
        self.pod_mtu = self.cfg.mtu or auto
        if self.cfg.mtu and self.cfg.mtu > auto:
            log.warning("configured pod MTU exceeds what the underlay carries with encapsulation; "
                        "large packets will be fragmented or dropped",
                        extra={"kv": {"mtu": self.cfg.mtu, "max": auto, "underlay_mtu": self.underlay_mtu}})

    def _setup_tunnels(self) -> None:
        from ipip.modes import Encapsulation
        from ipip.mtu import tunnel_mtu
        from ipip.tunl0 import Tunl0Manager
        from ipip.vxlan import VXLANManager, vtep_mac
        self.tunnel_address = self.cfg.pod_cidrs[0].network_address
        self.tunl0 = self.vxlan = None
        if Encapsulation.IPIP in self.encaps:
            self.tunl0 = Tunl0Manager(self.ipip_dp, address=self.tunnel_address,
                                      mtu=tunnel_mtu(self.underlay_mtu, Encapsulation.IPIP))
        if Encapsulation.VXLAN in self.encaps:
            self.vxlan = VXLANManager(self.ipip_dp, node_name=self.cfg.node_name, local_ip=self.cfg.node_ip,
                                      vtep_ip=self.tunnel_address, mac=vtep_mac(str(self.cfg.node_ip)),
                                      mtu=tunnel_mtu(self.underlay_mtu, Encapsulation.VXLAN),
                                      parent=self.underlay_if)

    def _remove_unused_tunnels(self) -> None:
        """A mode switched off leaves nothing behind: our VXLAN device goes, tunl0 (the
        ipip module's fallback device, which cannot be deleted) loses our address."""
        from ipaddress import IPv4Interface
        if self.vxlan is None and self.ipip_dp.get_link(VXLAN_DEV) is not None:
            self.ipip_dp.delete_link(VXLAN_DEV)
            log.info("removed unused VXLAN device", extra={"kv": {"device": VXLAN_DEV}})
        if self.tunl0 is None and self.ipip_dp.get_link("tunl0") is not None:
            ours = IPv4Interface(f"{self.tunnel_address}/32")
            if ours in self.ipip_dp.list_addresses("tunl0"):
                self.ipip_dp.del_address("tunl0", ours)
                log.info("removed our address from unused tunl0", extra={"kv": {"address": ours}})

    # --- collaborators -------------------------------------------------------------
    # --- datastore ----------------------------------------------------------------------
    def _load_cluster(self) -> Any:
        """Read the cluster file; raises ConfigError if invalid or if it disagrees with us."""
        from podroute.datastore import load_cluster
        from podroute.schema import ConfigError
        path = self.cfg.cluster_file
        assert path is not None
        st = path.stat() if path.exists() else None
        cluster = load_cluster(path)
        me = cluster.node(self.cfg.node_name)
        if me is None:
            raise ConfigError("nodes", f"this node ({self.cfg.node_name}) is not listed", str(path))
        if me.ip != self.cfg.node_ip:
            raise ConfigError("nodes", f"{me.name} has ip {me.ip} but this node's nodeIP is {self.cfg.node_ip}",
                              str(path))
        self._cluster_stamp = (st.st_mtime, st.st_size) if st else None
        return cluster

    def _peer_configs(self) -> tuple[Any, ...]:
        """The BGP sessions this node should have: config peers plus the cluster topology."""
        from bgp.model import PeerConfig
        from podroute.datastore import PeerSpec, peers_for
        if self.cluster is not None:
            specs = peers_for(self.cfg.node_name, self.cluster, self.cfg.peers)
        else:
            specs = tuple(PeerSpec(p, "node") for p in self.cfg.peers)
        out = []
        for spec in specs:
            p = spec.peer
            out.append(PeerConfig(address=p.address, asn=p.asn, password=p.password, hold_time=p.hold_time,
                                  passive=p.passive, port=p.port, local_address=p.source_address or self.cfg.node_ip,
                                  multihop_ttl=p.multihop_ttl, max_prefixes=p.max_prefixes,
                                  max_prefixes_action=p.max_prefixes_action, rr_client=spec.rr_client,
                                  name=spec.node or None))
        return tuple(out)

    def _expected_next_hops(self) -> dict[Any, Any]:
        from podroute.datastore import expected_next_hops
        return expected_next_hops(self.cluster) if self.cluster is not None else {}

    async def _watch_cluster(self) -> None:
        """Poll the cluster file; a change re-derives the sessions (kube-router style: apply
        the change at once, keep running on the last good file when the new one is invalid)."""
        from podroute.schema import ConfigError
        path = self.cfg.cluster_file
        assert path is not None
        while True:
            await asyncio.sleep(CLUSTER_POLL_S)
            try:
                st = path.stat()
            except OSError:
                continue
            if (st.st_mtime, st.st_size) == self._cluster_stamp:
                continue
            try:
                self.cluster = self._load_cluster()
            except ConfigError as e:
                self._cluster_stamp = (st.st_mtime, st.st_size)
                log.error("cluster file rejected; keeping the previous one", extra={"kv": {"error": str(e)}})
                continue
            peers = self._peer_configs()
            log.info("cluster file changed", extra={"kv": {"nodes": len(self.cluster.nodes), "peers": len(peers)}})
            self.speaker.set_expected_next_hops(self._expected_next_hops())
            self.speaker.set_peers(peers)

    # --- collaborators -------------------------------------------------------------
    @staticmethod
    def _make_speaker(cfg: NodeConfig, on_routes: Any, agent: "Agent") -> Any:
        from bgp.model import ExportRoute, SpeakerConfig
        from bgp.speaker import Speaker
        me = agent.cluster.node(cfg.node_name) if agent.cluster is not None else None
        sc = SpeakerConfig(router_id=cfg.bgp_router_id, local_as=cfg.asn, local_address=cfg.node_ip,
                           peers=agent._peer_configs(),
                           announce=cfg.pod_cidrs, import_pools=tuple(p.cidr for p in cfg.ip_pools),
                           own_blocks=cfg.pod_cidrs, node_ip=cfg.node_ip,
                           listen_address=cfg.listen_address, listen_port=cfg.listen_port,
                           graceful_restart_time=cfg.graceful_restart_time,
                           state_dir=cfg.paths.state_dir / "bgp", exabgp_bin=_exabgp_bin(),
                           exabgp_python=_exabgp_python(),
                           import_extra=cfg.import_extra, accept_default=cfg.accept_default,
                           expected_next_hops=agent._expected_next_hops(),
                           export_extra=tuple(ExportRoute(s.cidr, s.communities) for s in cfg.service_cidrs),
                           route_reflector_cluster_id=me.rr_cluster_id if me else None)
        return Speaker(sc, on_changes=on_routes)

    def _workload_route(self, ep: Any) -> Any:
        from felix.routes import Route
        return Route.device(ipaddress.IPv4Network(f"{ep.ip}/32"), ep.host_ifname)

    def _stale_bgp_routes(self) -> list[Any]:
        try:
            existing = self.dataplane.dump_routes(table=self.routes.table, protocol=self.cfg.route_protocol)
        except Exception as e:  # noqa: BLE001 - a failed dump only means nothing to preserve
            log.warning("could not read existing routes", extra={"kv": {"error": str(e)}})
            return []
        desired = self.routes.desired()
        return [r for r in existing if r.dst not in desired and (r.gateway is not None or r.multipath)]

    # --- events -----------------------------------------------------------------------
    def kick(self) -> None:
        self._kick.set()

    def workload_added(self, ep: Any) -> None:
        self.routes.set_route("workloads", self._workload_route(ep))
        self.kick()

    def workload_removed(self, ep: Any) -> None:
        self.routes.remove_route("workloads", ipaddress.IPv4Network(f"{ep.ip}/32"))
        self.kick()

    def _on_bgp_changes(self, delta: Mapping[int, Any]) -> None:
        """Loc-RIB delta (prefix key -> BestRoute, or None when gone) into felix, per prefix.
        The speaker's prefix key and felix's dst_key are the same int (1 << length |
        network >> (32 - length)), so it indexes felix's tables as it is."""
        vxlan_changed = False
        plan = self._planner.plan
        set_route, remove_key = self.routes.set_route, self.routes.remove_key
        route_vxlan, stale = self._route_vxlan, self._stale
        for key, best in delta.items():
            route, vteps = plan(best.prefix, best) if best is not None else (None, _NO_VTEPS)
            old_vteps = route_vxlan.pop(key, _NO_VTEPS) if route_vxlan else _NO_VTEPS
            if vteps:
                route_vxlan[key] = vteps
            if vteps != old_vteps:
                vxlan_changed |= self._count_vteps(old_vteps, vteps)
            if stale:
                # Re-announced (replaces the stale route) or explicitly gone: no longer stale.
                stale.pop(key, None)
            if route is not None:
                set_route("bgp", route, key)
            else:
                remove_key("bgp", key)
        if vxlan_changed and self.vxlan is not None:
            from ipip.vxlan import VTEP, vtep_mac
            self.vxlan.set_remote_vteps({str(nh): VTEP(nh, nh, vtep_mac(str(nh))) for nh in self._vxlan_users})
        self._check_stale_release()
        self.kick()

    def _count_vteps(self, old: frozenset[Any], new: frozenset[Any]) -> bool:
        """Move one route's reference from the VTEPs in ``old`` to those in ``new``; True if
        the set of remote VTEPs in use changed."""
        changed = False
        for nh in old - new:
            self._vxlan_users[nh] -= 1
            if not self._vxlan_users[nh]:
                del self._vxlan_users[nh]
                changed = True
        for nh in new - old:
            changed |= nh not in self._vxlan_users
            self._vxlan_users[nh] = self._vxlan_users.get(nh, 0) + 1
        return changed

    def _check_stale_release(self) -> None:
        """End the graceful-restart hold once BGP has re-converged (or the timer ran out):
        previous-run routes that BGP did not re-announce are removed."""
        if self._stale_until is None:
            return
        if not (self._bgp_converged() or time.monotonic() >= self._stale_until):
            return
        # What BGP re-announced left self._stale in _on_bgp_changes: the rest is gone.
        gone = list(self._stale)
        for key in gone:
            self.routes.remove_key("bgp", key)
        log.info("BGP converged after restart; stale routes released",
                 extra={"kv": {"removed": len(gone)}})
        self._stale_until = None
        self._stale = {}

    def _bgp_converged(self) -> bool:
        """Every configured peer Established with its End-of-RIB in (RFC 4724 §4.1: defer
        until End-of-RIB from all peers, bounded by the restart time). A peer whose session
        is not back yet keeps the hold: in a mesh the node it dials first is not the only one
        whose routes we kept."""
        peers = self.speaker.status().peers
        return bool(peers) and all(p.state == "established" and p.eor_received for p in peers)

    def _on_drift(self) -> None:
        self.monitor_triggers += 1
        self.routes.mark_dirty()
        self.kick()

    # --- loops ------------------------------------------------------------------------
    async def _felix_loop(self) -> None:
        """Apply felix's desired state after each kick, on felix's own thread (felix.worker):
        dumps and writes wait on the kernel, never on the event loop. Routes that keep
        failing are retried with backoff and logged once, then summarised (felix.backoff)."""
        self.routes.start()
        try:
            await self._felix_apply_loop()
        finally:
            self.routes.stop()

    async def _felix_apply_loop(self) -> None:
        loop = asyncio.get_running_loop()
        retry: asyncio.TimerHandle | None = None
        while True:
            await self._kick.wait()
            await asyncio.sleep(DEBOUNCE_S)
            self._kick.clear()
            if self.guard.stopping:
                # Shutting down: whatever the speaker's teardown changes in our tables, the
                # routes stay in the FIB across a restart (as Calico's Felix), for the next
                # agent's graceful-restart hold to keep them until End-of-RIB.
                continue
            self._check_stale_release()  # End-of-RIB seen or timer expired since the last event
            res = await self.routes.apply()
            self.last_apply = {"added": res.added, "replaced": res.replaced, "deleted": res.deleted,
                               "errors": [f"{f.route.dst if f.route else 'dump'}: {f.message}"
                                          for f in res.errors[:STATUS_ROUTES]],
                               "duration_s": round(res.duration_s, 6), "at": time.time()}
            out = self.route_failures.observe(res, time.monotonic())
            self._log_apply(res, out)
            if retry is not None:
                retry.cancel()  # one retry timer: each failed apply used to start another chain
            retry = loop.call_later(out.retry_in, self.kick) if out.retry_in is not None else None

    def _log_apply(self, res: Any, out: Any) -> None:
        if res.changes or out.new:
            log.info("FIB applied", extra={"kv": {"added": res.added, "replaced": res.replaced,
                                                  "deleted": res.deleted, "errors": len(res.errors),
                                                  "duration_s": round(res.duration_s, 6)}})
        for f in out.new[:10]:
            log.warning("route not programmed", extra={"kv": {
                "dst": f.route.dst if f.route else "dump", "errno": f.errno, "error": f.message,
                "retry_in_s": out.retry_in}})
        if len(out.new) > 10:
            log.warning("more routes not programmed", extra={"kv": {"count": len(out.new) - 10}})
        if out.recovered:
            log.info("failing routes recovered", extra={"kv": {
                "count": len(out.recovered), "first": out.recovered[0][0] or "dump",
                "failed_attempts": out.recovered[0][1]}})
        if out.summary is not None:
            log.warning("routes still not programmed", extra={"kv": {**out.summary, "retry_in_s": out.retry_in}})

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.resync_interval)
            self.resyncs += 1
            self.routes.mark_dirty()
            self.kick()

    async def _monitor(self) -> None:
        from felix.monitor import RouteMonitor
        portid = getattr(self.dataplane, "portid", None)
        await RouteMonitor(self._on_drift, protocol=self.cfg.route_protocol, table=self.routes.table,
                           expected=self.routes.is_expected,
                           own_portids=(lambda: (self.dataplane.portid,)) if portid is not None else None).run()

    async def _cni_server(self) -> None:
        from cni.errors import CNIError
        from cni.reconcile import Reconciler
        from cni.server import CNIServer
        try:  # before the server accepts: no request may see a half-finished pod
            await Reconciler(self.cni).run()
        except CNIError as e:
            log.warning("could not reconcile IPAM records with the dataplane: %s", e.msg)
        try:
            if await self.cni.reap():  # veth pairs a previous run retired but did not delete
                log.info("deleted veth pairs retired by a previous run")
        except CNIError as e:
            log.warning("could not delete retired veth pairs: %s", e.msg)
        await CNIServer(self.cfg.paths.cni_socket, self.cni).run()

    def cni_readiness(self) -> str | None:
        """CNI STATUS (code 50 when not None): why this node cannot wire pods now."""
        if self._stop.is_set() or self.guard.stopping:
            return "the agent is shutting down"
        if self.guard.failed.is_set():
            return "an agent task failed; the agent is about to exit"
        if self.last_apply is None:
            return "the agent has not programmed its routes yet"
        return None

    # --- status -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        sp = self.speaker.status()
        peer_cfg = {p.address: p for p in self.speaker.config.peers}  # effective: config + cluster file
        peers = []
        rejections: dict[str, int] = {}
        for p in sp.peers:
            peers.append({"address": str(p.address), "asn": p.asn,
                          "type": "iBGP" if p.asn == self.cfg.asn else "eBGP",
                          "state": p.state, "since": p.since,
                          "prefixes_received": p.prefixes_received, "prefixes_accepted": p.prefixes_accepted,
                          "prefixes_rejected": p.prefixes_rejected, "info": p.last_error or "",
                          "stale_routes": p.stale_routes, "gr_restart_time": p.gr_restart_time,
                          "rr_client": p.rr_client, "reflected_routes": p.reflected_routes,
                          "eor_received": p.eor_received, "withdrawn_undecoded": p.withdrawn_undecoded,
                          "announced_undecoded": p.announced_undecoded,
                          "passive": peer_cfg[p.address].passive if p.address in peer_cfg else None})
            for reason, n in p.rejected_by_reason:
                rejections[reason] = rejections.get(reason, 0) + n
        desired = self.routes.desired()
        by_owner: dict[str, int] = {}
        for owner in ("workloads", "blocks", "bgp"):
            by_owner[owner] = len(self.routes.owned(owner))
        by_owner["total"] = len(desired)
        return {
            "node": {"name": self.cfg.node_name, "ip": str(self.cfg.node_ip), "asn": self.cfg.asn,
                     "router_id": str(self.cfg.bgp_router_id), "pod_cidrs": [str(c) for c in self.cfg.pod_cidrs]},
            "started": self.started,
            "bgp": {"peers": peers, "rejections": rejections,
                    "exabgp": {"pid": sp.exabgp_pid, "restarts": sp.exabgp_restarts, "last_exit": sp.last_exit},
                    "announced": [str(a) for a in sp.announced],
                    # A status call must stay cheap with 100k routes: the first ones and a count.
                    "routes_total": len(self.speaker.best_routes_view()),
                    "routes": [{"prefix": str(r.prefix), "next_hops": [str(n) for n in r.next_hops],
                                "peers": [str(p) for p in r.peers]}
                               for r in heapq.nsmallest(STATUS_ROUTES, self.speaker.best_routes_view().values(),
                                                        key=lambda r: r.prefix)]},
            "fib": {"protocol": self.cfg.route_protocol, "desired_by_owner": by_owner,
                    "last_apply": self.last_apply, "resyncs": self.resyncs, "monitor_triggers": self.monitor_triggers,
                    "graceful_restart_hold": self._stale_until is not None,
                    "failing_routes": self.route_failures.failing, "worker": self.routes.stats()},
            "loop": self.looplag.status(),
            "encapsulation": {
                "pools": [{"cidr": str(p.cidr), "ipip": p.ipip.value, "vxlan": p.vxlan.value} for p in self.pool_encaps],
                "underlay": {"interface": self.underlay_if, "subnets": [str(n) for n in self.local_subnets],
                             "mtu": self.underlay_mtu},
                "pod_mtu": self.pod_mtu, "tunnel_address": str(self.tunnel_address),
                "tunl0": self.tunl0.status.__dict__ if self.tunl0 else None,
                "vxlan": self.vxlan.status.__dict__ if self.vxlan else None},
            "workloads": len(self.cni.endpoints()),
            "tasks": self.guard.running(),
            "task_failures": [f.__dict__ for f in self.guard.failures],
        }

    # --- lifecycle --------------------------------------------------------------------
    async def drain(self, *, settle_s: float, timeout_s: float) -> dict[str, Any]:
        """Withdraw every route we announce (:meth:`bgp.speaker.Speaker.drain`: bounded by
        ``timeout_s``, then ``settle_s`` s for the peers to act on it), then stop the agent
        (exit 0). Returns the speaker's report as a dict, or ``{"error": ...}`` if a drain or
        stop is already under way. Our FIB routes stay, as on every stop."""
        if self._draining or self._stop.is_set():
            return {"error": "the agent is already stopping or draining"}
        self._draining = True
        log.info("draining: withdrawing our routes before stopping",
                 extra={"kv": {"settle_s": settle_s, "timeout_s": timeout_s}})
        try:
            report = (await self.speaker.drain(settle_s=settle_s, timeout=timeout_s)).as_dict()
        except Exception as e:  # noqa: BLE001 - the operator gets the reason; the agent stops as asked
            log.exception("drain failed")
            report = {"error": f"drain failed: {e}"}
        self._stop_reason = "drained"
        self._stop.set()
        return report

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT or a drain (exit 0) or a guarded task crashes (exit 1).

        SIGTERM (``systemctl stop`` / ``restart``) keeps every route: the speaker ends its
        sessions so that peers keep ours as stale (RFC 4724 §4.2) and our FIB is left as it
        is. Withdrawing first is :meth:`drain` (``podroute node drain``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.cfg.paths.run_dir.mkdir(parents=True, exist_ok=True)
        log.info("agent starting", extra={"kv": {"node": self.cfg.node_name, "node_ip": self.cfg.node_ip,
                                                 "pod_cidrs": ",".join(map(str, self.cfg.pod_cidrs)),
                                                 "peers": len(self.cfg.peers), "config": self.cfg.source}})
        self.kick()
        g = self.guard
        g.start("loop-lag", self.looplag.run)
        g.start("felix", self._felix_loop)
        g.start("resync", self._resync_loop)
        if self._start_monitor:
            g.start("route-monitor", self._monitor)
        g.start("cni-server", self._cni_server)
        g.start("status-server", lambda: statusd.serve(self.cfg.paths.agent_socket, self.status,
                                                       drain=self.drain))
        g.start("bgp-speaker", self.speaker.run)
        if self.cfg.cluster_file is not None:
            g.start("cluster-watch", self._watch_cluster)
        if self.tunl0 is not None:
            g.start("tunl0", self.tunl0.run)
        if self.vxlan is not None:
            g.start("vxlan", self.vxlan.run)
        try:
            await asyncio.to_thread(self._remove_unused_tunnels)
        except Exception as e:  # noqa: BLE001 - cleanup of a previous mode must not stop the agent
            log.warning("could not clean up an unused tunnel device", extra={"kv": {"error": str(e)}})
        stop = asyncio.create_task(self._stop.wait())
        failed = asyncio.create_task(g.failed.wait())
        await asyncio.wait({stop, failed}, return_when=asyncio.FIRST_COMPLETED)
        code = 1 if g.failed.is_set() else 0
        log.info("agent stopping", extra={"kv": {"reason": "task failure" if code else self._stop_reason}})
        g.stopping = True  # from here on, a task returning is the shutdown, not a crash
        try:
            # Graceful: no withdrawal (a drain did that already, if asked for).
            await asyncio.wait_for(self.speaker.stop(), timeout=15)
        except Exception as e:  # noqa: BLE001 - shutting down regardless
            log.warning("speaker did not stop cleanly", extra={"kv": {"error": str(e)}})
        await g.cancel_all()
        for t in (stop, failed):
            t.cancel()
        for sock in (self.cfg.paths.cni_socket, self.cfg.paths.agent_socket):
            try:
                sock.unlink()
            except FileNotFoundError:
                pass
        # Our routes stay in the FIB on purpose (as Calico's Felix): pods keep working while
        # the agent restarts, and the next agent reconciles whatever changed meanwhile.
        log.info("agent stopped", extra={"kv": {"exit_code": code}})
        return code
