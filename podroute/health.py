"""The agent's liveness and readiness, as Calico Felix has them: one set of checks behind
``/livez`` and ``/readyz`` (:mod:`podroute.metrics.server`), ``podroute status`` (the
``"health"`` key), the ``podroute_ready`` gauge and systemd's ``READY=1``
(:mod:`podroute.sdnotify`).

Report shape (JSON): ``{"ok": bool, "checks": {name: {"ok": bool, "reason": str}}}``; ``ok``
is the AND of the checks.

Readiness (:meth:`Health.readiness`, on the event loop), checks:

- ``fib``: felix has applied once with a kernel read that succeeded
  (:attr:`podroute.felix_loop.FelixDriver.synced_at`), and the restart hold on the previous
  run's routes is released (:class:`podroute.gr_hold.RestartHold`: End-of-RIB from every peer
  or ``gracefulRestartTime`` elapsed);
- ``bgp``: every configured peer (the speaker's effective set: node config plus datastore)
  has reached Established once since the agent started, or has been given up on: after
  ``peer_wait_s`` seconds from when the peer was first configured its absence is reported (one
  warning log line per peer) and the check passes naming it. ``peer_wait_s`` is the node's
  ``gracefulRestartTime`` (120 s by default): the bound the restart hold already gives BGP to
  re-converge, and the time peers keep this node's routes as stale (RFC 4724 §4.2). Waiting
  longer for a dead peer gains nothing, since the hold stops waiting for it then; waiting
  less would report ready while the hold is still waiting for that peer's End-of-RIB;
- ``agent``: no guarded task has failed and the agent is not stopping.

Liveness (:meth:`Health.liveness`, from any thread): ``loop``: the event loop turns, i.e. the
loop-lag ticker (:mod:`podroute.looplag`) is overdue by less than :data:`LIVENESS_S`. A
blocked loop cannot answer for itself, so this reads the ticker's due time from the caller's
thread.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Callable

from podroute.looplag import LoopLag

log = logging.getLogger("podroute.health")

LIVENESS_S = 5.0   # a loop this late is stalled: 20x the loop-lag warning threshold (0.25 s)
READY_PERIOD_S = 1.0   # the agent evaluates readiness this often (podroute.sdnotify's task)
STALE_S = 3 * READY_PERIOD_S   # an evaluation older than this: the loop that makes them is stuck


@dataclass(frozen=True)
class Check:
    """One check: passed or not, and why (one line)."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class Report:
    """``ok`` and the checks by name; ``at``: unix time of the evaluation."""

    ok: bool
    checks: dict[str, Check] = field(default_factory=dict)
    at: float = 0.0

    @classmethod
    def of(cls, checks: dict[str, Check], at: float | None = None) -> "Report":
        return cls(all(c.ok for c in checks.values()), checks, time.time() if at is None else at)

    def as_dict(self) -> dict[str, Any]:
        """The wire shape (module doc)."""
        return {"ok": self.ok, "checks": {k: {"ok": c.ok, "reason": c.reason} for k, c in self.checks.items()}}

    def summary(self) -> str:
        """One line: "ready" or the failing checks' reasons."""
        if self.ok:
            return "ready"
        return "not ready: " + "; ".join(f"{k}: {c.reason}" for k, c in self.checks.items() if not c.ok)


