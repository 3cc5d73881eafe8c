"""ExaBGP config reloads: coalesced, confirmed through the API, retried until they hold.

ExaBGP 5.0 (reactor/interrupt.py, reactor/loop.py) loses a SIGUSR1 two ways, neither of
which it reports to the API helper:

- a signal that arrives while the previous one is still unhandled is ignored ("ignoring -
  still handling previous signal");
- the main loop clears the signal (``Signal.rearm()``) *before* it checks
  ``_pending_adjribout()``, and skips the reload when any active neighbor still has updates
  queued: the reload is dropped silently. A neighbor that is not Established keeps the
  routes we announced queued until its next connection attempt fails, so this is common
  while a cluster is forming.

So a reload is never assumed to happen. :class:`Reloads` counts config generations
(:meth:`Reloads.request`, one per config file write) and keeps at most one SIGUSR1 in
flight. After each signal the sync loop (bgp/adj_rib_out.py) calls :meth:`Reloads.settle`,
which asks ExaBGP ``show neighbor json`` twice: the first answer is produced after the
signal handler ran (the query is sent after the signal), the second in a later turn of the
main loop, whose top handles or drops the signal, so the second answer shows the outcome.
The reload is confirmed when that answer holds exactly the configured neighbors (address
and peer AS); requests made meanwhile cause exactly one more reload. Otherwise SIGUSR1 is
sent again after a backoff (:data:`RETRY_INITIAL_S` doubling to :data:`RETRY_MAX_S`), for as
long as it takes, with the difference logged and kept in :attr:`Reloads.missing` (status).

Not visible through the API, so not confirmed: a change of a neighbor's MD5 password,
passive flag, capabilities or families alone (the signal is still retried only when the
neighbor set or a peer AS differs).
"""
from __future__ import annotations

import logging
import time
from ipaddress import IPv4Address
from typing import Callable, Mapping

from . import api
from .model import PeerConfig

# Delay (s) before SIGUSR1 is sent again when the answer still differs from the config:
# the first, and the cap it doubles to.
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 8.0


class Reloads:
    """See module doc. ``signal()`` sends ExaBGP SIGUSR1 (nothing when none runs);
    ``clock()`` is monotonic seconds."""

    def __init__(self, signal: Callable[[], None], log: logging.Logger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._signal = signal
        self._clock = clock
        self.log = log
        self.wanted = 0         # config generations written
        self.confirmed = 0      # generation ExaBGP was last seen to hold
        self.in_flight: int | None = None  # generation the outstanding SIGUSR1 asked for
        self.signals = 0        # SIGUSR1 sent (status, metrics)
        self.retries = 0        # of those, re-sent because a reload did not take
        self.missing: tuple[str, ...] = ()  # what the last check found wrong (status)
        self._attempt = 0
        self._retry_at = 0.0
        self._checked = False   # a check ran since the last signal (or process start)
        # The neighbors of the in-flight generation (the file as the signal asked for it):
        # a change made during the reload is the next reload's, not a failure of this one.
        self._expect: dict[IPv4Address, PeerConfig] | None = None

    def request(self) -> None:
        """The config file was rewritten: ExaBGP must reload it."""
        self.wanted += 1

    def process_started(self) -> None:
        """A new ExaBGP reads the current file at start: if it changed since the last
        confirmation, confirm it like a reload (SIGUSR1 only if that check fails)."""
        self.in_flight = None if self.settled() else self.wanted
        self._expect = None
        self._checked = False
        self._attempt = 0
        self._retry_at = self._clock() + RETRY_INITIAL_S

    def invalidate(self) -> None:
        """ExaBGP rejected a command for a neighbor the config has: reload and check again."""
        if self.settled():
            self.request()

    def settled(self) -> bool:
        """ExaBGP was seen to hold the latest config."""
        return self.confirmed >= self.wanted

    def retry_in(self) -> float:
        """Seconds until :meth:`settle` would send SIGUSR1 again (0 when settled)."""
        return 0.0 if self.settled() else max(0.0, self._retry_at - self._clock())

    async def settle(self, session: api.ApiSession,
                     peers: Mapping[IPv4Address, PeerConfig]) -> bool:
        """Signal, check and retry as the module doc says; True when settled. Raises what
        :meth:`bgp.api.ApiSession.show_neighbors` raises."""
        if self.settled():
            self.in_flight = None
            return True
        now = self._clock()
        # Re-sent only once a check after the previous signal showed it did not take.
        if self.in_flight is None or (self._checked and now >= self._retry_at):
            if self.in_flight is not None:
                self.retries += 1
                self._attempt += 1
                self.log.warning("ExaBGP has not loaded its config after a reload (%s): "
                                 "signalling it again", "; ".join(self.missing))
            self.in_flight = self.wanted
            self._checked = False
            self._expect = dict(peers)
            self._signal()
            self.signals += 1
            self._retry_at = now + min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** self._attempt)
        gen = self.in_flight
        await session.show_neighbors()   # answered after the signal handler ran
        held = await session.show_neighbors()  # a later loop turn: the signal was handled
        self.missing = differences(held, peers if self._expect is None else self._expect, peers)
        self._checked = True
        if self.missing:
            return False
        if self._attempt:
            self.log.info("ExaBGP loaded its config after %d extra reload(s)", self._attempt)
        self.confirmed = gen
        self._attempt = 0
        self._expect = None
        if self.confirmed < self.wanted:
            self.in_flight = None  # changed meanwhile: exactly one more reload, at once
            return await self.settle(session, peers)
        self.in_flight = None
        return True


def differences(held: Mapping[IPv4Address, tuple[int | None, str]],
                expect: Mapping[IPv4Address, PeerConfig],
                current: Mapping[IPv4Address, PeerConfig]) -> tuple[str, ...]:
    """What ExaBGP's neighbors (``held``, from ``show neighbor json``) lack or have beyond
    ``expect`` (the config the signal asked for). A reload reads the file as it is when it
    runs, so a difference that ``current`` (the config now) explains is not one."""
    def ok_asn(a: IPv4Address) -> bool:
        return held[a][0] in (None, expect[a].asn, current[a].asn if a in current else None)

    out = [f"neighbor {a} not loaded" for a in sorted(expect)
           if a in current and a not in held]
    out += [f"neighbor {a} has peer AS {held[a][0]}, configured {expect[a].asn}"
            for a in sorted(expect) if a in held and not ok_asn(a)]
    out += [f"removed neighbor {a} still loaded" for a in sorted(held)
            if a not in expect and a not in current]
    return tuple(out)
