import errno
from ipaddress import IPv4Network

import pytest

from felix.backoff import FailureBackoff
from felix.dataplane import RouteFailure
from felix.routes import Route
from felix.routetable import ApplyResult

POD = Route.device("198.19.1.5/32", "prveth1")
POD2 = Route.device("198.19.1.6/32", "prveth2")


def result(*failures):
    return ApplyResult(0, 0, 0, tuple(failures), 0.001, True)


def enodev(route):
    return RouteFailure(route, errno.ENODEV, f"no device named {route.ifname!r}", "add")


def test_delay_doubles_up_to_the_cap():
    b = FailureBackoff(base_s=1, max_s=30)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.delay(10_000) == 30


def test_first_failure_is_new_then_repeats_are_quiet_and_backed_off():
    b = FailureBackoff(base_s=1, max_s=30, summary_s=60)
    outs = [b.observe(result(enodev(POD)), now=float(t)) for t in range(8)]
    assert [len(o.new) for o in outs] == [1, 0, 0, 0, 0, 0, 0, 0]
    assert [o.repeats for o in outs] == [0, 1, 1, 1, 1, 1, 1, 1]
    assert [o.retry_in for o in outs] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert all(o.failing == 1 and o.summary is None for o in outs)


def test_a_new_failure_is_retried_soon_even_next_to_an_old_one():
    b = FailureBackoff(base_s=1, max_s=30)
    for t in range(6):
        out = b.observe(result(enodev(POD)), now=float(t))
    assert out.retry_in == 30
    out = b.observe(result(enodev(POD), enodev(POD2)), now=7.0)
    assert [f.route for f in out.new] == [POD2] and out.retry_in == 1 and out.failing == 2


def test_changed_errno_is_logged_again():
    b = FailureBackoff()
    b.observe(result(enodev(POD)), now=0.0)
    out = b.observe(result(RouteFailure(POD, errno.ENETDOWN, "Network is down", "add")), now=1.0)
    assert [f.errno for f in out.new] == [errno.ENETDOWN] and out.repeats == 0


def test_recovery_is_reported_once_with_the_attempts_and_ends_the_retries():
    b = FailureBackoff()
    for t in range(3):
        b.observe(result(enodev(POD)), now=float(t))
    out = b.observe(result(), now=3.0)
    assert out.recovered == ((IPv4Network("198.19.1.5/32"), 3),)
    assert out.failing == 0 and out.retry_in is None and out.new == ()
    assert b.observe(result(), now=4.0).recovered == ()


def test_a_failed_dump_attempts_no_route_so_nothing_recovers():
    b = FailureBackoff()
    b.observe(result(enodev(POD)), now=0.0)
    out = b.observe(result(RouteFailure(None, errno.EINTR, "dump failed", "dump")), now=1.0)
    assert out.recovered == () and out.failing == 2 and len(out.new) == 1 and out.new[0].route is None
    out = b.observe(result(enodev(POD)), now=2.0)
    assert out.recovered == ((None, 1),) and out.failing == 1


def test_several_ops_for_one_dst_count_once():
    b = FailureBackoff()
    out = b.observe(result(RouteFailure(POD, errno.EIO, "x", "delete"), RouteFailure(POD, errno.EIO, "x", "add")),
                    now=0.0)
    assert len(out.new) == 1 and out.failing == 1


def test_periodic_summary_while_failing():
    b = FailureBackoff(base_s=1, max_s=30, summary_s=60)
    summaries = []
    for t in range(0, 200, 10):
        out = b.observe(result(enodev(POD), enodev(POD2)), now=float(t))
        if out.summary:
            summaries.append((t, out.summary))
    assert [t for t, _ in summaries] == [60, 120, 180]
    s = summaries[0][1]
    assert s["failing"] == 2 and s["by_errno"] == {"ENODEV": 2}
    assert s["oldest"] in ("198.19.1.5/32", "198.19.1.6/32") and s["oldest_for_s"] == 60
    assert s["unlogged_failures"] == 12  # 6 applies x 2 routes, none of them logged
    assert b.observe(result(), now=300.0).summary is None


def test_bad_settings():
    with pytest.raises(ValueError):
        FailureBackoff(base_s=5, max_s=1)
