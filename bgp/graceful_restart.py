"""Graceful restart (RFC 4724), both sides, for :class:`bgp.speaker.Speaker`.

Ours (restarting speaker, §4.1): neighbors use ExaBGP's ``manual-eor``; every session that
comes up owes the peer an End-of-RIB, sent by the Adj-RIB-Out sync (bgp/adj_rib_out.py) only
after our announcements were replayed and acked, so a peer that kept our routes as stale never
sees End-of-RIB before them. :meth:`GracefulRestart.eors_due` is that debt.

The peers' (receiving speaker, §4.2): when a session goes down by a TCP/transport failure and
the peer advertised the GR capability in its last OPEN (restart time from that capability; our
``graceful_restart_time`` if we never saw its OPEN or the time was absent), its routes are kept
and marked stale instead of being flushed. They stay for the restart time; once the session is
back, re-announced or withdrawn routes lose the mark and the peer's End-of-RIB removes those
still stale (bounded by ``gr_stale_path_time``). A NOTIFICATION either way (RFC 8538 not
implemented), an administrative stop by us ("stop, message [...]"), a removed peer or a new
OPEN without the capability flush at once. Deviation: the F bit (forwarding state preserved)
is not checked; a restarted BIRD never sets it, and a pod route's next hop is the originating
node, not the restarting peer (a route reflector is not in the forwarding path).

Stale marks are prefix keys (bgp.prefix) of accepted and rejected paths alike: a stale
rejected path goes with the sweep too. Removing swept paths is the caller's ``sweep``
callback (the Adj-RIB-In owns the paths).
"""
from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv4Network
from typing import Callable, Collection, Iterable

from .prefix import key_of


class _PeerGR:
    __slots__ = ("advertised", "restart_time", "stale", "deadline")

    def __init__(self) -> None:
        # From the peer's last OPEN: None = no OPEN seen (e.g. the API helper was respawned
        # mid-session); restart_time None = capability absent or time missing.
        self.advertised: bool | None = None
        self.restart_time: int | None = None
        self.stale: set[int] = set()
        self.deadline: float | None = None  # speaker clock (s)


