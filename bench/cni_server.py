"""Minimal agent-side CNI server for the CNI benchmark: CNIServer + CNIPlugin + IPAM +
NetlinkWiring, exactly the objects the agent composes (without felix and BGP).

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
    ipam = IPAM(Path(state), blocks=[IPv4Network(block)])
    plugin = CNIPlugin(ipam=ipam, wiring=NetlinkWiring(), mtu=1500, protocol=90)
    await CNIServer(Path(sock), plugin).run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(main(*sys.argv[1:4]))
    except KeyboardInterrupt:
        pass
