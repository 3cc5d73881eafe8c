"""The node's BGP speaker: supervises ExaBGP 5 and turns its line API into a Loc-RIB.

Process layout: ``Speaker.run()`` serves a unix socket in ``state_dir`` and runs
``exabgp server <state_dir>/exabgp.conf`` as a child (in the caller's network namespace).
ExaBGP runs bgp/relay.py as its API helper, which connects to that socket and hands over its
stdin/stdout pipes (bgp/handoff.py); each hand-off is one API session
(:class:`bgp.api.ApiSession`) that reads and writes ExaBGP's pipes directly.

Graceful restart on our side (RFC 4724, FACTS pitfall 1): neighbors use ``manual-eor``; on
each new API session we replay the full announced set, and after every session "up" we send
``neighbor <peer> announce eor ipv4 unicast`` once the replay is acked, so a peer that kept
our routes as stale never sees End-of-RIB before them.

Stopping (:meth:`Speaker.stop`) withdraws nothing: the sessions end without a NOTIFICATION,
so peers keep our routes as stale until the next run's End-of-RIB (a restart loses no
traffic). :meth:`Speaker.drain` is the separate, explicit withdrawal for a node that leaves.

Graceful restart on the peer's side (RFC 4724 §4.2, receiving speaker): when a session goes
down by a TCP/transport failure and the peer advertised the GR capability in its last OPEN
(restart time from that capability; our ``graceful_restart_time`` if we never saw its OPEN or
the time was absent), its routes are kept and marked stale instead of being flushed. They
stay in the Loc-RIB for the restart time; once the session is back, re-announced routes
replace them and the peer's End-of-RIB removes those still stale (bounded by
``gr_stale_path_time``). A NOTIFICATION either way (RFC 8538 not implemented), an
administrative stop by us ("stop, message [...]"), a removed peer or a new OPEN without the
capability flush at once. Deviation: the F bit (forwarding state preserved) is not checked;
a restarted BIRD never sets it, and a pod route's next hop is the originating node, not the
restarting peer (a route reflector is not in the forwarding path).

Import: every received path is kept pre-policy (an Adj-RIB-In like BIRD's import table) so
a policy change (:meth:`Speaker.set_expected_next_hops`) re-evaluates without a refresh. The
policy only accepts or rejects, so the accepted paths are the RIB's own; only the rejected
ones are held apart.

Route reflection (RFC 4456, see bgp/reflector.py) when ``route_reflector_cluster_id`` is set:
reflected paths are announced per neighbor; the sync loop diffs them like announcements.

Runtime peer changes (:meth:`Speaker.set_peers`): the config file is rewritten and ExaBGP
gets SIGUSR1 (reload: unchanged neighbors keep their sessions, added ones start, removed ones
stop); added/changed neighbors get our announcements replayed per neighbor.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterable, Mapping

from . import api, reflector
from .drain import DrainReport, send_queues
from .errors import BGPError, CommandRejected, ConfigError, ExaBGPExited
from .exabgp_config import LAUNCH_PATH, check_community, exabgp_env, redact, render_config
from .handoff import PipeServer
from .model import (BestRoute, ExportRoute, PathAttrs, PeerConfig, PeerStatus, SpeakerConfig,
                    SpeakerStatus)
from .policy import ImportPolicy, RejectionCounter
from .prefix import from_key, key_of
from .rib import Rib
from .supervisor import Backoff, terminate

_STATE_NAMES = {"connected": "connect", "up": "established", "down": "down"}
_UNIX_PATH_MAX = 107
# Cease subcode 1, "Maximum Number of Prefixes Reached" (RFC 4486 §4).
CEASE_MAX_PREFIXES = 1
# Retry interval (s) and count for per-neighbor commands ExaBGP rejects because a reload
# has not loaded that neighbor yet.
_RELOAD_RETRY_S = 0.3
_RELOAD_RETRIES = 50


def _chunks(items: list, size: int = api.BULK_CHUNK) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _die_with_parent() -> None:
    """In the ExaBGP child: be SIGKILLed when the agent dies (prctl PR_SET_PDEATHSIG).

    A crashed agent must not leave an orphan ExaBGP holding its sessions (the next agent's
    ExaBGP would collide with it). SIGKILL rather than SIGTERM: no NOTIFICATION is sent, so
    peers see a transport failure and keep our routes as stale (RFC 4724 §4.2) until the
    restarted agent replays them and sends End-of-RIB.
    """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


class _Peer:
    __slots__ = ("address", "asn", "state", "since", "last_error", "eor_received",
                 "gr_advertised", "gr_time", "stale", "stale_deadline", "teardowns",
                 "teardown_sent", "withdrawn_undecoded", "announced_undecoded")

    def __init__(self, address: IPv4Address, asn: int) -> None:
        self.address = address
        self.asn = asn
        self.state = "idle"
        self.since = time.time()
        self.last_error: str | None = None
        self.eor_received = False
        # From the peer's last OPEN: None = no OPEN seen (e.g. the API helper was respawned
        # mid-session); gr_time None = capability absent or time missing.
        self.gr_advertised: bool | None = None
        self.gr_time: int | None = None
        # Keys (bgp.prefix) of the prefixes kept from the previous session (RFC 4724 §4.2)
        # and when they expire (speaker clock).
        self.stale: set[int] = set()
        self.stale_deadline: float | None = None
        self.teardowns = 0
        self.teardown_sent = False
        self.withdrawn_undecoded = 0
        self.announced_undecoded = 0

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()
            # End-of-RIB (RFC 4724 §2) marks the end of one session's initial update burst.
            self.eor_received = False


class Speaker:
    """Runs and supervises ExaBGP for one node; see module doc.

    ``on_routes(loc_rib)`` receives the full Loc-RIB (prefix → BestRoute) after each change,
    coalesced to at most one call per event-loop pass. It runs in the event loop and must not
    block. With ``on_changes`` given instead, it receives only the delta since the previous
    call (prefix key → new BestRoute, or None when withdrawn; bgp.prefix has the key, the
    BestRoute its prefix): O(changes), not O(table), which
    is what keeps a 100k-route table converging in linear time. Timing knobs (seconds) are keyword-only; ``exabgp_speed`` is
    ``exabgp.reactor.speed``; ``clock`` (monotonic seconds) drives the graceful-restart
    timers (tests pass a fake one and call :meth:`tick`).
    """

    def __init__(self, config: SpeakerConfig,
                 on_routes: Callable[[Mapping[IPv4Network, BestRoute]], None] | None = None, *,
                 on_changes: Callable[[Mapping[int, BestRoute | None]], None] | None = None,
                 log: logging.Logger = logging.getLogger("bgp.speaker"),
                 exabgp_speed: float = 0.1, ack_timeout: float = 30.0,
                 kill_timeout: float = 5.0, backoff: Backoff | None = None,
                 relay_python: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        if (on_routes is None) == (on_changes is None):
            raise TypeError("give exactly one of on_routes or on_changes")
        self._on_routes = on_routes
        self._on_changes = on_changes
        self.log = log
        self._speed = exabgp_speed
        self._ack_timeout = ack_timeout
        self._kill_timeout = kill_timeout
        self._backoff = backoff or Backoff()
        self._relay_python = relay_python or ("/usr/bin/python3" if os.path.exists(
            "/usr/bin/python3") else sys.executable)
        self._clock = clock
        self._secrets = [p.password for p in config.peers if p.password]
        self._blocks: set[IPv4Network] = set(config.announce)
        self._exports: dict[IPv4Network, tuple[str, ...]] = {
            r.prefix: tuple(r.communities) for r in config.export_extra}
        # Prefixes the current ExaBGP process may hold in its Adj-RIB-Out.
        self._in_exabgp: set[IPv4Network] = set()
        # Announced to all neighbors and acked: prefix -> communities.
        self._synced: dict[IPv4Network, tuple[str, ...]] = {}
        self._peer_cfgs: dict[IPv4Address, PeerConfig] = {p.address: p for p in config.peers}
        self._peers = {p.address: _Peer(p.address, p.asn) for p in config.peers}
        self._policy = ImportPolicy(
            tuple(config.import_pools), tuple(config.own_blocks), config.node_ip,
            import_extra=tuple(config.import_extra), accept_default=config.accept_default,
            expected_next_hops=dict(config.expected_next_hops), router_id=config.router_id,
            cluster_id=config.route_reflector_cluster_id)
        self._rejections = RejectionCounter()
        self._rib = Rib(config.local_as)
        # The pre-policy Adj-RIB-In is the RIB's accepted paths (import policy accepts or rejects,
        # it never rewrites attributes) plus the rejected ones kept here: peer -> prefix -> attrs.
        # One copy per route, not two (at 100k routes a second table costs ~5 MB and ~20 ms).
        self._rejected: dict[IPv4Address, dict[IPv4Network, PathAttrs]] = {}
        for p in config.peers:
            self._rib.set_peer(p.address, p.asn)
        # Route reflection: what ExaBGP holds per neighbor (prefix -> command line sent).
        self._refl_synced: dict[IPv4Address, dict[IPv4Network, str]] = {}
        self._refl_count: dict[IPv4Address, int] = {}
        # Neighbors that need our announcements replayed per neighbor (added by a reload),
        # neighbors to tear down (max prefixes), and whether a reload is due.
        self._peer_replay: set[IPv4Address] = set()
        self._teardown: set[IPv4Address] = set()
        self._reload_pending = False
        self._removed_refl: dict[IPv4Address, set[IPv4Network]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._replay_tries: dict[IPv4Address, int] = {}
        self._session: api.ApiSession | None = None
        self._session_tasks: set[asyncio.Task] = set()
        self._needs_replay = False
        self._pending_eor: set[IPv4Address] = set()
        self._wake = asyncio.Event()
        self._peers_set = asyncio.Event()  # set_peers() gave a non-empty set: (re)start ExaBGP
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._draining = False  # drain(): announce nothing, withdraw what ExaBGP holds
        self._proc: asyncio.subprocess.Process | None = None
        self._starts = 0
        self._last_exit: str | None = None
        self._routes_scheduled = False
        self._output_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.sessions = 0
        self._running = False
        self.socket_path = Path(config.state_dir) / "api.sock"
        self.config_path = Path(config.state_dir) / "exabgp.conf"
        if len(str(self.socket_path)) > _UNIX_PATH_MAX:
            raise ConfigError(f"state_dir too long for a unix socket path: {self.socket_path}")

    # ---------------- public API ----------------

    def set_announcements(self, prefixes: Iterable[IPv4Network]) -> None:
        """Replace the node's own announced blocks; sent (diffed) when an API session is up,
        with ``next-hop self`` (our session's local address, for iBGP and eBGP alike)."""
        self._blocks = set(prefixes)
        self._wake.set()

    def set_exports(self, routes: Iterable[ExportRoute]) -> None:
        """Replace the extra exported prefixes (service CIDRs) and their communities
        ("ASN:VALUE", RFC 1997). Raises ConfigError on a malformed community (nothing
        changes then). A prefix also in the blocks is announced once, with the communities."""
        new: dict[IPv4Network, tuple[str, ...]] = {}
        for r in routes:
            for c in r.communities:
                check_community(c)
            new[r.prefix] = tuple(r.communities)
        self._exports = new
        self._wake.set()

    def set_expected_next_hops(self, mapping: Mapping[IPv4Network, IPv4Address]) -> None:
        """Replace node block → expected next hop (the owning node's IP) and re-evaluate
        every received path against the new policy (reason ``wrong_next_hop``)."""
        self._policy = replace(self._policy, expected_next_hops=dict(mapping))
        self._reapply_policy()

    def set_peers(self, peers: Iterable[PeerConfig]) -> None:
        """Replace the neighbor set at run time without touching unchanged sessions.

        Rewrites the ExaBGP config (0600) and, once an API session is up, sends ExaBGP
        SIGUSR1 (reload): unchanged neighbors keep their sessions, added ones start, changed
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
        self._secrets.extend(p.password for p in new if p.password
                             and p.password not in self._secrets)
        for a in removed:
            self._removed_refl[a] = set(self._refl_synced.pop(a, {}))
            self._refl_count.pop(a, None)
            self._pending_eor.discard(a)
            self._peer_replay.discard(a)
            self._teardown.discard(a)
            self._flush_peer(a)
            self._peers.pop(a, None)
        for a in added + changed:
            p = new_map[a]
            if a in self._peers:
                self._peers[a].asn = p.asn
            else:
                self._peers[a] = _Peer(a, p.asn)
            self._rib.set_peer(a, p.asn)
            self._peer_replay.add(a)
            self._refl_synced.pop(a, None)
        self.log.info("peers changed: %d added, %d changed, %d removed",
                      len(added), len(changed), len(removed))
        if self._running and text is not None:
            self._write_config(text)
            self._reload_pending = True
            self._peers_set.set()
        elif self._running and self._proc is not None and self._proc.returncode is None:
            self.log.info("no BGP peers left: stopping ExaBGP")
            asyncio.get_running_loop().create_task(terminate(self._proc, self._kill_timeout))
        if removed or added or changed:
            self._schedule_routes()
        self._wake.set()

    def status(self) -> SpeakerStatus:
        """A snapshot: per-peer state and counters, ExaBGP pid/restarts/last exit."""
        peers = []
        for addr, p in self._peers.items():
            adj = self._rib.peer_keys(addr)
            accepted = len(adj)
            rejected = self._rejections.count(addr)
            cfg = self._peer_cfgs.get(addr)
            peers.append(PeerStatus(
                address=addr, asn=p.asn, state=p.state, since=p.since,
                prefixes_received=accepted + rejected, prefixes_accepted=accepted,
                prefixes_rejected=rejected, last_error=p.last_error,
                rejected_by_reason=tuple(sorted(self._rejections.by_reason(addr).items())),
                eor_received=p.eor_received,
                stale_routes=sum(1 for q in p.stale if q in adj),
                gr_restart_time=p.gr_time if p.gr_advertised else None,
                max_prefixes_teardowns=p.teardowns,
                reflected_routes=self._refl_count.get(addr, 0),
                rr_client=bool(cfg and cfg.rr_client),
                withdrawn_undecoded=p.withdrawn_undecoded,
                announced_undecoded=p.announced_undecoded))
        proc = self._proc
        return SpeakerStatus(
            peers=tuple(peers),
            exabgp_pid=proc.pid if proc is not None and proc.returncode is None else None,
            exabgp_restarts=max(0, self._starts - 1), last_exit=self._last_exit,
            announced=tuple(sorted(self._desired())))

    def best_routes(self) -> Mapping[IPv4Network, BestRoute]:
        """The current Loc-RIB (a copy)."""
        return self._rib.loc_rib()

    def best_routes_view(self) -> Mapping[IPv4Network, BestRoute]:
        """The current Loc-RIB as a live read-only view (no copy; do not hold across awaits)."""
        return self._rib.loc_rib_view()

    def received_routes(self, peer: IPv4Address) -> Mapping[IPv4Network, PathAttrs]:
        """``peer``'s pre-policy Adj-RIB-In (a copy; empty for an unknown peer)."""
        return self._pre_policy(peer)

    def _pre_policy(self, peer: IPv4Address) -> dict[IPv4Network, PathAttrs]:
        out = dict(self._rib.adj_rib_in(peer))
        out.update(self._rejected.get(peer, {}))
        return out

    def tick(self) -> None:
        """Apply graceful-restart timer expiries due at ``clock()`` (RFC 4724 §4.2): a
        peer's stale routes go when its restart time (or, once the session is back, the
        stale-path time) has passed. Called by internal timers; safe to call any time."""
        now = self._clock()
        for addr, p in list(self._peers.items()):
            if p.stale_deadline is not None and now >= p.stale_deadline:
                self.log.warning("graceful restart of %s timed out: removing %d stale routes",
                                 addr, len(p.stale))
                self._sweep_stale(addr)
        self._arm_timer()

    def _desired(self) -> dict[IPv4Network, tuple[str, ...]]:
        if self._draining:
            return {}
        out: dict[IPv4Network, tuple[str, ...]] = {p: () for p in self._blocks}
        out.update(self._exports)
        return out

    async def run(self) -> None:
        """Serve the relay socket and keep ExaBGP running until :meth:`stop`.

        Restarts ExaBGP with exponential backoff (1 s doubling to 30 s, reset after 60 s of
        uptime), logging each exit with its code and output tail. Raises ConfigError if the
        config cannot be rendered, BGPError if the socket cannot be served.
        """
        if self._running:
            raise BGPError("Speaker.run() is already running")
        if self.config.peers:
            self._write_config(render_config(self.config, self.socket_path, self._relay_python))
        try:
            # Without peers no config is rendered, and the relay socket still needs the dir.
            Path(self.config.state_dir).mkdir(parents=True, exist_ok=True)
            self.socket_path.unlink(missing_ok=True)
        except OSError as exc:
            raise BGPError(f"cannot prepare state dir {self.config.state_dir}: {exc}") from exc
        server = PipeServer(self.socket_path, self._on_connection)
        try:
            await server.start()
        except OSError as exc:
            raise BGPError(f"cannot serve {self.socket_path}: {exc}") from exc
        self._running = True
        sync_task = asyncio.create_task(self._sync_loop(), name="bgp-sync")
        try:
            while not self._stop.is_set():
                if not self.config.peers:
                    # No neighbor (say, the first node of a mesh): no ExaBGP until set_peers().
                    self._peers_set.clear()
                    stop = asyncio.ensure_future(self._stop.wait())
                    more = asyncio.ensure_future(self._peers_set.wait())
                    await asyncio.wait({stop, more}, return_when=asyncio.FIRST_COMPLETED)
                    stop.cancel()
                    more.cancel()
                    continue
                started = time.monotonic()
                try:
                    await self._run_once()
                except OSError as exc:
                    self._last_exit = f"failed to start {self.config.exabgp_bin}: {exc}"
                    self.log.error("%s", self._last_exit)
                if self._stop.is_set():
                    break
                delay = self._backoff.next_delay(time.monotonic() - started)
                self.log.warning("restarting ExaBGP in %.1f s (restarts so far: %d)",
                                 delay, max(0, self._starts - 1))
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            sync_task.cancel()
            server.close()
            for t in list(self._session_tasks):
                t.cancel()
            if self._session is not None:
                self._session.close()
            await asyncio.gather(sync_task, *self._session_tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
            if self._proc is not None and self._proc.returncode is None:
                await terminate(self._proc, self._kill_timeout)
            self._running = False
            self._stopped.set()

    def _write_config(self, text: str) -> None:
        """Write the rendered config atomically, mode 0600 (it may hold md5 passwords)."""
        tmp = self.config_path.with_suffix(".tmp")
        try:
            Path(self.config.state_dir).mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.config_path)
        except OSError as exc:
            raise BGPError(f"cannot prepare state dir {self.config.state_dir}: {exc}") from exc
        self.log.debug("rendered ExaBGP config %s:\n%s", self.config_path, redact(text))

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
        self._wake.set()
        for addr in list(self._peers):
            self._flush_peer(addr)
        if not self._running:
            return
        proc = self._proc
        if proc is not None and proc.returncode is None:
            await terminate(proc, self._kill_timeout)
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout + 2 * self._kill_timeout)
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
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        deadline = t0 + timeout
        reflected = set().union(*self._refl_synced.values()) if self._refl_synced else set()
        withdrawn = tuple(sorted(self._in_exabgp | reflected))
        self._draining = True
        self._wake.set()
        while not self._drained() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        acked = self._drained()
        if acked and withdrawn:
            # ExaBGP acks a command when it is queued; its reactor writes the UPDATE on a
            # later pass. A send queue read before that would be empty, and mean nothing.
            await asyncio.sleep(min(0.5, max(0.05, 5 * self._speed)))
        up = [a for a, p in self._peers.items() if p.state == "established"]
        queues: dict[IPv4Address, int] = {}
        while up:
            try:
                queues = await send_queues(up)
            except OSError as exc:
                self.log.warning("cannot read TCP send queues: %s", exc)
                break
            # No socket to an Established peer: nothing confirms it, so it counts as not.
            if all(queues.get(a) == 0 for a in up) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        undelivered = tuple(sorted(a for a in up if queues.get(a) != 0))
        if settle_s > 0:
            await asyncio.sleep(settle_s)
        report = DrainReport(withdrawn=withdrawn, acked=acked,
                             delivered=tuple(sorted(a for a in up if a not in undelivered)),
                             undelivered=undelivered,
                             down=tuple(sorted(a for a in self._peers if a not in up)),
                             settle_s=settle_s, took_s=loop.time() - t0)
        (self.log.info if report.complete else self.log.warning)(
            "drained: %d prefixes withdrawn, acked %s, delivered to %d peers, undelivered %d, "
            "down %d", len(withdrawn), acked, len(report.delivered), len(undelivered),
            len(report.down))
        return report

    def _drained(self) -> bool:
        """What drain() waits for: an API session, nothing of ours left in ExaBGP (announced
        or reflected), every pending replay and End-of-RIB done. True with no peer at all."""
        if not self.config.peers:
            return True
        s = self._session
        return (s is not None and not s.closed and not self._needs_replay
                and not self._in_exabgp and not any(self._refl_synced.values())
                and not self._pending_eor and not self._peer_replay)

    # ---------------- ExaBGP child ----------------

    def _exabgp_argv(self) -> list[str]:
        if self.config.exabgp_python:
            return [self.config.exabgp_python, str(LAUNCH_PATH), "server", str(self.config_path)]
        exe = self.config.exabgp_bin
        if os.sep not in exe:
            found = shutil.which(exe)
            if found is None:
                beside = Path(sys.executable).parent / exe
                found = str(beside) if beside.exists() else exe
            exe = found
        return [exe, "server", str(self.config_path)]

    async def _run_once(self) -> None:
        env = dict(os.environ)
        env.update(exabgp_env(self.config, self._speed))
        self._output_tail.clear()
        self._in_exabgp.clear()
        self._synced.clear()
        proc = await asyncio.create_subprocess_exec(
            *self._exabgp_argv(), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=str(self.config.state_dir), start_new_session=True, preexec_fn=_die_with_parent)
        self._proc = proc
        self._starts += 1
        self.log.info("started ExaBGP pid %d (start #%d)", proc.pid, self._starts)
        if self._stop.is_set():  # stop() ran while we were spawning
            await terminate(proc, self._kill_timeout)
        assert proc.stdout is not None
        reader = asyncio.create_task(self._drain_output(proc.stdout))
        code = await proc.wait()
        try:
            await asyncio.wait_for(reader, 2)
        except asyncio.TimeoutError:
            reader.cancel()
        tail = "\n".join(self._output_tail)
        self._last_exit = f"exit code {code}" + (f"; output tail:\n{tail}" if tail else "")
        log = self.log.info if self._stop.is_set() else self.log.error
        log("ExaBGP pid %d exited with code %s; last output:\n%s", proc.pid, code, tail)
        self._on_exabgp_gone(f"exabgp exited ({code})")

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    async def _drain_output(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except (ValueError, OSError):
                continue
            if not line:
                return
            text = self._redact(line.decode("utf-8", "replace").rstrip())
            self._output_tail.append(text)
            self.log.debug("exabgp: %s", text)

    def _on_exabgp_gone(self, reason: str) -> None:
        self._in_exabgp.clear()
        self._synced.clear()
        self._refl_synced.clear()
        self._pending_eor.clear()
        self._peer_replay.clear()
        self._teardown.clear()
        self._removed_refl.clear()
        self._reload_pending = False  # the next ExaBGP reads the current file
        for addr, p in self._peers.items():
            if p.state != "idle":
                p.set_state("down")
                p.last_error = reason
            self._flush_peer(addr)

    # ---------------- API sessions ----------------

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter, close: Callable[[], None]) -> None:
        old = self._session
        if old is not None:
            old.close()
        session = api.ApiSession(reader, writer, self._on_event, ack_timeout=self._ack_timeout,
                                 on_close=close)
        self._session = session
        self.sessions += 1
        self._needs_replay = True
        self.log.info("ExaBGP API session %d connected", self.sessions)
        self._wake.set()
        task = asyncio.current_task()
        if task is not None:
            self._session_tasks.add(task)
        try:
            await session.read_loop()
        finally:
            if task is not None:
                self._session_tasks.discard(task)
            if self._session is session:
                self._session = None
            self.log.info("ExaBGP API session closed")

    async def _sync_loop(self) -> None:
        """Single writer: replays/diffs announcements and sends pending End-of-RIBs."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            session = self._session
            if session is None or session.closed or self._stop.is_set():
                continue
            try:
                await self._sync(session)
            except ExaBGPExited as exc:
                self.log.warning("announcement sync interrupted: %s", exc)
            except BGPError as exc:
                self.log.error("announcement sync failed: %s", exc)
                if not session.closed:
                    # Retry later rather than spin on a rejected command.
                    await asyncio.sleep(1.0)
                    self._wake.set()

    async def _sync(self, session: api.ApiSession) -> None:
        if self._needs_replay:
            self._needs_replay = False
            self._synced.clear()
            self._refl_synced.clear()
            self._peer_replay.clear()  # the global replay below reaches every neighbor
        retry = False
        for peer, prefixes in sorted(self._removed_refl.items()):
            # Before the reload drops the neighbor: ExaBGP caches a neighbor's RIB by name
            # across reloads, so a re-added peer would otherwise get these again.
            for line in api.cmds_bulk_withdraw(prefixes, neighbor=peer):
                try:
                    await session.command(line)
                except CommandRejected:
                    break
        self._removed_refl.clear()
        if self._reload_pending:
            self._reload_pending = False
            self._signal_reload()
        desired = self._desired()
        gone = sorted((self._in_exabgp | set(self._synced)) - set(desired))
        new = sorted(p for p, c in desired.items() if self._synced.get(p) != c)
        rejected = False
        for line, chunk in zip(api.cmds_bulk_withdraw(gone), _chunks(gone)):
            await session.command(line)
            self._in_exabgp.difference_update(chunk)
            for p in chunk:
                self._synced.pop(p, None)
        for comms, group in _by_communities(new, desired):
            for line, chunk in zip(api.cmds_bulk_announce(group, communities=comms),
                                   _chunks(group)):
                self._in_exabgp.update(chunk)
                try:
                    await session.command(line)
                except CommandRejected as exc:
                    # Keep going: a bad prefix must not hold back End-of-RIB for the rest.
                    self.log.error("%s", exc)
                    rejected = True
                    continue
                for p in chunk:
                    self._synced[p] = comms
        if new and not rejected:
            self.log.info("announced %d prefixes", len(new))
        for peer in sorted(self._peer_replay):
            if not await self._replay_to(session, peer, desired):
                retry = True
        for peer in sorted(self._teardown):
            self._teardown.discard(peer)
            if peer in self._peer_cfgs:
                try:
                    await session.command(api.cmd_teardown(peer, CEASE_MAX_PREFIXES))
                    self.log.warning("tore down %s: maximum prefixes exceeded", peer)
                except CommandRejected as exc:
                    self.log.error("%s", exc)
        if not await self._sync_reflection(session):
            retry = True
        for peer in sorted(self._pending_eor):
            if self._peers.get(peer) is None or self._peers[peer].state != "established":
                self._pending_eor.discard(peer)
                continue
            if peer in self._peer_replay:
                continue  # End-of-RIB only after the replay (FACTS pitfall 1)
            await session.command(api.cmd_eor(peer))
            self._pending_eor.discard(peer)
            self.log.info("sent End-of-RIB to %s", peer)
        if retry:
            asyncio.get_running_loop().call_later(_RELOAD_RETRY_S, self._wake.set)

    def _signal_reload(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            # ExaBGP 5: SIGUSR1 = reload the configuration (reactor/interrupt.py).
            os.kill(proc.pid, signal.SIGUSR1)
            self.log.info("asked ExaBGP pid %d to reload its configuration", proc.pid)
        except ProcessLookupError:
            pass

    async def _replay_to(self, session: api.ApiSession, peer: IPv4Address,
                         desired: dict[IPv4Network, tuple[str, ...]]) -> bool:
        """Announce the synced set to one neighbor (added by a reload). False when ExaBGP
        does not know the neighbor yet (reload still running): retried later."""
        if peer not in self._peer_cfgs:
            self._peer_replay.discard(peer)
            return True
        tries = self._replay_tries.get(peer, 0)
        items = sorted(p for p in self._synced if p in desired)
        try:
            for comms, group in _by_communities(items, dict(self._synced)):
                for line in api.cmds_bulk_announce(group, neighbor=peer, communities=comms):
                    await session.command(line)
        except CommandRejected:
            if tries >= _RELOAD_RETRIES:
                self.log.error("ExaBGP does not know neighbor %s after a reload", peer)
                self._peer_replay.discard(peer)
                self._replay_tries.pop(peer, None)
                return True
            self._replay_tries[peer] = tries + 1
            return False
        self._peer_replay.discard(peer)
        self._replay_tries.pop(peer, None)
        self._refl_synced.pop(peer, None)  # re-send reflected routes to it as well
        return True

    async def _sync_reflection(self, session: api.ApiSession) -> bool:
        cluster = self.config.route_reflector_cluster_id
        if cluster is None:
            return True
        ibgp = {a: c.rr_client for a, c in self._peer_cfgs.items()
                if c.asn == self.config.local_as}
        # Draining: an empty plan for every neighbor we reflected to withdraws it all.
        plan = ({peer: {} for peer in self._refl_synced} if self._draining
                else reflector.plan(self._rib, ibgp, cluster))
        ok = True
        for peer, routes in sorted(plan.items()):
            if peer in self._peer_replay:
                ok = False
                continue
            want = {pfx: api.cmd_announce_path(pfx, r.attrs, peer, r.originator_id,
                                               r.cluster_list)
                    for pfx, r in routes.items()}
            have = self._refl_synced.setdefault(peer, {})
            gone = sorted(p for p in have if p not in want)
            try:
                for line, chunk in zip(api.cmds_bulk_withdraw(gone, neighbor=peer),
                                       _chunks(gone)):
                    await session.command(line)
                    for p in chunk:
                        have.pop(p, None)
                for pfx in sorted(want):
                    if have.get(pfx) != want[pfx]:
                        await session.command(want[pfx])
                        have[pfx] = want[pfx]
            except CommandRejected as exc:
                self.log.error("reflecting to %s: %s", peer, exc)
                ok = False
            self._refl_count[peer] = len(have)
        return ok

    # ---------------- events ----------------

    def _on_event(self, ev: api.Event) -> None:
        peer = getattr(ev, "peer", None)
        if peer is not None and peer not in self._peers:
            # A removed neighbor's last words (its "down" after a reload): nothing to keep.
            self.log.debug("ignoring %s for unconfigured peer %s", type(ev).__name__, peer)
            return
        if isinstance(ev, api.UpdateEvent):
            self._on_update(ev)
        elif isinstance(ev, api.StateEvent):
            self._on_state(ev)
        elif isinstance(ev, api.OpenEvent):
            p = self._peers[ev.peer]
            self._rib.set_peer(ev.peer, p.asn, ev.router_id)
            p.gr_advertised = ev.gr_advertised
            p.gr_time = ev.gr_restart_time
            if p.stale and not ev.gr_advertised:
                # RFC 4724 §4.2: GR capability not received on the new session.
                self.log.info("%s came back without graceful restart: dropping stale routes",
                              ev.peer)
                self._sweep_stale(ev.peer)
        elif isinstance(ev, api.NotificationEvent):
            if ev.shutdown:
                self.log.info("ExaBGP announced shutdown")
            elif ev.peer is not None:
                self._peers[ev.peer].last_error = (
                    f"notification {ev.code}/{ev.subcode} {ev.message}".rstrip())
        elif isinstance(ev, api.EorEvent):
            self.log.info("End-of-RIB from %s (%s %s)", ev.peer, ev.afi, ev.safi)
            p = self._peers[ev.peer]
            p.eor_received = True
            if p.stale:
                self.log.info("End-of-RIB from %s: removing %d routes still stale",
                              ev.peer, len(p.stale))
            self._sweep_stale(ev.peer)
            # Consumers waiting for initial convergence (graceful restart) re-check now.
            self._schedule_routes()

    def _on_state(self, ev: api.StateEvent) -> None:
        p = self._peers[ev.peer]
        new = _STATE_NAMES.get(ev.state, ev.state)
        self.log.info("peer %s %s%s", ev.peer, new, f" ({ev.reason})" if ev.reason else "")
        was_established = p.state == "established"
        p.set_state(new)
        if ev.state == "up":
            p.teardown_sent = False
            self._pending_eor.add(ev.peer)
            if p.stale:
                # Restart timer stopped; the stale routes now wait for End-of-RIB, bounded.
                p.stale_deadline = self._clock() + self.config.gr_stale_path_time
                self._arm_timer()
            self._wake.set()
        elif ev.state == "down":
            p.last_error = ev.reason
            self._pending_eor.discard(ev.peer)
            if not was_established:
                return  # a failed attempt: nothing learned on it (a stale timer keeps running)
            restart = self._gr_restart_time(p, ev.reason or "")
            if restart is None or restart <= 0:
                self._flush_peer(ev.peer)
                return
            p.stale = set(self._rib.peer_keys(ev.peer))
            p.stale.update(key_of(q) for q in self._rejected.get(ev.peer, {}))
            p.stale_deadline = self._clock() + restart
            self.log.info("peer %s down with graceful restart: keeping %d routes as stale "
                          "for %d s", ev.peer, len(p.stale), restart)
            self._arm_timer()

    def _gr_restart_time(self, p: _Peer, reason: str) -> int | None:
        """Seconds to keep ``p``'s routes after its session went down for ``reason``, or
        None to flush now (see module doc)."""
        if reason.startswith("notification") or reason.startswith("stop"):
            return None
        if self._stop.is_set() or p.address not in self._peer_cfgs:
            return None
        if p.gr_advertised is False:
            return None
        return p.gr_time if p.gr_time is not None else self.config.graceful_restart_time

    def _arm_timer(self) -> None:
        deadlines = [p.stale_deadline for p in self._peers.values()
                     if p.stale_deadline is not None]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not deadlines:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, min(deadlines) - self._clock()) + 0.01
        self._timer = loop.call_later(delay, self.tick)

    def _sweep_stale(self, peer: IPv4Address) -> None:
        p = self._peers.get(peer)
        if p is None:
            return
        stale, p.stale, p.stale_deadline = p.stale, set(), None
        if not stale:
            return
        rejected = self._rejected.get(peer, {})
        gone = [q for q in rejected if key_of(q) in stale]
        for prefix in gone:
            del rejected[prefix]
        self._rejections.clear(peer, gone)
        if self._rib.update(peer, (), stale):
            self._schedule_routes()
        self._wake.set()

    def _on_update(self, ev: api.UpdateEvent) -> None:
        peer = ev.peer
        p = self._peers[peer]
        rejected = self._rejected.get(peer)
        # Withdrawals as prefix keys: a raw withdrawal (bgp/exabgp_launch.py) never becomes
        # objects; the rest of the pipeline is keyed by them too (bgp.prefix).
        if ev.announced_raw:
            p.announced_undecoded += len(ev.announced)
        withdrawn = ev.withdrawn_keys
        if withdrawn is not None:
            p.withdrawn_undecoded += len(withdrawn)
        else:
            withdrawn = [key_of(w) for w in ev.withdrawn]
        if withdrawn:
            if rejected or self._rejections.count(peer):
                gone = [from_key(k) for k in withdrawn]
                if rejected:
                    for prefix in gone:
                        rejected.pop(prefix, None)
                self._rejections.clear(peer, gone)
            if p.stale:
                p.stale.difference_update(withdrawn)
        if p.stale:
            # Re-announced: replaces the stale path (RFC 4724 §4.2).
            p.stale.difference_update(key_of(pfx) for pfx, _nh, _a in ev.announced)
        # attrs.next_hop == nh in every announced tuple
        self._evaluate(peer, [(pfx, attrs) for pfx, _nh, attrs in ev.announced], withdrawn)

    def _evaluate(self, peer: IPv4Address, routes: list[tuple[IPv4Network, PathAttrs]],
                  withdrawn: list[int]) -> None:
        """Run import policy on ``routes`` (prefix, attrs) just received from (or kept
        pre-policy for) ``peer`` and apply the result with the ``withdrawn`` prefix keys
        (accepted → RIB; rejected → kept apart, counted and implicitly withdrawn)."""
        cfg = self._peer_cfgs.get(peer)
        p = self._peers[peer]
        rejected = self._rejected.get(peer)
        enforce = cfg.enforces_next_hop(self.config.local_as) if cfg else False
        limit = cfg.max_prefixes if cfg else None
        # The peer's accepted set after this UPDATE, tracked as a live view of the Adj-RIB-In
        # plus this batch's delta: O(batch), never a copy of a 100k-route table per UPDATE.
        table = self._rib.peer_keys(peer)
        # Only the prefix limit reads the size: withdrawals cost a lookup each otherwise.
        gone = {w for w in withdrawn if w in table} if limit is not None else set()
        added: set[int] = set()
        size = len(table) - len(gone)

        def present(key: int) -> bool:
            return key in added or (key in table and key not in gone)
        accepted: list[tuple[IPv4Network, PathAttrs]] = []
        withdraw = list(withdrawn)
        check = self._policy.check
        if limit is None and not rejected:
            # No prefix limit and nothing rejected before: the size bookkeeping and the
            # earlier-rejection lookups below have nothing to do (the common case).
            accept = accepted.append
            for i, (prefix, attrs) in enumerate(routes):
                if check(prefix, attrs.next_hop, attrs, enforce_next_hop=enforce) is not None:
                    routes = routes[i:]
                    break
                accept((prefix, attrs))
            else:
                routes = []
        for prefix, attrs in routes:
            reason = check(prefix, attrs.next_hop, attrs, enforce_next_hop=enforce)
            key = key_of(prefix)
            if reason is None and limit is not None and not present(key) and size >= limit:
                reason = "max_prefixes"
                if cfg is not None and cfg.max_prefixes_action == "teardown" \
                        and not p.teardown_sent:
                    p.teardown_sent = True
                    p.teardowns += 1
                    self._teardown.add(peer)
                    self._wake.set()
            if reason is None:
                if rejected and rejected.pop(prefix, None) is not None:
                    self._rejections.clear(peer, (prefix,))
                accepted.append((prefix, attrs))
                if not present(key):
                    size += 1
                    added.add(key)
            else:
                self.log.debug("rejected %s via %s from %s: %s", prefix, attrs.next_hop, peer,
                               reason)
                self._rejections.reject(peer, prefix, reason)
                if rejected is None:
                    rejected = self._rejected[peer] = {}
                rejected[prefix] = attrs
                withdraw.append(key)  # implicit withdraw of an earlier accepted path
                if present(key):
                    size -= 1
                    added.discard(key)
                    gone.add(key)
        if self._rib.update(peer, accepted, withdraw):
            self._schedule_routes()
        if self.config.route_reflector_cluster_id is not None:
            self._wake.set()

    def _reapply_policy(self) -> None:
        for peer in list(self._peers):
            routes = self._pre_policy(peer)
            if routes:
                self._evaluate(peer, sorted(routes.items()), [])

    def _flush_peer(self, peer: IPv4Address) -> None:
        self._rejections.flush_peer(peer)
        self._rejected.pop(peer, None)
        p = self._peers.get(peer)
        if p is not None:
            p.stale, p.stale_deadline = set(), None
        if self._rib.flush_peer(peer):
            self._schedule_routes()
        self._wake.set()

    def _schedule_routes(self) -> None:
        if self._routes_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._routes_scheduled = True
        loop.call_soon(self._deliver_routes)

    def _deliver_routes(self) -> None:
        self._routes_scheduled = False
        try:
            changes = self._rib.take_changes()
            if self._on_changes is not None:
                self._on_changes(changes)  # also empty: End-of-RIB may matter to the consumer
            else:
                assert self._on_routes is not None
                self._on_routes(self._rib.loc_rib())
        except Exception:
            self.log.exception("on_routes callback failed")


def _by_communities(prefixes: Iterable[IPv4Network],
                    comms: Mapping[IPv4Network, tuple[str, ...]]
                    ) -> list[tuple[tuple[str, ...], list[IPv4Network]]]:
    """Group prefixes by their community list (one bulk announce per group), plain first."""
    groups: dict[tuple[str, ...], list[IPv4Network]] = {}
    for p in prefixes:
        groups.setdefault(comms.get(p, ()), []).append(p)
    return [(c, sorted(groups[c])) for c in sorted(groups)]
