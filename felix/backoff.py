"""Retry timing and log rate-limiting for routes that keep failing to program.

A route whose device does not exist (ENODEV: an IPAM allocation whose veth is gone), whose
gateway is unreachable or whose dst another protocol holds stays desired and fails at every
apply. A fixed 1 s retry timer that every failed apply re-arms retries one such route ~3 times
a second (each failed apply starts another timer chain), and logging every failure writes ~39
lines a second. :class:`FailureBackoff` is fed every ApplyResult and says:

 - when to retry: ``base_s * 2 ** (attempts - 1)`` capped at ``max_s``, for the most recently
   failing route (a new failure is retried after ``base_s``; one that failed 6 times waits
   ``max_s``). Any other apply (a BGP update, a link event) also retries every failing route,
   and counts as an attempt;
 - what to log: a failure the first time it is seen for a dst (or when its errno changes);
   a recovery once; and, while anything keeps failing, one summary every ``summary_s``.

A dst counts as recovered when an apply that got past its dump does not report it: RouteTable
retries every failed dst at every apply until it succeeds or is no longer desired. A failed
dump (RouteFailure.route None, keyed ``None`` here) attempts no route, so it changes nothing
else. Times are ``time.monotonic()`` seconds.
"""
from __future__ import annotations

import errno as E
from dataclasses import dataclass, field
from ipaddress import IPv4Network

from .dataplane import RouteFailure
from .routetable import ApplyResult

BASE_S = 1.0
MAX_S = 30.0
SUMMARY_S = 60.0


@dataclass
class _Failing:
    failure: RouteFailure
    since: float
    attempts: int = 1


@dataclass(frozen=True)
class Outcome:
    """What one apply's failures mean. ``new``: failures to log now (first for their dst, or a
    new errno); ``repeats``: failures this apply that were already known (not to be logged);
    ``recovered``: (dst or None for the dump, failed attempts before) no longer failing;
    ``failing``: dsts failing now; ``retry_in``: seconds until a retry is due, None when nothing
    fails; ``summary``: a periodic summary to log, or None."""

    new: tuple[RouteFailure, ...] = ()
    repeats: int = 0
    recovered: tuple[tuple[IPv4Network | None, int], ...] = ()
    failing: int = 0
    retry_in: float | None = None
    summary: dict | None = field(default=None)


class FailureBackoff:
    """See module doc. Not thread-safe: fed from one task (the agent's felix loop)."""

    def __init__(self, *, base_s: float = BASE_S, max_s: float = MAX_S, summary_s: float = SUMMARY_S) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f"need 0 < base_s <= max_s, got {base_s}, {max_s}")
        self.base_s, self.max_s, self.summary_s = base_s, max_s, summary_s
        self._failing: dict[IPv4Network | None, _Failing] = {}
        self._last_summary: float | None = None
        self._suppressed = 0  # repeats not logged since the last summary

    @property
    def failing(self) -> int:
        """How many dsts (plus the dump, if it fails) are failing now."""
        return len(self._failing)

    def failing_by_errno(self) -> dict[int, int]:
        """Failing dsts (and the dump) now, per errno: EEXIST counts the dsts another
        protocol's route holds (RouteTable's conflict)."""
        out: dict[int, int] = {}
        for f in self._failing.values():
            out[f.failure.errno] = out.get(f.failure.errno, 0) + 1
        return out

    def delay(self, attempts: int) -> float:
        """Seconds before retry number ``attempts + 1`` of something that failed ``attempts`` times."""
        return min(self.base_s * 2 ** min(max(attempts, 1) - 1, 62), self.max_s)

    def observe(self, res: ApplyResult, now: float) -> Outcome:
        """Take in one apply's result (see module doc)."""
        failing = self._failing
        new: list[RouteFailure] = []
        repeats = 0
        seen: set[IPv4Network | None] = set()
        dump_failed = False
        for f in res.errors:
            key = f.route.dst if f.route is not None else None
            dump_failed |= key is None
            if key in seen:
                continue  # several ops for one dst (delete + add): one failure
            seen.add(key)
            cur = failing.get(key)
            if cur is None:
                failing[key] = _Failing(f, now)
                new.append(f)
            else:
                cur.attempts += 1
                if cur.failure.errno != f.errno:
                    new.append(f)
                else:
                    repeats += 1
                cur.failure = f
        recovered: list[tuple[IPv4Network | None, int]] = []
        for key in [k for k in failing if k not in seen]:
            if dump_failed and key is not None:
                continue  # no route was attempted
            recovered.append((key, failing.pop(key).attempts))
        self._suppressed += repeats
        summary = None
        if not failing:
            self._last_summary = None
            self._suppressed = 0
            retry_in = None
        else:
            retry_in = self.delay(min(f.attempts for f in failing.values()))
            if self._last_summary is None:
                self._last_summary = now
            elif now - self._last_summary >= self.summary_s:
                summary = self._summary(now)
                self._last_summary = now
                self._suppressed = 0
        return Outcome(tuple(new), repeats, tuple(recovered), len(failing), retry_in, summary)

    def _summary(self, now: float) -> dict:
        oldest_key, oldest = min(self._failing.items(), key=lambda kv: kv[1].since)
        by_errno: dict[str, int] = {}
        for f in self._failing.values():
            name = E.errorcode.get(f.failure.errno, str(f.failure.errno))
            by_errno[name] = by_errno.get(name, 0) + 1
        return {"failing": len(self._failing), "by_errno": by_errno,
                "oldest": str(oldest_key) if oldest_key is not None else "dump",
                "oldest_for_s": round(now - oldest.since, 1), "oldest_attempts": oldest.attempts,
                "oldest_error": oldest.failure.message, "unlogged_failures": self._suppressed}
