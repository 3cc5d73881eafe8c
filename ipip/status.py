"""Health of a device manager and the retry loop shared by the tunl0 and VXLAN managers.

The loop mirrors Felix's ipip_mgr/vxlan_mgr: apply the desired device state, and on
failure log, back off (doubling from ``min_backoff`` up to ``interval`` seconds) and
retry; on success resync every ``interval`` seconds or as soon as the desired state
changes. Failures never escape ``run()``; they are surfaced via ``status``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ManagerStatus:
    """``healthy``: the last apply succeeded. ``last_error``: one-line message of the last
    failure (None after a success). ``last_success``: ``time.monotonic()`` of the last
    successful apply. ``consecutive_failures``, ``applies``: counts."""

    healthy: bool = False
    last_error: str | None = None
    last_success: float | None = None
    consecutive_failures: int = 0
    applies: int = 0


class Reconciler:
    """Base: subclasses implement ``apply()`` (sync, idempotent, raises ipip.errors)."""

    log = logging.getLogger("ipip")

    def __init__(self) -> None:
        self._status = ManagerStatus()
        self._wake: asyncio.Event | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def status(self) -> ManagerStatus:
        return self._status

    def apply(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _record(self, err: BaseException | None) -> None:
        s = self._status
        if err is None:
            self._status = ManagerStatus(True, None, time.monotonic(), 0, s.applies + 1)
        else:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._status = ManagerStatus(False, msg, s.last_success, s.consecutive_failures + 1,
                                         s.applies + 1)

    def apply_and_record(self) -> bool:
        """Run ``apply()``; record the outcome in ``status``; True on success. Never raises
        an Exception (BaseExceptions like CancelledError pass through)."""
        try:
            self.apply()
        except Exception as e:  # noqa: BLE001 - surfaced via status, retried by run()
            self._record(e)
            return False
        self._record(None)
        return True

    def _changed(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self, interval: float = 10, *, min_backoff: float = 0.1) -> None:
        """Keep the device in sync until cancelled. ``interval``: resync period (s), also the
        backoff cap. apply() runs in a private single worker thread (netlink is blocking)."""
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=type(self).__name__)
        loop = asyncio.get_running_loop()
        backoff = min_backoff
        try:
            while True:
                self._wake.clear()
                ok = await loop.run_in_executor(self._executor, self.apply_and_record)
                if ok:
                    backoff = min_backoff
                    delay = interval
                else:
                    self.log.warning("%s: %s; retrying in %.2f s", type(self).__name__,
                                     self._status.last_error, backoff)
                    delay = backoff
                    backoff = min(backoff * 2, interval)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            self._wake = None
