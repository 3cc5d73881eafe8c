import asyncio
from ipaddress import IPv4Address, IPv4Interface

import pytest

from ipip.errors import DataplaneError, IPIPUnavailable
from ipip.fake import FakeDataplane
from ipip.tunl0 import Tunl0Manager

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


async def test_run_retries_with_backoff_and_reports_status():
    dp = FakeDataplane()
    dp.fail_next("add_address", times=3)
    m = Tunl0Manager(dp, address=ADDR)
    task = asyncio.create_task(m.run(interval=0.5, min_backoff=0.01))
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if m.status.healthy:
                break
        assert m.status.healthy, m.status
        assert m.status.applies >= 4
        assert dp.list_addresses("tunl0") == [IPv4Interface("198.19.4.1/32")]
        # A changed desired address wakes the loop before the resync interval.
        m.set_address(IPv4Address("198.19.4.2"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if dp.list_addresses("tunl0") == [IPv4Interface("198.19.4.2/32")]:
                break
        assert dp.list_addresses("tunl0") == [IPv4Interface("198.19.4.2/32")]
        # Drift (someone deleted our address) is repaired by the next resync.
        dp.del_address("tunl0", IPv4Interface("198.19.4.2/32"))
        await asyncio.sleep(0.8)
        assert dp.list_addresses("tunl0") == [IPv4Interface("198.19.4.2/32")]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_run_surfaces_unavailable_without_crashing():
    m = Tunl0Manager(FakeDataplane(ipip_supported=False), address=ADDR)
    task = asyncio.create_task(m.run(interval=0.05, min_backoff=0.01))
    await asyncio.sleep(0.2)
    assert not task.done()
    assert "no IPIP support" in m.status.last_error
    assert m.status.consecutive_failures >= 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
