"""Our own graceful restart: the hold on the routes the previous run programmed.

After a restart (RFC 4724 §4.2, the receiving speaker's view) the BGP routes we programmed last
time are still in the FIB. Until BGP has re-converged (End-of-RIB from every configured peer,
RFC 4724 §4.1, or the restart time elapsing) they stay as *stale* desired routes, so no route
is removed before its replacement could have arrived. The peers' graceful restart (their
routes kept while their session is down) is the speaker's (bgp/).
"""
from __future__ import annotations

import logging
import time
from ipaddress import IPv4Network
from typing import Callable, Iterable, Mapping, Protocol

from bgp.model import SpeakerStatus
from felix.dataplane import RouteDataplane
from felix.routes import Route, dst_key

log = logging.getLogger("podroute.gr_hold")


class BgpRoutes(Protocol):
    """The felix side the hold writes: removing one of the ``"bgp"`` owner's routes by key."""

    def remove_key(self, owner: str, key: int) -> None: ...


def previous_bgp_routes(dp: RouteDataplane, *, table: int, protocol: int,
                        desired: Mapping[IPv4Network, Route]) -> list[Route]:
    """Routes of ours in the FIB that look BGP-learned (a gateway or several next hops) and
    that nothing desires yet: what the previous run left. A failed dump means nothing to keep
    (logged). Blocking (one netlink dump): the agent calls it before its loop runs."""
    try:
        existing = dp.dump_routes(table=table, protocol=protocol)
    except Exception as e:  # noqa: BLE001 - a failed dump only means nothing to preserve
        log.warning("could not read existing routes", extra={"kv": {"error": str(e)}})
        return []
    return [r for r in existing if r.dst not in desired and (r.gateway is not None or r.multipath)]


def converged(status: SpeakerStatus) -> bool:
    """Every configured peer Established with its End-of-RIB in. A peer whose session is not
    back yet keeps the hold: in a mesh the node we dial first is not the only one whose routes
    we kept. No peers at all is not converged (the timer ends the hold)."""
    peers = status.peers
    return bool(peers) and all(p.state == "established" and p.eor_received for p in peers)


class RestartHold:
    """The hold. ``keep(routes)`` starts it (the caller sets them as felix's ``"bgp"`` routes);
    ``stale`` maps dst key -> route still held; the BGP path pops a key from it when BGP
    re-announces or withdraws that prefix; :meth:`check` ends the hold when ``status()`` says
    converged or ``hold_s`` seconds (``clock``, monotonic) have passed, removing what is left
    through ``routes``."""

    def __init__(self, routes: BgpRoutes, status: Callable[[], SpeakerStatus], hold_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._routes = routes
        self._status = status
        self._hold_s = hold_s
        self._clock = clock
        self.until: float | None = None
        self.stale: dict[int, Route] = {}

    @property
    def active(self) -> bool:
        return self.until is not None

    def keep(self, routes: Iterable[Route]) -> None:
        """Hold ``routes`` (nothing to hold: no hold)."""
        self.stale = {dst_key(r.dst): r for r in routes}
        if self.stale:
            self.until = self._clock() + self._hold_s
            log.info("keeping routes from the previous run until BGP converges",
                     extra={"kv": {"routes": len(self.stale), "max_wait_s": self._hold_s}})

    def check(self) -> bool:
        """End the hold if BGP re-converged or the time ran out: the held routes BGP did not
        re-announce are removed. True if the hold ended now."""
        if self.until is None:
            return False
        if not (self._clock() >= self.until or converged(self._status())):
            return False
        gone = list(self.stale)
        for key in gone:
            self._routes.remove_key("bgp", key)
        log.info("BGP converged after restart; stale routes released", extra={"kv": {"removed": len(gone)}})
        self.until = None
        self.stale = {}
        return True
