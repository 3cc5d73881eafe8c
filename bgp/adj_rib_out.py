"""Adj-RIB-Out: what we want ExaBGP to announce, what it holds, and the one writer between.

State (all of it; :meth:`AdjRibOut.sync` is the only code that sends commands):

- ``mode``: :attr:`Mode.ANNOUNCE`, or :attr:`Mode.DRAIN` after :meth:`AdjRibOut.drain`
  (announce nothing, withdraw what ExaBGP holds; never goes back).
- Desired: the node's blocks and the exports (prefix -> communities, RFC 1997).
- Held by ExaBGP: ``held`` (prefixes the current process may have in its Adj-RIB-Out, set
  before a command is sent), ``acked`` (announced to all neighbors and acked, with the
  communities sent) and ``reflected`` (per neighbor: prefix -> the command line sent).
- Work due, in the order :meth:`sync` does it (:class:`Due`): withdrawals of what we reflected
  to removed neighbors, an ExaBGP reload (bgp/reload.py: coalesced, confirmed through the
  API, re-sent until ExaBGP holds the configured neighbors), the global diff (a full replay
  when a new API session started), per-neighbor replays for neighbors a reload added (only
  once the reload is confirmed: ExaBGP rejects or misroutes commands for a neighbor it has
  not created), max-prefix teardowns, reflection diffs, then our End-of-RIB to sessions that
  came up (owed by bgp/graceful_restart.py; never before that neighbor's replay).

Transitions are the named methods (:meth:`session_started`, :meth:`exabgp_gone`,
:meth:`peer_added`, :meth:`peer_removed`, :meth:`request_teardown`, :meth:`request_reload`,
:meth:`drain`); each wakes the sync loop.

Route reflection (RFC 4456, bgp/reflector.py) when ``route_reflector_cluster_id`` is set:
reflected paths are announced per neighbor and diffed like announcements.
"""
from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Iterable, Mapping

from . import api, reflector
from .errors import BGPError, CommandRejected, ExaBGPExited
from .graceful_restart import GracefulRestart
from .model import PeerConfig, SpeakerConfig
from .reload import Reloads
from .rib import Rib

# Cease subcode 1, "Maximum Number of Prefixes Reached" (RFC 4486 §4).
CEASE_MAX_PREFIXES = 1
# Retry interval (s) for per-neighbor work ExaBGP cannot take yet (a reload not confirmed,
# a neighbor it rejects), and after how many rejections of one neighbor an error is logged
# (again every as many: the replay is never given up).
RELOAD_RETRY_S = 0.3
RELOAD_RETRIES = 50


class Mode(enum.Enum):
    ANNOUNCE = "announce"
    DRAIN = "drain"


@dataclass
class Due:
    """Work the next :meth:`AdjRibOut.sync` pass owes ExaBGP."""

    full_replay: bool = False   # a new API session: ExaBGP's Adj-RIB-Out is unknown
    replay: dict[IPv4Address, int] = field(default_factory=dict)  # neighbor -> tries so far
    teardown: set[IPv4Address] = field(default_factory=set)
    unreflect: dict[IPv4Address, set[IPv4Network]] = field(default_factory=dict)


def chunks(items: list, size: int = api.BULK_CHUNK) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def by_communities(prefixes: Iterable[IPv4Network],
                   comms: Mapping[IPv4Network, tuple[str, ...]]
                   ) -> list[tuple[tuple[str, ...], list[IPv4Network]]]:
    """Group prefixes by their community list (one bulk announce per group), plain first."""
    groups: dict[tuple[str, ...], list[IPv4Network]] = {}
    for p in prefixes:
        groups.setdefault(comms.get(p, ()), []).append(p)
    return [(c, sorted(groups[c])) for c in sorted(groups)]


