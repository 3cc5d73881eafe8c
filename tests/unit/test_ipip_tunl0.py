import asyncio
from ipaddress import IPv4Address, IPv4Interface

import pytest

from ipip.errors import DataplaneError, IPIPUnavailable
from ipip.fake import FakeDataplane
from ipip.tunl0 import Tunl0Manager
from waiting import until

ADDR = IPv4Address("198.19.4.1")


def test_converges_from_nothing_and_is_idempotent():
    dp = FakeDataplane()
    m = Tunl0Manager(dp, address=ADDR, mtu=1480)
    m.apply()
    link = dp.get_link("tunl0")
    assert (link.kind, link.mtu, link.up) == ("ipip", 1480, True)
    assert dp.list_addresses("tunl0") == [IPv4Interface("198.19.4.1/32")]
    n = len(dp.calls)
    m.apply()
    assert len(dp.calls) == n, dp.calls[n:]


def test_removes_foreign_addresses_and_fixes_mtu():
    dp = FakeDataplane(ipip_loaded=True)
    dp.add_address("tunl0", IPv4Interface("198.19.9.9/32"))
    dp.add_address("tunl0", IPv4Interface("198.19.4.1/24"))
    dp.set_link("tunl0", mtu=1400)
    m = Tunl0Manager(dp, address=ADDR, mtu=1480)
    m.apply()
    assert dp.list_addresses("tunl0") == [IPv4Interface("198.19.4.1/32")]
    assert dp.get_link("tunl0").mtu == 1480
    m.set_address(None)
    m.apply()
    assert dp.list_addresses("tunl0") == []


def test_unavailable_kernel_raises_one_line_message():
    m = Tunl0Manager(FakeDataplane(ipip_supported=False), address=ADDR)
    with pytest.raises(IPIPUnavailable) as ei:
        m.apply()
    msg = str(ei.value)
    assert msg == ("this kernel has no IPIP support (module ipip not available); "
                   "use VXLAN encapsulation")
    assert "\n" not in msg
    assert not m.apply_and_record()
    assert m.status.last_error == msg and not m.status.healthy


def test_wrong_kind_of_tunl0_is_an_error():
    dp = FakeDataplane()
    dp.add_foreign_link("tunl0", kind="dummy")
    with pytest.raises(DataplaneError, match="dummy"):
        Tunl0Manager(dp, address=ADDR).apply()


async def test_run_retries_with_backoff_and_wakes_on_a_new_address():
    """The resync interval is an hour here: only the backoff retries and the wake on a new
    desired address can make these happen."""
    dp = FakeDataplane()
    dp.fail_next("add_address", times=3)
    m = Tunl0Manager(dp, address=ADDR)
    task = asyncio.create_task(m.run(interval=3600, min_backoff=0.01))
    try:
        await until(lambda: m.status.healthy, 5, "tunl0 healthy after three failures")
        assert m.status.applies >= 4
        assert dp.list_addresses("tunl0") == [IPv4Interface("198.19.4.1/32")]
        m.set_address(IPv4Address("198.19.4.2"))
        await until(lambda: dp.list_addresses("tunl0") == [IPv4Interface("198.19.4.2/32")], 5,
                    "the new address")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_repairs_drift_on_the_periodic_resync():
    """Someone deletes our address; nothing wakes the loop, so the repair is the resync's."""
    dp = FakeDataplane()
    m = Tunl0Manager(dp, address=ADDR)
    task = asyncio.create_task(m.run(interval=0.05, min_backoff=0.01))
    try:
        want = [IPv4Interface("198.19.4.1/32")]
        await until(lambda: m.status.healthy, 5, "the first apply")
        assert dp.list_addresses("tunl0") == want
        applies = m.status.applies
        dp.del_address("tunl0", want[0])
        await until(lambda: dp.list_addresses("tunl0") == want, 5, "the resync's repair")
        assert m.status.applies > applies
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_surfaces_unavailable_without_crashing():
    m = Tunl0Manager(FakeDataplane(ipip_supported=False), address=ADDR)
    task = asyncio.create_task(m.run(interval=0.05, min_backoff=0.01))
    await until(lambda: m.status.consecutive_failures >= 2, 5, "two failed applies")
    assert not task.done()
    assert "no IPIP support" in m.status.last_error
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
