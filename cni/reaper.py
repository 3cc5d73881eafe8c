"""Batched deletion of retired veth pairs, after DELs (see :mod:`cni.netlink_wiring`).

DEL retires a pod's host veth (down, in a link group) and asks the :class:`Reaper` for a
round; a round waits ``delay`` seconds (DELs come in bursts: one kernel request for the
burst), then calls ``reap``. A request that arrives while a round is running gets one more
round after it: that round's group deletion may have reached the kernel before the newly
retired veth joined the group, and a veth left retired keeps its pod end (and its
CNI_IFNAME) alive in the pod's netns.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from .errors import CNIError

log = logging.getLogger(__name__)


def _log_task_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %r (retired veths stay until the next DEL or agent start)",
                  task.get_name(), task.exception())


class Reaper:
    """Runs ``reap`` (async; raises CNIError on a kernel refusal) in rounds on request.
    ``delay``: seconds between a request and its round (may be changed at any time)."""

    def __init__(self, reap: Callable[[], Awaitable[Any]], delay: float) -> None:
        self.reap = reap
        self.delay = delay
        self._task: asyncio.Task | None = None
        self._wanted = False

    def schedule(self) -> None:
        """Ask for a round (call on the event loop, after the veth was retired)."""
        self._wanted = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="cni-reap")
            self._task.add_done_callback(_log_task_failure)

    async def _loop(self) -> None:
        # Bounded: every round consumes at least one request.
        while self._wanted:
            await asyncio.sleep(self.delay)
            self._wanted = False  # requests from here on need another round
            try:
                await self.reap()
            except CNIError as e:
                log.error("deleting retired veths failed: %s (retried at the next DEL or "
                          "agent start)", e.msg)
