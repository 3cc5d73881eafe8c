import asyncio
import logging
import time

import pytest
from waiting import wait_until

from podroute.looplag import LoopLag

THRESHOLD = 0.1


def _deliberately_blocking_call(seconds):
    time.sleep(seconds)  # what a synchronous netlink dump on the loop looks like to the loop


@pytest.fixture
async def lag():
    ll = LoopLag(interval_s=0.01, threshold_s=THRESHOLD, log=logging.getLogger("test.looplag"))
    task = asyncio.create_task(ll.run())
    await wait_until(lambda: ll.status()["worst_at"] is not None)
    yield ll
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_status_shape_when_idle(lag):
    st = lag.status()
    assert set(st) == {"lag_s", "worst_s", "worst_at", "threshold_s"}
    assert st["threshold_s"] == THRESHOLD
    assert 0.0 <= st["lag_s"] < THRESHOLD and 0.0 <= st["worst_s"] < THRESHOLD
    assert abs(st["worst_at"] - time.time()) < 5
    assert lag.stalls == 0


async def test_blocked_loop_is_measured_and_logged_with_the_blocking_function(lag, caplog):
    caplog.set_level(logging.WARNING, logger="test.looplag")
    before = time.time()
    _deliberately_blocking_call(0.6)
    await wait_until(lambda: lag.stalls >= 1)
    st = lag.status()
    assert st["worst_s"] >= 0.5 and st["worst_at"] >= before
    # Both the watchdog (during the stall) and the ticker (after it) name the culprit.
    # (Filtered by it: a loaded test machine may add short stalls of its own.)
    ours = [r for r in caplog.records if r.kv["running"].startswith("_deliberately_blocking_call (")]
    assert {r.getMessage() for r in ours} == {"event loop blocked", "event loop lag over threshold"}
    assert all("test_blocked_loop_is_measured" in r.kv["stack"] for r in ours)
    during = [r for r in ours if r.getMessage() == "event loop blocked"]
    assert THRESHOLD <= during[0].kv["blocked_s"] < 0.6
    after = [r for r in ours if r.getMessage() == "event loop lag over threshold"]
    assert len(after) == 1 and after[0].kv["lag_s"] >= 0.5


async def test_long_stall_is_reported_again_at_doubling_times_not_per_check(lag, caplog):
    caplog.set_level(logging.WARNING, logger="test.looplag")
    _deliberately_blocking_call(0.9)  # threshold 0.1: reports at > 0.1, 0.2, 0.4, 0.8 s
    await wait_until(lambda: lag.stalls >= 1)
    during = [r.kv["blocked_s"] for r in caplog.records if r.getMessage() == "event loop blocked"
              and r.kv["running"].startswith("_deliberately_blocking_call (")]
    assert 2 <= len(during) <= 4, during  # ~36 watchdog checks ran during the stall
    assert during == sorted(during)


async def test_worst_is_forgotten_after_the_window():
    ll = LoopLag(interval_s=0.01, threshold_s=THRESHOLD, window_s=0.5)
    task = asyncio.create_task(ll.run())
    try:
        await asyncio.sleep(0.05)
        _deliberately_blocking_call(0.3)
        await wait_until(lambda: ll.status()["worst_s"] >= 0.25)
        await wait_until(lambda: ll.status()["worst_s"] < 0.25, timeout=5)  # aged out of the window
        assert ll.stalls == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        LoopLag(threshold_s=0)