class GracefulRestart:
    """Per-peer GR state and the one timer for stale expiry (module doc).

    ``restart_time`` / ``stale_path_time``: seconds (SpeakerConfig.graceful_restart_time,
    gr_stale_path_time); ``clock``: monotonic seconds; ``sweep(peer, keys)`` removes the
    given prefix keys from ``peer``'s Adj-RIB-In.
    """

    def __init__(self, restart_time: int, stale_path_time: float,
                 clock: Callable[[], float], sweep: Callable[[IPv4Address, set[int]], None],
                 log: logging.Logger) -> None:
        self._default_restart = restart_time
        self._stale_path_time = stale_path_time
        self._clock = clock
        self._sweep_cb = sweep
        self.log = log
        self._peers: dict[IPv4Address, _PeerGR] = {}
        self._eor_due: set[IPv4Address] = set()
        self._timer: asyncio.TimerHandle | None = None

    # ---- peers ----

    def add_peer(self, peer: IPv4Address) -> None:
        self._peers.setdefault(peer, _PeerGR())

    def remove_peer(self, peer: IPv4Address) -> None:
        """Forget ``peer`` (its paths are flushed by the caller, not swept)."""
        self._peers.pop(peer, None)
        self._eor_due.discard(peer)

    def forget_stale(self, peer: IPv4Address) -> None:
        """Drop ``peer``'s stale marks without sweeping (its Adj-RIB-In is being flushed)."""
        g = self._peers.get(peer)
        if g is not None:
            g.stale, g.deadline = set(), None

    # ---- our side ----

    def eors_due(self) -> list[IPv4Address]:
        """Peers whose current session still needs our End-of-RIB, sorted."""
        return sorted(self._eor_due)

    def eor_sent(self, peer: IPv4Address) -> None:
        self._eor_due.discard(peer)

    def owes_eor(self) -> bool:
        return bool(self._eor_due)

    def exabgp_gone(self) -> None:
        """The ExaBGP process ended: no session is left to send End-of-RIB on."""
        self._eor_due.clear()

    # ---- session events ----

    def on_open(self, peer: IPv4Address, advertised: bool, restart_time: int | None) -> None:
        """Record the GR capability of ``peer``'s OPEN; without it, stale paths go now (§4.2)."""
        g = self._peers[peer]
        g.advertised, g.restart_time = advertised, restart_time
        if g.stale and not advertised:
            self.log.info("%s came back without graceful restart: dropping stale routes", peer)
            self._sweep(peer)

    def on_up(self, peer: IPv4Address) -> None:
        """Session Established: we owe End-of-RIB; the restart timer becomes the bounded
        wait for the peer's End-of-RIB (``stale_path_time``)."""
        self._eor_due.add(peer)
        g = self._peers[peer]
        if g.stale:
            g.deadline = self._clock() + self._stale_path_time
            self._arm_timer()

    def on_down(self, peer: IPv4Address, reason: str, was_established: bool,
                keys: Callable[[], Iterable[int]], flush_only: bool) -> bool:
        """Session down for ``reason`` (ExaBGP's text). Returns True when ``peer``'s paths
        were kept as stale (``keys()`` gives the prefix keys to mark), False when the caller
        must flush them. ``flush_only``: we are stopping or the peer was removed. A session
        that never got Established learned nothing: True, and a running stale timer stays."""
        self._eor_due.discard(peer)
        if not was_established:
            return True
        g = self._peers[peer]
        restart = self._restart_time(g, reason, flush_only)
        if restart is None or restart <= 0:
            return False
        g.stale = set(keys())
        g.deadline = self._clock() + restart
        self.log.info("peer %s down with graceful restart: keeping %d routes as stale for %d s",
                      peer, len(g.stale), restart)
        self._arm_timer()
        return True

    def on_eor(self, peer: IPv4Address) -> None:
        """End-of-RIB from ``peer``: whatever is still stale goes (§4.2)."""
        g = self._peers[peer]
        if g.stale:
            self.log.info("End-of-RIB from %s: removing %d routes still stale", peer, len(g.stale))
        self._sweep(peer)

    def refreshed(self, peer: IPv4Address, withdrawn: Collection[int],
                  announced: Iterable[tuple[IPv4Network, object, object]]) -> None:
        """An UPDATE from ``peer`` withdrew (prefix keys) or re-announced (prefix, next hop,
        attrs) paths: they are no longer stale (§4.2)."""
        g = self._peers[peer]
        if g.stale:
            g.stale.difference_update(withdrawn)
            g.stale.difference_update(key_of(pfx) for pfx, _nh, _a in announced)

    # ---- status ----

    def stale_keys(self, peer: IPv4Address) -> set[int]:
        g = self._peers.get(peer)
        return g.stale if g is not None else set()

    def advertised_time(self, peer: IPv4Address) -> int | None:
        """The restart time from ``peer``'s last OPEN, None without the capability."""
        g = self._peers.get(peer)
        return g.restart_time if g is not None and g.advertised else None

    # ---- timers ----

    def tick(self) -> None:
        """Apply stale expiries due at ``clock()`` and re-arm the timer."""
        now = self._clock()
        for peer, g in list(self._peers.items()):
            if g.deadline is not None and now >= g.deadline:
                self.log.warning("graceful restart of %s timed out: removing %d stale routes",
                                 peer, len(g.stale))
                self._sweep(peer)
        self._arm_timer()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _restart_time(self, g: _PeerGR, reason: str, flush_only: bool) -> int | None:
        if flush_only or reason.startswith("notification") or reason.startswith("stop"):
            return None
        if g.advertised is False:
            return None
        return g.restart_time if g.restart_time is not None else self._default_restart

    def _sweep(self, peer: IPv4Address) -> None:
        g = self._peers.get(peer)
        if g is None:
            return
        stale, g.stale, g.deadline = g.stale, set(), None
        self._sweep_cb(peer, stale)

    def _arm_timer(self) -> None:
        self.cancel()
        deadlines = [g.deadline for g in self._peers.values() if g.deadline is not None]
        if not deadlines:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(max(0.0, min(deadlines) - self._clock()) + 0.01, self.tick)
