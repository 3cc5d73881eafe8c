"""Child-process helpers for the ExaBGP supervisor: exponential backoff and stop-by-PID."""
from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass


@dataclass
class Backoff:
    """Exponential restart delay: ``initial`` s doubling to ``maximum`` s; a child that ran
    at least ``stable_after`` s resets it to ``initial``."""

    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = 60.0
    current: float = 0.0

    def next_delay(self, ran_for: float) -> float:
        if ran_for >= self.stable_after or self.current == 0.0:
            self.current = self.initial
        else:
            self.current = min(self.current * 2, self.maximum)
        return self.current


async def terminate(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> int | None:
    """SIGTERM ``proc`` by its PID, SIGKILL after ``timeout`` s; return its exit code."""
    if proc.returncode is not None:
        return proc.returncode
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return await asyncio.wait_for(proc.wait(), wait)
        except asyncio.TimeoutError:
            continue
    return proc.returncode
