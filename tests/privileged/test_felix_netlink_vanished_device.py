"""felix's route writer when a pod's veth disappears between two link-map reads of one write.

Found by tests/e2e/test_churn.py at the issue's full size (50 x 100) once the agent no longer
froze: a DEL removed a veth while felix was writing that pod's /32, the guarded felix task
crashed on ``felix.netlink._NoDevice`` and the agent exited 1 mid-burst.
"""
import errno
import json

import pytest

from nsutil import sh
from felix.dataplane import RouteOp
from felix.netlink import NetlinkDataplane
from felix.routes import Route

pytestmark = pytest.mark.privileged


def test_write_reports_enodev_when_the_last_ops_device_vanished_before_a_map_refresh(make_netns):
    ns = make_netns("felixgone")
    for cmd in ("ip link add d1 type veth peer name d1p", "ip link set d1 up"):
        sh(*cmd.split(), ns=ns)
    dp = NetlinkDataplane(ns)
    try:
        dp.refresh_links()                 # d1 in the cached link map
        sh("ip", "link", "del", "d1", ns=ns)  # a DEL removes the pod's veth
        # d1's op encodes from the cache; d9 (never existed) makes write() re-read the map,
        # which no longer has d1, so the ACK-carrying re-encode of d1's op finds no device.
        ops = [RouteOp("add", Route.device("198.19.1.5/32", "d1")),
               RouteOp("add", Route.device("198.19.1.6/32", "d9"))]
        failures = dp.write(ops)
    finally:
        dp.close()
    assert sorted((str(f.route.dst), f.errno) for f in failures) == [
        ("198.19.1.5/32", errno.ENODEV), ("198.19.1.6/32", errno.ENODEV)]
    assert json.loads(sh("ip", "-j", "route", "show", "proto", "90", ns=ns).stdout or "[]") == []
