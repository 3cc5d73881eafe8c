"""Minimal agent-side CNI server for the CNI benchmark: CNIServer + CNIPlugin + IPAM +
NetlinkWiring, with felix as the only writer of each pod's /32 (RouteTableWorker over the
netlink dataplane, FelixDriver, FelixWorkloads), exactly the objects the agent composes
(without BGP).

Run inside the bench's host namespace: ``python -m bench.cni_server <socket> <state dir> <block>``.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from ipaddress import IPv4Network
from pathlib import Path


async def main(sock: str, state: str, block: str) -> None:
    from cni.ipam import IPAM
    from cni.netlink_wiring import NetlinkWiring
    from cni.plugin import CNIPlugin
    from cni.server import CNIServer
    from felix.netlink import NetlinkDataplane
    from felix.routetable import RouteTable
    from felix.worker import RouteTableWorker
    from podroute.felix_loop import FelixDriver
    from podroute.workloads import FelixWorkloads
    ipam = IPAM(Path(state), blocks=[IPv4Network(block)])
    routes = RouteTableWorker(RouteTable(NetlinkDataplane(), protocol=90))
    felix = FelixDriver(routes, resync_s=3600)
    plugin = CNIPlugin(ipam=ipam, wiring=NetlinkWiring(), mtu=1500, protocol=90,
                       workloads=FelixWorkloads(routes, felix))
    felix_task = asyncio.create_task(felix.run())
    felix.kick()
    try:
        await CNIServer(Path(sock), plugin).run()
    finally:
        felix_task.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except KeyboardInterrupt:
        pass
