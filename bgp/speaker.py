"""The node's BGP speaker: a facade over the modules that supervise ExaBGP 5 and turn its
line API into a Loc-RIB.

Process layout: :meth:`Speaker.run` serves a unix socket in ``state_dir`` and runs ExaBGP as a
child (bgp/exabgp_process.py). ExaBGP runs bgp/relay.py as its API helper, which connects to
that socket and hands over its stdin/stdout pipes (bgp/handoff.py); each hand-off is one API
session (:class:`bgp.api.ApiSession`) whose events this class dispatches to:

- bgp/adj_rib_in.py: received paths, import policy, max-prefix limits, the Loc-RIB;
- bgp/graceful_restart.py: RFC 4724, ours (End-of-RIB after the replay) and the peers'
  (stale paths, timers, sweep);
- bgp/adj_rib_out.py: the one writer of commands (announcements, reflection, teardowns,
  End-of-RIB, reloads).

Stopping (:meth:`Speaker.stop`) withdraws nothing: the sessions end without a NOTIFICATION,
so peers keep our routes as stale until the next run's End-of-RIB (a restart loses no
traffic). :meth:`Speaker.drain` is the separate, explicit withdrawal for a node that leaves.

Runtime peer changes (:meth:`Speaker.set_peers`): the config file is rewritten and ExaBGP
reloads it on SIGUSR1 (unchanged neighbors keep their sessions, added ones start, removed
ones stop); bgp/reload.py keeps one reload in flight, confirms it through the API and
signals again until ExaBGP holds the configured neighbors (``reload_pending`` in status).
Added/changed neighbors get our announcements replayed per neighbor once it has.

Why one file of ~430 lines: it holds only the public surface and the event dispatch; every
concern behind them has its own module (above).
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterable, Mapping

from . import api
from .adj_rib_in import AdjRibIn, withdrawn_keys
from .adj_rib_out import AdjRibOut
from .drain import DrainReport, drain
from .errors import BGPError, ConfigError
from .exabgp_config import check_community, render_config
from .exabgp_process import ExaBGPProcess
from .graceful_restart import GracefulRestart
from .model import (BestRoute, ExportRoute, PathAttrs, PeerConfig, PeerStatus, SpeakerConfig,
                    SpeakerStatus)
from .policy import ImportPolicy
from .supervisor import Backoff

_STATE_NAMES = {"connected": "connect", "up": "established", "down": "down"}
_UNIX_PATH_MAX = 107

Changes = Mapping[int, "BestRoute | None"]


class _Peer:
    """Session state of one neighbor as ExaBGP reports it."""

    __slots__ = ("address", "asn", "state", "since", "last_error", "eor_received", "flaps",
                 "updates_received")

    def __init__(self, address: IPv4Address, asn: int) -> None:
        self.address = address
        self.asn = asn
        self.state = "idle"
        self.since = time.time()
        self.last_error: str | None = None
        self.eor_received = False
        self.flaps = 0              # times the session left Established
        self.updates_received = 0   # UPDATE messages (one ExaBGP update event each)

    def set_state(self, state: str) -> None:
        if state != self.state:
            if self.state == "established":
                self.flaps += 1
            self.state = state
            self.since = time.time()
            # End-of-RIB (RFC 4724 §2) marks the end of one session's initial update burst.
            self.eor_received = False


class Speaker:
    """Runs and supervises ExaBGP for one node; see module doc.

    ``on_changes(delta)`` receives the Loc-RIB changes since its previous call: prefix key
    (bgp.prefix) -> the new BestRoute (its ``prefix`` is the prefix), or None when withdrawn
    (possibly a key never delivered: a route that came and went between two calls).
    Calls are coalesced to at most one per event-loop pass, O(changes) rather than O(table),
    and also made with an empty delta when a peer's End-of-RIB arrives (a consumer waiting for
    initial convergence re-checks then). It runs in the event loop and must not block.
    Timing knobs (seconds) are keyword-only; ``exabgp_speed`` is ``exabgp.reactor.speed``;
    ``clock`` (monotonic seconds) drives the graceful-restart timers (tests pass a fake one
    and call :meth:`tick`).
    """

    def __init__(self, config: SpeakerConfig, on_changes: Callable[[Changes], None], *,
                 log: logging.Logger = logging.getLogger("bgp.speaker"),
                 exabgp_speed: float = 0.1, ack_timeout: float = 30.0,
                 kill_timeout: float = 5.0, backoff: Backoff | None = None,
                 relay_python: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.log = log
        self._speed = exabgp_speed
        self._ack_timeout = ack_timeout
        self._relay_python = relay_python or ("/usr/bin/python3" if os.path.exists(
            "/usr/bin/python3") else sys.executable)
        self.socket_path = Path(config.state_dir) / "api.sock"
        self.config_path = Path(config.state_dir) / "exabgp.conf"
        if len(str(self.socket_path)) > _UNIX_PATH_MAX:
            raise ConfigError(f"state_dir too long for a unix socket path: {self.socket_path}")
        self._peer_cfgs: dict[IPv4Address, PeerConfig] = {p.address: p for p in config.peers}
        self._peers = {p.address: _Peer(p.address, p.asn) for p in config.peers}
        self.rib_in = AdjRibIn(config.local_as, ImportPolicy(
            tuple(config.import_pools), tuple(config.own_blocks), config.node_ip,
            import_extra=tuple(config.import_extra), accept_default=config.accept_default,
            expected_next_hops=dict(config.expected_next_hops), router_id=config.router_id,
            cluster_id=config.route_reflector_cluster_id), log, on_changes)
        self.gr = GracefulRestart(config.graceful_restart_time, config.gr_stale_path_time,
                                  clock, self._sweep, log)
        self.process = ExaBGPProcess(
            lambda: self.config, self.config_path, speed=exabgp_speed,
            kill_timeout=kill_timeout, backoff=backoff or Backoff(),
            secrets=[p.password for p in config.peers if p.password],
            on_start=lambda: self.rib_out.process_started(), on_exit=self._on_exabgp_gone,
            log=log)
        self.rib_out = AdjRibOut(
            config.announce, {r.prefix: tuple(r.communities) for r in config.export_extra},
            gr=self.gr, rib=self.rib_in.rib, config=lambda: self.config,
            peers=lambda: self._peer_cfgs, established=self._established,
            reload=self.process.signal_reload, log=log)
        for p in config.peers:
            self.rib_in.add_peer(p.address, p.asn)
            self.gr.add_peer(p.address)
        self._peers_set = asyncio.Event()  # set_peers() gave a non-empty set: (re)start ExaBGP
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False

    # ---------------- public API ----------------

    def set_announcements(self, prefixes: Iterable[IPv4Network]) -> None:
        """Replace the node's own announced blocks; sent (diffed) when an API session is up,
        with ``next-hop self`` (our session's local address, for iBGP and eBGP alike)."""
        self.rib_out.blocks = set(prefixes)
        self.rib_out.wake.set()

    def set_exports(self, routes: Iterable[ExportRoute]) -> None:
        """Replace the extra exported prefixes (service CIDRs) and their communities
        ("ASN:VALUE", RFC 1997). Raises ConfigError on a malformed community (nothing
        changes then). A prefix also in the blocks is announced once, with the communities."""
        new: dict[IPv4Network, tuple[str, ...]] = {}
        for r in routes:
            for c in r.communities:
                check_community(c)
            new[r.prefix] = tuple(r.communities)
        self.rib_out.exports = new
        self.rib_out.wake.set()

    def set_expected_next_hops(self, mapping: Mapping[IPv4Network, IPv4Address]) -> None:
        """Replace node block → expected next hop (the owning node's IP) and re-evaluate
        every received path against the new policy (reason ``wrong_next_hop``)."""
        policy = replace(self.rib_in.policy, expected_next_hops=dict(mapping))
        self.rib_in.set_policy(policy, self._peer_cfgs, self.config.local_as)
        if self.config.route_reflector_cluster_id is not None:
            self.rib_out.wake.set()

    def set_peers(self, peers: Iterable[PeerConfig]) -> None:
        """Replace the neighbor set at run time without touching unchanged sessions.

        Rewrites the ExaBGP config (0600) and, once an API session is up, has ExaBGP reload
        it (SIGUSR1, coalesced and confirmed: bgp/reload.py; calls in quick succession
        share a reload): unchanged neighbors keep their sessions, added ones start, changed
        ones are re-established, removed ones are stopped. Removed peers' routes are flushed
        at once (no graceful restart) and what we reflected to/from them is withdrawn.
        Raises ConfigError (nothing changes) when the new set cannot be rendered.
        """
        new = tuple(peers)
        cfg = replace(self.config, peers=new)
        text = render_config(cfg, self.socket_path, self._relay_python) if new else None  # validates
        old = self._peer_cfgs
        new_map = {p.address: p for p in new}
        removed = [a for a in old if a not in new_map]
        added = [a for a in new_map if a not in old]
        changed = [a for a in new_map if a in old and old[a] != new_map[a]]
        self.config = cfg
        self._peer_cfgs = new_map
        secrets = self.process.secrets
        secrets.extend(p.password for p in new if p.password and p.password not in secrets)
        for a in removed:
            self.rib_out.peer_removed(a)
            self.gr.remove_peer(a)
            self.rib_in.remove_peer(a)
            self._peers.pop(a, None)
        for a in added + changed:
            p = new_map[a]
            if a in self._peers:
                self._peers[a].asn = p.asn
            else:
                self._peers[a] = _Peer(a, p.asn)
            self.rib_in.add_peer(a, p.asn)
            self.gr.add_peer(a)
            self.rib_out.peer_added(a)
        self.log.info("peers changed: %d added, %d changed, %d removed",
                      len(added), len(changed), len(removed))
        if self._running and text is not None:
            self.process.write_config(text)
            self.rib_out.request_reload()
            self._peers_set.set()
        elif self._running and self.process.pid is not None:
            self.log.info("no BGP peers left: stopping ExaBGP")
            asyncio.get_running_loop().create_task(self.process.terminate())
        if removed or added or changed:
            self.rib_in.notify()
        self.rib_out.wake.set()

    def status(self) -> SpeakerStatus:
        """A snapshot: per-peer state and counters, ExaBGP pid/restarts/last exit."""
        peers = []
        for addr, p in self._peers.items():
            accepted, rejected, by_reason = self.rib_in.counts(addr)
            teardowns, withdrawn_undecoded, announced_undecoded = self.rib_in.stats(addr)
            adj = self.rib_in.rib.peer_keys(addr)
            cfg = self._peer_cfgs.get(addr)
            peers.append(PeerStatus(
                address=addr, asn=p.asn, state=p.state, since=p.since,
                prefixes_received=accepted + rejected, prefixes_accepted=accepted,
                prefixes_rejected=rejected, last_error=p.last_error,
                rejected_by_reason=tuple(sorted(by_reason.items())),
                eor_received=p.eor_received,
                stale_routes=sum(1 for q in self.gr.stale_keys(addr) if q in adj),
                gr_restart_time=self.gr.advertised_time(addr),
                max_prefixes_teardowns=teardowns,
                reflected_routes=self.rib_out.reflected_count.get(addr, 0),
                rr_client=bool(cfg and cfg.rr_client),
                withdrawn_undecoded=withdrawn_undecoded,
                announced_undecoded=announced_undecoded,
                flaps=p.flaps, updates_received=p.updates_received))
        return SpeakerStatus(
            peers=tuple(peers), exabgp_pid=self.process.pid,
            exabgp_restarts=self.process.restarts, last_exit=self.process.last_exit,
            announced=tuple(sorted(self.rib_out.desired())),
            prefixes_sent=dict(self.rib_out.prefixes_sent),
            reloads=self.rib_out.reloads.signals, reload_retries=self.rib_out.reloads.retries,
            reload_pending=self.rib_out.reloads.missing)

    def best_routes(self) -> Mapping[IPv4Network, BestRoute]:
        """The current Loc-RIB (a copy)."""
        return self.rib_in.rib.loc_rib()

    def best_routes_view(self) -> Mapping[IPv4Network, BestRoute]:
        """The current Loc-RIB as a live read-only view (no copy; do not hold across awaits)."""
        return self.rib_in.rib.loc_rib_view()

    def received_routes(self, peer: IPv4Address) -> Mapping[IPv4Network, PathAttrs]:
        """``peer``'s pre-policy Adj-RIB-In (a copy; empty for an unknown peer)."""
        return self.rib_in.pre_policy(peer)

    def tick(self) -> None:
        """Apply graceful-restart timer expiries due at ``clock()`` (RFC 4724 §4.2, see
        bgp/graceful_restart.py). Called by internal timers; safe to call any time."""
        self.gr.tick()

    async def run(self) -> None:
        """Serve the relay socket and keep ExaBGP running until :meth:`stop`.

        Restarts ExaBGP with exponential backoff (bgp/exabgp_process.py). Raises ConfigError
        if the config cannot be rendered, BGPError if the socket cannot be served.
        """
        if self._running:
            raise BGPError("Speaker.run() is already running")
        if self.config.peers:
            self.process.write_config(render_config(self.config, self.socket_path,
                                                    self._relay_python))
        try:
            # Without peers no config is rendered, and the relay socket still needs the dir.
            Path(self.config.state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BGPError(f"cannot prepare state dir {self.config.state_dir}: {exc}") from exc
        self._running = True
        try:
            await self.process.serve(
                self.socket_path, self._on_event, self.rib_out.session_started,
                self._ack_timeout, self._stop, self._peers_set,
                self.rib_out.run(lambda: self.process.session, self._stop.is_set))
        finally:
            self.gr.cancel()
            self._running = False
            self._stopped.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """End the sessions so that peers keep our routes as stale (RFC 4724 §4.2), and wait
        (``timeout`` s plus twice ``kill_timeout``) for :meth:`run` to return.

        Nothing is withdrawn: ExaBGP gets SIGTERM by PID and, with graceful restart
        negotiated (we always advertise it), closes each session without a NOTIFICATION
        (ExaBGP 5.0's peer teardown: "closing the session without notification"); SIGKILL
        after ``kill_timeout`` is a transport failure to the peers too. BIRD 2 keeps a
        peer's routes only on a transport failure (not on a NOTIFICATION; it has no RFC 8538),
        FRR likewise unless the N bit was exchanged, which ExaBGP never sets. Our own Loc-RIB
        is flushed (an administrative stop by us). To withdraw everything first (a node that
        is leaving), call :meth:`drain` before this.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self.rib_out.wake.set()
        for addr in list(self._peers):
            self._flush_peer(addr)
        if not self._running:
            return
        await self.process.terminate()
        try:
            await asyncio.wait_for(self._stopped.wait(),
                                   timeout + 2 * self.process.kill_timeout)
        except asyncio.TimeoutError:
            self.log.error("speaker run() did not finish within the stop timeout")

    async def drain(self, settle_s: float = 2.0, timeout: float = 10.0) -> DrainReport:
        """Withdraw every route we announce or reflect and wait until the peers have it
        (see bgp/drain.py): ExaBGP's acks, then empty TCP send queues to every Established
        peer, both bounded by ``timeout`` s, then ``settle_s`` s for the peers to act on it.

        From here on nothing is announced (set_announcements / set_exports still record,
        but the sync loop sends only withdrawals, and End-of-RIB to a session that comes
        back). The speaker keeps running; :meth:`stop` ends it.
        """
        withdrawn = self.rib_out.drain()
        return await drain(withdrawn, self._drained, lambda: [
            a for a, p in self._peers.items() if p.state == "established"],
            lambda: list(self._peers), speed=self._speed, settle_s=settle_s,
            timeout=timeout, log=self.log)

    def _drained(self) -> bool:
        """What drain() waits for: an API session and a settled Adj-RIB-Out (nothing of ours
        left in ExaBGP, every replay and End-of-RIB done). True with no peer at all."""
        if not self.config.peers:
            return True
        s = self.process.session
        return s is not None and not s.closed and self.rib_out.settled()

    def _established(self, peer: IPv4Address) -> bool:
        p = self._peers.get(peer)
        return p is not None and p.state == "established"

    @property
    def sessions(self) -> int:
        """API sessions so far (one per ExaBGP start or API helper respawn)."""
        return self.process.sessions

    # ---------------- ExaBGP process ----------------

    def _on_exabgp_gone(self, reason: str) -> None:
        self.rib_out.exabgp_gone()
        self.gr.exabgp_gone()
        for addr, p in self._peers.items():
            if p.state != "idle":
                p.set_state("down")
                p.last_error = reason
            self._flush_peer(addr)

    # ---------------- events ----------------

    def _on_event(self, ev: api.Event) -> None:
        peer = getattr(ev, "peer", None)
        if peer is not None and peer not in self._peers:
            # A removed neighbor's last words (its "down" after a reload): nothing to keep.
            self.log.debug("ignoring %s for unconfigured peer %s", type(ev).__name__, peer)
            return
        if isinstance(ev, api.UpdateEvent):
            self._peers[peer].updates_received += 1
            withdrawn = withdrawn_keys(ev)
            self.gr.refreshed(peer, withdrawn, ev.announced)
            if self.rib_in.receive(peer, ev, withdrawn, self._peer_cfgs.get(peer),
                                   self.config.local_as):
                self.rib_out.request_teardown(peer)
            if self.config.route_reflector_cluster_id is not None:
                self.rib_out.wake.set()
        elif isinstance(ev, api.StateEvent):
            self._on_state(ev)
        elif isinstance(ev, api.OpenEvent):
            self.rib_in.add_peer(ev.peer, self._peers[ev.peer].asn, ev.router_id)
            self.gr.on_open(ev.peer, ev.gr_advertised, ev.gr_restart_time)
        elif isinstance(ev, api.NotificationEvent):
            if ev.shutdown:
                self.log.info("ExaBGP announced shutdown")
            elif ev.peer is not None:
                self._peers[ev.peer].last_error = (
                    f"notification {ev.code}/{ev.subcode} {ev.message}".rstrip())
        elif isinstance(ev, api.EorEvent):
            self.log.info("End-of-RIB from %s (%s %s)", ev.peer, ev.afi, ev.safi)
            self._peers[ev.peer].eor_received = True
            self.gr.on_eor(ev.peer)
            self.rib_in.notify()  # also with nothing swept: consumers re-check convergence

    def _on_state(self, ev: api.StateEvent) -> None:
        p = self._peers[ev.peer]
        new = _STATE_NAMES.get(ev.state, ev.state)
        self.log.info("peer %s %s%s", ev.peer, new, f" ({ev.reason})" if ev.reason else "")
        was_established = p.state == "established"
        p.set_state(new)
        if ev.state == "up":
            self.rib_in.session_up(ev.peer)
            self.gr.on_up(ev.peer)
            self.rib_out.wake.set()
        elif ev.state == "down":
            p.last_error = ev.reason
            flush_only = self._stop.is_set() or ev.peer not in self._peer_cfgs
            if not self.gr.on_down(ev.peer, ev.reason or "", was_established,
                                   lambda: self.rib_in.keys(ev.peer), flush_only):
                self._flush_peer(ev.peer)

    def _sweep(self, peer: IPv4Address, keys: set[int]) -> None:
        """Graceful restart's sweep: remove ``peer``'s stale paths."""
        if not keys:
            return
        self.rib_in.drop(peer, keys)
        self.rib_out.wake.set()

    def _flush_peer(self, peer: IPv4Address) -> None:
        self.gr.forget_stale(peer)
        self.rib_in.flush(peer)
        self.rib_out.wake.set()
