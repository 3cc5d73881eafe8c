"""The agent's own event-loop lag: how late the loop runs what is due, and what held it up.

A ticker task sleeps ``interval_s`` at a time; how much later than due it wakes is the lag
(every callback, CNI request, BGP update and status query waits that long too). The most
recent sample and the worst of the last ``window_s`` seconds are in :meth:`LoopLag.status`,
the ``"loop"`` key of ``Agent.status()``:
``{"lag_s": float, "worst_s": float, "worst_at": unix time or None, "threshold_s": float}``.

A blocked loop cannot report itself, so a watchdog thread looks at the ticker's due time
every ``threshold_s / 4``: once the loop is late by half the threshold it samples the loop
thread's Python stack (``sys._current_frames()``), and once it is late by the threshold
(then by 2x, 4x, ... while it stays blocked) it logs a warning with that stack. When the
loop turns again a lag over the threshold is logged once more with the last stack sampled
during it, so a short stall is named too. The stack names the Python function that was
running; a C call (a blocking recv) shows as the Python line that called it.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import sys
import threading
import time
import traceback
from typing import Any

log = logging.getLogger("podroute.looplag")

INTERVAL_S = 0.05
THRESHOLD_S = 0.25
WINDOW_S = 60.0
STACK_FRAMES = 12


def _describe(frame: Any) -> tuple[str, str]:
    """(innermost "function (file:line)", the last STACK_FRAMES frames innermost first,
    joined with " <- ")."""
    frames = traceback.extract_stack(frame)[-STACK_FRAMES:]
    names = [f"{f.name} ({f.filename}:{f.lineno})" for f in reversed(frames)]
    return (names[0] if names else "?"), " <- ".join(names)


class LoopLag:
    """See module doc. ``await run()`` on the loop to be measured (returns only when
    cancelled); ``status()`` from that loop. ``stalls`` counts lags over the threshold."""

    def __init__(self, *, interval_s: float = INTERVAL_S, threshold_s: float = THRESHOLD_S,
                 window_s: float = WINDOW_S, log: logging.Logger = log) -> None:
        if not (interval_s > 0 and threshold_s > 0 and window_s > 0):
            raise ValueError("interval_s, threshold_s and window_s must be > 0")
        self.interval_s = interval_s
        self.threshold_s = threshold_s
        self.window_s = window_s
        self.stalls = 0
        self._log = log
        self._lag = 0.0
        # The worst sample per slot of window_s / 60 seconds that had one: [slot, lag, unix time].
        self._slot_s = window_s / 60
        self._worst: collections.deque[list] = collections.deque()
        self._due: float | None = None     # time.monotonic() at which the ticker should wake
        self._loop_thread: int | None = None
        self._sample: tuple[float, str, str] | None = None  # (due it belongs to, running, stack)
        self._reports = 0                  # watchdog warnings for the current due

    # -- the ticker (on the loop) -----------------------------------------------------------------
    async def run(self) -> None:
        self._loop_thread = threading.get_ident()
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(stop,), name="looplag-watchdog", daemon=True)
        watchdog.start()
        try:
            while True:
                due = time.monotonic() + self.interval_s
                self._due, self._reports = due, 0
                await asyncio.sleep(self.interval_s)
                self._record(max(0.0, time.monotonic() - due), due)
        finally:
            self._due = None
            stop.set()  # the watchdog sees it within threshold_s / 4; not joined on the loop

    def _record(self, lag: float, due: float) -> None:
        now = time.time()
        self._lag = lag
        slot = int(now / self._slot_s)
        worst = self._worst
        if worst and worst[-1][0] == slot:
            if lag > worst[-1][1]:
                worst[-1][1:] = [lag, now]
        else:
            worst.append([slot, lag, now])
        self._expire(now)
        if lag > self.threshold_s:
            self.stalls += 1
            sample = self._sample if self._sample is not None and self._sample[0] == due else None
            running, stack = (sample[1], sample[2]) if sample else ("not sampled", "")
            self._log.warning("event loop lag over threshold", extra={"kv": {
                "lag_s": round(lag, 3), "threshold_s": self.threshold_s, "running": running, "stack": stack}})

    def status(self) -> dict[str, Any]:
        """The contract of ``Agent.status()["loop"]`` (module doc): the latest lag sample, the
        worst in the last ``window_s`` seconds and when it was measured (unix time; None
        before the first sample), all in seconds."""
        now = time.time()
        self._expire(now)
        best = None
        for _slot, lag, at in self._worst:
            if best is None or lag > best[0]:
                best = (lag, at)
        return {"lag_s": round(self._lag, 6), "worst_s": round(best[0], 6) if best else 0.0,
                "worst_at": best[1] if best else None, "threshold_s": self.threshold_s}

    def overdue_s(self) -> float | None:
        """Seconds the ticker is past its due time now (0.0 while the loop keeps time; growing
        while the loop is blocked), or None when :meth:`run` is not running. Safe from any
        thread (one attribute read): ``/livez`` asks it from the metrics listener's thread."""
        due = self._due
        return None if due is None else max(0.0, time.monotonic() - due)

    def _expire(self, now: float) -> None:
        # A slot goes once all of it is older than the window: a worst figure stays
        # visible for window_s to window_s + one slot (window_s / 60).
        worst, width = self._worst, self._slot_s
        while worst and (worst[0][0] + 1) * width <= now - self.window_s:
            worst.popleft()

    # -- the watchdog (its own thread) --------------------------------------------------------------
    def _watch(self, stop: threading.Event) -> None:
        period = self.threshold_s / 4
        while not stop.wait(period):
            due = self._due
            if due is None:
                continue
            late = time.monotonic() - due
            if late <= self.threshold_s / 2:
                continue
            frame = sys._current_frames().get(self._loop_thread)  # noqa: SLF001 - the documented way
            if frame is None:
                continue
            running, stack = _describe(frame)
            del frame
            if self._due != due:
                continue  # the loop turned while we looked: this stack is not the stall's
            self._sample = (due, running, stack)
            if late > self.threshold_s * 2 ** self._reports:
                self._reports += 1
                self._log.warning("event loop blocked", extra={"kv": {
                    "blocked_s": round(late, 3), "threshold_s": self.threshold_s, "running": running,
                    "stack": stack}})
