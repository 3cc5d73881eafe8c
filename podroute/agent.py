"""The per-node agent: wires felix (FIB), bgp (speaker), cni (pod wiring) and ipip together.

Data flow: the speaker hands Loc-RIB changes to :class:`podroute.bgp_fib.BgpToFib`, which turns
best paths into felix routes; the CNI plugin hands each workload to felix
(:class:`podroute.workloads.FelixWorkloads`), the only writer of its ``/32 dev <veth>`` route;
felix applies on every event and resyncs every ``resyncInterval`` seconds
(:class:`podroute.felix_loop.FelixDriver`); the netlink monitor marks felix dirty when someone
touches our routes. After a restart, the routes the previous run programmed are held until BGP
re-converges (:class:`podroute.gr_hold.RestartHold`). Encapsulation devices come from
:class:`podroute.encap.Encap`, the cluster topology from the datastore's events
(:class:`podroute.clusterwatch.ClusterWatch` over :func:`podroute.datastore.open.open_datastore`'s
store), the status snapshot from :mod:`podroute.status_view`. On a datastore that claims blocks
(etcd) the node starts from :class:`podroute.blocks_wiring.NodeStart` (its claimed blocks and the
datastore's pools) and :class:`podroute.blocks_wiring.BlocksWiring` keeps its blocks, their
announcements, blackholes and local IPAM in step at run time. Readiness comes from
:mod:`podroute.health` (systemd's notifications: :mod:`podroute.sdnotify`), metrics and the
health endpoints from :mod:`podroute.metrics` when configured.

The agent builds the real kernel adapters (pyroute2, netlink) and the ExaBGP speaker unless
given others; ``podroute.cli`` imports this module only for ``node run``, so ``--help`` and the
client commands load none of them.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from cni.errors import CNIError
from cni.ipam import IPAM
from cni.netlink_wiring import NetlinkWiring
from cni.plugin import CNIPlugin
from cni.reconcile import Reconciler
from cni.server import CNIHandler, CNIServer
from cni.wiring import Wiring
from felix.dataplane import RouteDataplane
from felix.monitor import RouteMonitor
from felix.netlink import NetlinkDataplane
from felix.routes import Route
from felix.routetable import RouteTable
from felix.worker import RouteTableWorker
from ipip.dataplane import IPIPDataplane
from ipip.netlink import NetlinkDataplane as IPIPNetlink
from podroute import statusd
from podroute.bgp_fib import BgpToFib
from podroute.blocks_wiring import BlocksWiring, NodeStart
from podroute.clusterwatch import ClusterWatch
from podroute.config import NodeConfig
from podroute.datastore import Cluster, Datastore, Node
from podroute.datastore.open import open_datastore
from podroute.encap import Encap
from podroute.felix_loop import FelixDriver
from podroute.gr_hold import RestartHold, previous_bgp_routes
from podroute.health import Health
from podroute.ipamblocks import static_block_check
from podroute.looplag import LoopLag
from podroute.metrics import AgentMetrics
from podroute.routing import FibPlanner
from podroute.sdnotify import Notifier
from podroute.speaker_wiring import SpeakerFactory, apply_cluster, exabgp_speaker
from podroute.status_view import bgp_section, datastore_section, fib_section, node_section
from podroute.tasks import TaskGuard
from podroute.vteps import VtepRefs
from podroute.workloads import FelixWorkloads, workload_route

log = logging.getLogger("podroute.agent")
SPEAKER_STOP_S = 15


class Agent:
    """One node's podroute agent. ``await run()`` until SIGTERM/SIGINT, a drain or a task crash.

    ``dataplane`` (felix), ``wiring`` (CNI), ``ipip_dataplane`` and ``speaker_factory`` default
    to the kernel adapters and the ExaBGP speaker; tests pass fakes. ``speaker_factory(cfg,
    on_changes, cluster)`` gets the Loc-RIB callback and the cluster topology (or None). ``start_monitor=False``
    leaves out the netlink route monitor. ``datastore`` defaults to the config's
    (:func:`open_datastore`); one that claims blocks needs ``start``
    (:func:`podroute.blocks_wiring.start_node` on it, or ``prepare``)."""

    def __init__(self, cfg: NodeConfig, *, dataplane: RouteDataplane | None = None,
                 wiring: Wiring | None = None, speaker_factory: SpeakerFactory | None = None,
                 start_monitor: bool = True, ipip_dataplane: IPIPDataplane | None = None,
                 datastore: Datastore | None = None, start: NodeStart | None = None) -> None:
        store = datastore if datastore is not None else open_datastore(cfg)
        if start is not None:
            cfg = start.config(cfg)  # the claimed blocks and the datastore's pools
        elif store is not None and store.supports_claims:
            raise ValueError(f"the {store.name} datastore claims blocks: build the agent with the node's start")
        self.cfg = cfg
        self.guard = TaskGuard()
        self.started = time.time()
        self._stop = asyncio.Event()
        self._stop_reason = "signal"
        self._draining = False
        self._start_monitor = start_monitor
        self.looplag = LoopLag()
        self.dataplane = dataplane if dataplane is not None else NetlinkDataplane()
        # One felix thread owns the RouteTable from run() on (felix.worker): setters are queued.
        self.routes = RouteTableWorker(RouteTable(self.dataplane, protocol=cfg.route_protocol))
        self.routes.set_routes("blocks", [Route.blackhole(c) for c in cfg.pod_cidrs])
        self.felix = FelixDriver(self.routes, before_apply=self._before_apply,
                                 stopping=lambda: self.guard.stopping, resync_s=cfg.resync_interval)

        self.encap = Encap(cfg, ipip_dataplane if ipip_dataplane is not None else IPIPNetlink())
        cfg.paths.state_dir.mkdir(parents=True, exist_ok=True)
        # The node's tunnel address is the first of its first block: no pod may get it.
        self.blocks = BlocksWiring(store, start, cfg) if store is not None and start is not None else None
        self.ipam = IPAM(cfg.paths.state_dir / "ipam", blocks=cfg.pod_cidrs, reserved=[self.encap.tunnel_address],
                         on_exhausted=self.blocks.exhausted if self.blocks is not None else lambda: None)
        self.cni = CNIPlugin(ipam=self.ipam, wiring=wiring if wiring is not None else NetlinkWiring(),
                             mtu=self.encap.pod_mtu, protocol=cfg.route_protocol,
                             workloads=FelixWorkloads(self.routes, self.felix), readiness=self.cni_readiness)
        self.routes.set_routes("workloads", [workload_route(ep) for ep in self.cni.endpoints()])

        self.cluster: ClusterWatch | None = None
        cluster: Cluster | None = None
        if store is not None:
            self.cluster = ClusterWatch(store, node_name=cfg.node_name, node_ip=cfg.node_ip, on_change=self._on_cluster,
                                        register=start.node if start else Node(cfg.node_name, cfg.node_ip, cfg.asn),
                                        ttl_s=cfg.datastore.lease_ttl)
            snapshot = start.snapshot if start is not None else store.load()  # type: ignore[attr-defined]  # file
            cluster = self.cluster.prime(snapshot)
            if start is None:
                static_block_check(cfg, snapshot)
        self.hold = RestartHold(self.routes, lambda: self.speaker.status(), cfg.graceful_restart_time)
        stale = previous_bgp_routes(self.dataplane, table=self.routes.table, protocol=cfg.route_protocol,
                                    desired=self.routes.desired())
        self.hold.keep(stale)
        if stale:
            self.routes.set_routes("bgp", stale)
        vxlan = self.encap.vxlan
        self.bgp = BgpToFib(FibPlanner(node_ip=cfg.node_ip, pools=self.encap.pools,
                                       local_subnets=self.encap.underlay.subnets),
                            self.routes, VtepRefs(vxlan.set_remote_vteps if vxlan else None),
                            self.hold, self.felix.kick)
        self.speaker = (speaker_factory or exabgp_speaker)(cfg, self.bgp.apply, cluster)
        self.speaker.set_announcements(cfg.pod_cidrs)
        if self.blocks is not None and self.cluster is not None:
            self.blocks.attach(ipam=self.ipam, routes=self.routes, kick=self.felix.kick, speaker=self.speaker)
            self.cluster.listeners.append(self.blocks.handle)
        # Readiness (/readyz, status, systemd READY=1); metrics only when configured.
        self.health = Health(self, peer_wait_s=cfg.graceful_restart_time)
        self.notifier = Notifier()
        self.cni_handler: CNIHandler = self.cni
        self.metrics: AgentMetrics | None = None
        if cfg.metrics is not None:
            self.metrics = AgentMetrics(self, str(cfg.metrics.address), cfg.metrics.port)
            self.metrics.install(self)

    # --- events -----------------------------------------------------------------------
    def kick(self) -> None:
        self.felix.kick()

    def _before_apply(self) -> None:
        self.hold.check()  # End-of-RIB seen or the timer expired since the last event

    def _on_cluster(self, cluster: Cluster) -> None:
        apply_cluster(self.speaker, self.cfg, cluster)

    def cni_readiness(self) -> str | None:
        """CNI STATUS (code 50 when not None): why this node cannot wire pods now."""
        if self._stop.is_set() or self.guard.stopping:
            return "the agent is shutting down"
        if self.guard.failed.is_set():
            return "an agent task failed; the agent is about to exit"
        if self.felix.last_apply is None:
            return "the agent has not programmed its routes yet"
        return None

    # --- tasks ------------------------------------------------------------------------
    async def _monitor(self) -> None:
        # The netlink dataplane's own writes are echoes, not drift; fakes have no portid.
        portid = getattr(self.dataplane, "portid", None)
        own = (lambda: (self.dataplane.portid,)) if portid is not None else None
        await RouteMonitor(self.felix.on_drift, protocol=self.cfg.route_protocol, table=self.routes.table,
                           expected=self.routes.is_expected, own_portids=own).run()

    async def _cni_server(self) -> None:
        try:  # before the server accepts: no request may see a half-finished pod
            await Reconciler(self.cni).run()  # ends by deleting the pairs a previous run retired
        except CNIError as e:  # the IPAM state could not be read: the reconciler did nothing
            log.warning("could not reconcile IPAM records with the dataplane: %s", e.msg)
            try:
                if await self.cni.reap():  # veth pairs a previous run retired but did not delete
                    log.info("deleted veth pairs retired by a previous run")
            except CNIError as e2:
                log.warning("could not delete retired veth pairs: %s", e2.msg)
        await CNIServer(self.cfg.paths.cni_socket, self.cni_handler).run()

    # --- status -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The ``status --json`` snapshot (see :mod:`podroute.status_view`)."""
        f = self.felix
        return {
            "node": node_section(self.cfg, self.blocks),
            "started": self.started,
            "bgp": bgp_section(self.speaker, self.cfg.asn),
            "fib": fib_section(self.routes, last_apply=f.last_apply, resyncs=f.resyncs, drifts=f.drifts,
                               hold=self.hold.active, failing=f.failures.failing),
            "loop": self.looplag.status(),
            "encapsulation": self.encap.status(),
            "workloads": len(self.cni.endpoints()),
            "datastore": datastore_section(self.cluster, self.blocks, self.cfg),
            "tasks": self.guard.running(),
            "task_failures": [f.__dict__ for f in self.guard.failures],
            "health": {"ready": self.health.readiness().as_dict(), "live": self.health.liveness().as_dict()},
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

    def _start_tasks(self) -> None:
        g = self.guard
        g.start("loop-lag", self.looplag.run)
        g.start("felix", self.felix.run)
        g.start("resync", self.felix.resync_loop)
        if self._start_monitor:
            g.start("route-monitor", self._monitor)
        g.start("cni-server", self._cni_server)
        g.start("status-server", lambda: statusd.serve(self.cfg.paths.agent_socket, self.status,
                                                       drain=self.drain))
        g.start("bgp-speaker", self.speaker.run)
        if self.cluster is not None:
            g.start("cluster-watch", self.cluster.run)
        if self.blocks is not None:
            g.start("ipam-blocks", self.blocks.run)
        for name, mgr in (("tunl0", self.encap.tunl0), ("vxlan", self.encap.vxlan)):
            if mgr is not None:
                g.start(name, mgr.run)
        g.start("readiness", lambda: self.notifier.readiness(self.health.readiness, self.health.status_line))
        if self.notifier.watchdog_s is not None:
            g.start("sd-watchdog", self.notifier.watchdog)
        if self.metrics is not None:
            g.start("metrics", self.metrics.run)

    async def run(self, *, signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (``signals``) or a drain (exit 0) or a guarded task crashes
        (exit 1).

        SIGTERM (``systemctl stop`` / ``restart``) keeps every route: the speaker ends its
        sessions so that peers keep ours as stale (RFC 4724 §4.2) and our FIB is left as it
        is (as Calico's Felix: pods keep working while the agent restarts). Withdrawing first
        is :meth:`drain` (``podroute node drain``)."""
        loop = asyncio.get_running_loop()
        if signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
        self.cfg.paths.run_dir.mkdir(parents=True, exist_ok=True)
        log.info("agent starting", extra={"kv": {"node": self.cfg.node_name, "node_ip": self.cfg.node_ip,
                                                 "pod_cidrs": ",".join(map(str, self.cfg.pod_cidrs)),
                                                 "peers": len(self.cfg.peers), "config": self.cfg.source}})
        self.kick()
        if self.hold.active:  # the hold ends on time even if no BGP event or resync comes by then
            loop.call_later(self.cfg.graceful_restart_time + 0.1, self.kick)
        self._start_tasks()
        try:
            await asyncio.to_thread(self.encap.remove_unused)
        except Exception as e:  # noqa: BLE001 - cleanup of a previous mode must not stop the agent
            log.warning("could not clean up an unused tunnel device", extra={"kv": {"error": str(e)}})
        g = self.guard
        stop = asyncio.create_task(self._stop.wait())
        failed = asyncio.create_task(g.failed.wait())
        await asyncio.wait({stop, failed}, return_when=asyncio.FIRST_COMPLETED)
        code = 1 if g.failed.is_set() else 0
        log.info("agent stopping", extra={"kv": {"reason": "task failure" if code else self._stop_reason}})
        g.stopping = True  # from here on, a task returning is the shutdown, not a crash
        self.notifier.stopping()
        try:
            await asyncio.wait_for(self.speaker.stop(), timeout=SPEAKER_STOP_S)  # graceful: no withdrawal
        except Exception as e:  # noqa: BLE001 - shutting down regardless
            log.warning("speaker did not stop cleanly", extra={"kv": {"error": str(e)}})
        await g.cancel_all()
        if self.cluster is not None:
            await self.cluster.datastore.close()
        for t in (stop, failed):
            t.cancel()
        for sock in (self.cfg.paths.cni_socket, self.cfg.paths.agent_socket):
            sock.unlink(missing_ok=True)
        self.notifier.close()
        log.info("agent stopped", extra={"kv": {"exit_code": code}})
        return code