class Health:
    """The checks over the agent's parts (module doc). ``agent`` is a
    :class:`podroute.agent.Agent` (read: ``felix``, ``hold``, ``speaker``, ``guard``,
    ``looplag``, ``cfg``); ``clock`` is monotonic seconds (tests pass a fake one)."""

    def __init__(self, agent: Any, *, peer_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._agent = agent
        self.peer_wait_s = peer_wait_s
        self._clock = clock
        self._first_seen: dict[IPv4Address, float] = {}
        self._established: set[IPv4Address] = set()
        self._reported: set[IPv4Address] = set()
        self.latest: Report | None = None   # the last readiness() result
        self.live_limit_s = LIVENESS_S
        self.stale_s = STALE_S
        self._peers_up = (0, 0)   # (peers that reached Established, peers), at the last evaluation

    # -- readiness (event loop) -----------------------------------------------------------------
    def readiness(self) -> Report:
        """Evaluate every readiness check now (module doc); also kept as :attr:`latest`."""
        self.latest = Report.of({"fib": self._fib(), "bgp": self._bgp(), "agent": self._tasks()})
        return self.latest

    def served(self, now: float | None = None) -> Report:
        """What ``/readyz`` and ``podroute_ready`` say (any thread): :attr:`latest`, or not
        ready with a ``loop`` check when it is older than ``stale_s`` (:data:`STALE_S`) or missing."""
        rep = self.latest
        now = time.time() if now is None else now
        if rep is None:
            return Report.of({"loop": Check(False, "readiness has not been evaluated yet")}, now)
        age = now - rep.at
        if age > self.stale_s:
            return Report.of({**rep.checks, "loop": Check(
                False, f"the last readiness evaluation is {age:.1f} s old: the event loop is not turning")}, now)
        return rep

    def status_line(self, rep: Report) -> str:
        """systemd's STATUS=: readiness, peers, routes and pods on one line (on the loop)."""
        routes = self._agent.routes
        up, n = self._peers_up
        return (f"{rep.summary()}; {up}/{n} BGP peer(s) up once; {len(routes.desired())} route(s) desired; "
                f"{len(routes.owned('workloads'))} pod(s)")

    def _fib(self) -> Check:
        a = self._agent
        if a.felix.synced_at is None:
            last = a.felix.last_apply
            why = "felix has not applied yet" if last is None else \
                f"felix's applies have not read the kernel yet ({'; '.join(last['errors'][:1])})"
            return Check(False, why)
        if a.hold.active:
            return Check(False, f"holding {len(a.hold.stale)} route(s) of the previous run until BGP "
                               f"re-converges (End-of-RIB from every peer, at most {a.cfg.graceful_restart_time} s)")
        return Check(True, "routes programmed")

    def _bgp(self) -> Check:
        now = self._clock()
        peers = self._agent.speaker.status().peers
        if not peers:
            self._peers_up = (0, 0)
            return Check(True, "no BGP peers configured")
        waiting, absent = [], []
        for p in peers:
            first = self._first_seen.setdefault(p.address, now)
            if p.state == "established" or p.flaps:
                self._established.add(p.address)
            if p.address in self._established:
                continue
            if now - first >= self.peer_wait_s:
                absent.append(p)
                if p.address not in self._reported:
                    self._reported.add(p.address)
                    log.warning("BGP peer has not reached Established; readiness no longer waits for it",
                                extra={"kv": {"peer": p.address, "state": p.state, "waited_s": round(now - first),
                                              "last_error": p.last_error or ""}})
            else:
                waiting.append(p)
        self._peers_up = (sum(1 for p in peers if p.address in self._established), len(peers))
        if waiting:
            return Check(False, "waiting for Established: " + ", ".join(
                f"{p.address} ({p.state}, {max(0, round(self.peer_wait_s - (now - self._first_seen[p.address])))} s left)"
                for p in waiting))
        up = len(peers) - len(absent)
        if absent:
            return Check(True, f"{up}/{len(peers)} peer(s) reached Established; absent after {self.peer_wait_s:g} s "
                               f"(reported): " + ", ".join(str(p.address) for p in absent))
        return Check(True, f"{up}/{len(peers)} peer(s) reached Established")

    def _tasks(self) -> Check:
        g = self._agent.guard
        if g.failed.is_set():
            return Check(False, "a task failed: " + "; ".join(f"{f.name}: {f.error}" for f in g.failures[:3]))
        if g.stopping:
            return Check(False, "the agent is stopping")
        return Check(True, "all tasks running")

    # -- liveness (any thread) --------------------------------------------------------------------
    def liveness(self) -> Report:
        """The ``loop`` check (module doc; limit ``live_limit_s``, :data:`LIVENESS_S`). Safe
        from any thread."""
        return live(self._agent.looplag, self.live_limit_s)


def live(looplag: LoopLag, limit_s: float = LIVENESS_S) -> Report:
    """``{"loop": ...}``: the loop-lag ticker is running and overdue by less than ``limit_s``."""
    late = looplag.overdue_s()
    if late is None:
        return Report.of({"loop": Check(False, "the event loop's ticker is not running")})
    if late >= limit_s:
        return Report.of({"loop": Check(False, f"the event loop has not turned for {late:.1f} s "
                                               f"(limit {limit_s:g} s)")})
    return Report.of({"loop": Check(True, f"the event loop turns (ticker {1000 * late:.0f} ms late)")})
