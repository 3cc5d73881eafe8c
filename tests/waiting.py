"""Waiting on a condition, bounded in time, instead of sleeping for a guessed margin."""
from __future__ import annotations

import asyncio
import time
from typing import Callable, TypeVar

T = TypeVar("T")


async def until(cond: Callable[[], T], timeout: float, what: str, step: float = 0.01) -> T:
    """Poll ``cond()`` on the running loop every ``step`` s until it is truthy and return it;
    AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(step)


def wait(cond: Callable[[], T], timeout: float, what: str, step: float = 0.05) -> T:
    """Blocking form of :func:`until` (for tests driving subprocesses)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


async def wait_until(cond: Callable[[], T], timeout: float = 10.0, step: float = 0.005) -> T:
    """:func:`until` for the agent's unit tests: a 10 s default and a 5 ms step."""
    return await until(cond, timeout, "the condition", step)