class AdjRibOut:
    """See module doc. ``gr`` owes the End-of-RIBs; ``rib`` is reflected from; ``config()``
    and ``peers()`` give the current config and neighbors (they change at run time);
    ``established(peer)`` tells whether its session is up; ``reload()`` sends ExaBGP SIGUSR1
    (driven by :attr:`reloads`, bgp/reload.py)."""

    def __init__(self, blocks: Iterable[IPv4Network],
                 exports: Mapping[IPv4Network, tuple[str, ...]], *, gr: GracefulRestart,
                 rib: Rib, config: Callable[[], SpeakerConfig],
                 peers: Callable[[], Mapping[IPv4Address, PeerConfig]],
                 established: Callable[[IPv4Address], bool], reload: Callable[[], None],
                 log: logging.Logger) -> None:
        self.mode = Mode.ANNOUNCE
        self.blocks: set[IPv4Network] = set(blocks)
        self.exports: dict[IPv4Network, tuple[str, ...]] = dict(exports)
        self.held: set[IPv4Network] = set()
        self.acked: dict[IPv4Network, tuple[str, ...]] = {}
        self.reflected: dict[IPv4Address, dict[IPv4Network, str]] = {}
        self.reflected_count: dict[IPv4Address, int] = {}
        # Our prefixes handed to ExaBGP for every neighbor since start (status, metrics).
        self.prefixes_sent = {"announce": 0, "withdraw": 0}
        self.due = Due()
        self._gr = gr
        self._rib = rib
        self._config = config
        self._peers = peers
        self._established = established
        self.reloads = Reloads(reload, log)
        self.log = log
        self.wake = asyncio.Event()

    def desired(self) -> dict[IPv4Network, tuple[str, ...]]:
        """What ExaBGP should announce to every neighbor: prefix -> communities."""
        if self.mode is Mode.DRAIN:
            return {}
        out: dict[IPv4Network, tuple[str, ...]] = {p: () for p in self.blocks}
        out.update(self.exports)
        return out

    # ---- transitions ----

    def session_started(self) -> None:
        self.due.full_replay = True
        self.wake.set()

    def exabgp_gone(self) -> None:
        """The process ended: the next one starts with an empty Adj-RIB-Out and reads the
        current config file."""
        self.held.clear()
        self.acked.clear()
        self.reflected.clear()
        self.due = Due(full_replay=self.due.full_replay)

    def process_started(self) -> None:
        """A new ExaBGP process: it holds nothing yet, and its neighbors are checked like
        after a reload (it reads the config file when it starts, which may be mid-change)."""
        self.held.clear()
        self.acked.clear()
        self.reloads.process_started()

    def peer_added(self, peer: IPv4Address) -> None:
        """Added or changed by a reload: replay our announcements to it alone."""
        self.due.replay.setdefault(peer, 0)
        self.reflected.pop(peer, None)

    def peer_removed(self, peer: IPv4Address) -> None:
        self.due.unreflect[peer] = set(self.reflected.pop(peer, {}))
        self.reflected_count.pop(peer, None)
        self.due.replay.pop(peer, None)
        self.due.teardown.discard(peer)

    def request_teardown(self, peer: IPv4Address) -> None:
        self.due.teardown.add(peer)
        self.wake.set()

    def request_reload(self) -> None:
        """The config file was rewritten: one (coalesced) reload is due."""
        self.reloads.request()
        self.wake.set()

    def drain(self) -> tuple[IPv4Network, ...]:
        """Switch to :attr:`Mode.DRAIN`; returns what ExaBGP held for us (announced and
        reflected), which the next sync withdraws."""
        reflected = set().union(*self.reflected.values()) if self.reflected else set()
        self.mode = Mode.DRAIN
        self.wake.set()
        return tuple(sorted(self.held | reflected))

    def settled(self) -> bool:
        """Nothing of ours left in ExaBGP and no replay or End-of-RIB still due."""
        return (not self.due.full_replay and not self.held
                and not any(self.reflected.values()) and not self._gr.owes_eor()
                and not self.due.replay and self.reloads.settled())

    # ---- the writer ----

    async def run(self, session: Callable[[], api.ApiSession | None],
                  stopping: Callable[[], bool]) -> None:
        """The sync loop: one :meth:`sync` per wake-up while an API session is open."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            s = session()
            if s is None or s.closed or stopping():
                continue
            try:
                await self.sync(s)
            except ExaBGPExited as exc:
                self.log.warning("announcement sync interrupted: %s", exc)
            except BGPError as exc:
                self.log.error("announcement sync failed: %s", exc)
                if not s.closed:
                    # Retry later rather than spin on a rejected command.
                    await asyncio.sleep(1.0)
                    self.wake.set()

    async def sync(self, session: api.ApiSession) -> None:
        """One pass over the work due (module doc)."""
        due, peers = self.due, self._peers()
        full_replay = due.full_replay
        if full_replay:
            due.full_replay = False
            self.acked.clear()
            self.reflected.clear()
        retry = False
        for peer, prefixes in sorted(due.unreflect.items()):
            # Before the reload drops the neighbor: ExaBGP caches a neighbor's RIB by name
            # across reloads, so a re-added peer would otherwise get these again.
            for line in api.cmds_bulk_withdraw(prefixes, neighbor=peer):
                try:
                    await session.command(line)
                except CommandRejected:
                    break
        due.unreflect.clear()
        loaded = await self.reloads.settle(session, peers)
        if full_replay and loaded:
            # The global replay below reaches every neighbor ExaBGP holds, which is all of
            # them once the reload is confirmed; until then a neighbor being added keeps its
            # own replay (else it would get nothing but our End-of-RIB).
            due.replay.clear()
        desired = self.desired()
        await self._sync_global(session, desired)
        if not loaded:
            retry = bool(due.replay) or not self.reloads.settled()
        else:
            for peer in sorted(due.replay):
                if not await self._replay_to(session, peer, desired, peers):
                    retry = True
        for peer in sorted(due.teardown):
            due.teardown.discard(peer)
            if peer in peers:
                try:
                    await session.command(api.cmd_teardown(peer, CEASE_MAX_PREFIXES))
                    self.log.warning("tore down %s: maximum prefixes exceeded", peer)
                except CommandRejected as exc:
                    self.log.error("%s", exc)
        if not await self._sync_reflection(session, peers):
            retry = True
        for peer in self._gr.eors_due():
            if not self._established(peer):
                self._gr.eor_sent(peer)  # that session is gone: nothing is owed to it
                continue
            if peer in due.replay:
                continue  # End-of-RIB only after the replay (RFC 4724 §4.1: EoR ends the stale window)
            await session.command(api.cmd_eor(peer))
            self._gr.eor_sent(peer)
            self.log.info("sent End-of-RIB to %s", peer)
        if retry:
            delay = RELOAD_RETRY_S
            if not self.reloads.settled():
                delay = min(delay, max(0.05, self.reloads.retry_in()))
            asyncio.get_running_loop().call_later(delay, self.wake.set)

    async def _sync_global(self, session: api.ApiSession,
                           desired: dict[IPv4Network, tuple[str, ...]]) -> None:
        gone = sorted((self.held | set(self.acked)) - set(desired))
        new = sorted(p for p, c in desired.items() if self.acked.get(p) != c)
        rejected = False
        for line, chunk in zip(api.cmds_bulk_withdraw(gone), chunks(gone)):
            await session.command(line)
            self.prefixes_sent["withdraw"] += len(chunk)
            self.held.difference_update(chunk)
            for p in chunk:
                self.acked.pop(p, None)
        for comms, group in by_communities(new, desired):
            for line, chunk in zip(api.cmds_bulk_announce(group, communities=comms),
                                   chunks(group)):
                self.held.update(chunk)
                try:
                    await session.command(line)
                except CommandRejected as exc:
                    # Keep going: a bad prefix must not hold back End-of-RIB for the rest.
                    self.log.error("%s", exc)
                    rejected = True
                    continue
                self.prefixes_sent["announce"] += len(chunk)
                for p in chunk:
                    self.acked[p] = comms
        if new and not rejected:
            self.log.info("announced %d prefixes", len(new))

    async def _replay_to(self, session: api.ApiSession, peer: IPv4Address,
                         desired: dict[IPv4Network, tuple[str, ...]],
                         peers: Mapping[IPv4Address, PeerConfig]) -> bool:
        """Announce the acked set to one neighbor (added by a reload; called once the reload
        is confirmed). False when ExaBGP rejects it: a reload is requested, retried later."""
        if peer not in peers:
            self.due.replay.pop(peer, None)
            return True
        items = sorted(p for p in self.acked if p in desired)
        try:
            for comms, group in by_communities(items, dict(self.acked)):
                for line in api.cmds_bulk_announce(group, neighbor=peer, communities=comms):
                    await session.command(line)
        except CommandRejected:
            # Never given up: a neighbor left without our routes is an idle session that
            # looks healthy. A confirmed reload should have created it: reload again.
            tries = self.due.replay[peer] = self.due.replay.get(peer, 0) + 1
            if tries == 1:
                self.reloads.invalidate()
            if tries % RELOAD_RETRIES == 0:
                self.log.error("ExaBGP does not know neighbor %s after a reload (%d tries); "
                               "still retrying", peer, tries)
            return False
        self.due.replay.pop(peer, None)
        self.reflected.pop(peer, None)  # re-send reflected routes to it as well
        return True

    async def _sync_reflection(self, session: api.ApiSession,
                               peers: Mapping[IPv4Address, PeerConfig]) -> bool:
        config = self._config()
        cluster = config.route_reflector_cluster_id
        if cluster is None:
            return True
        ibgp = {a: c.rr_client for a, c in peers.items() if c.asn == config.local_as}
        # Draining: an empty plan for every neighbor we reflected to withdraws it all.
        plan = ({peer: {} for peer in self.reflected} if self.mode is Mode.DRAIN
                else reflector.plan(self._rib, ibgp, cluster))
        ok = True
        for peer, routes in sorted(plan.items()):
            if peer in self.due.replay:
                ok = False
                continue
            want = {pfx: api.cmd_announce_path(pfx, r.attrs, peer, r.originator_id,
                                               r.cluster_list)
                    for pfx, r in routes.items()}
            have = self.reflected.setdefault(peer, {})
            gone = sorted(p for p in have if p not in want)
            try:
                for line, chunk in zip(api.cmds_bulk_withdraw(gone, neighbor=peer),
                                       chunks(gone)):
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
            self.reflected_count[peer] = len(have)
        return ok
