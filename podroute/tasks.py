"""Guarded long-lived asyncio tasks.

Every long-running coroutine of the agent runs under :class:`TaskGuard`. A task that
crashes (or returns while the agent is not stopping) is logged with its traceback,
recorded for ``podroute status``, and ends the agent with a non-zero exit so that
systemd's ``Restart=on-failure`` brings up a fresh one: a half-alive agent that no
longer reconciles the FIB is worse than a restart, which graceful restart makes cheap.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

log = logging.getLogger("podroute.tasks")


@dataclass(frozen=True)
class TaskFailure:
    name: str
    error: str
    at: float


class TaskGuard:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failures: list[TaskFailure] = []
        self.failed = asyncio.Event()
        self.stopping = False

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.create_task(self._guard(name, factory), name=name)
        self._tasks[name] = task

    async def _guard(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        try:
            await factory()
            if not self.stopping:
                raise RuntimeError("returned unexpectedly")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the whole point is to catch and surface
            self.failures.append(TaskFailure(name, f"{type(e).__name__}: {e}", time.time()))
            log.error("task crashed", exc_info=True, extra={"kv": {"task": name}})
            self.failed.set()

    def running(self) -> list[str]:
        return [n for n, t in self._tasks.items() if not t.done()]

    async def cancel_all(self, timeout: float = 10.0) -> None:
        self.stopping = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
