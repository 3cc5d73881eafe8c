"""FRR (bgpd only) as the lab's route reflector or top-of-rack router.

bgpd runs without zebra (``-Z``): the lab's FRR never programs a FIB, it only speaks
BGP. As a ToR it keeps the originating node's NEXT_HOP (third-party next hop on the
shared subnet, RFC 4271 §5.1.3; FRR's ``attribute-unchanged next-hop``), as a reflector
it leaves NEXT_HOP alone anyway (iBGP, RFC 4456).
"""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from podroute.lab.bird import BirdNeighbor
from podroute.lab.netns import run

BGPD = "/usr/lib/frr/bgpd"


def render(router_id: ipaddress.IPv4Address, asn: int, neighbors: list[BirdNeighbor], log_file: Path,
           role: str, graceful_restart_time: int = 120) -> str:
    """``role``: "rr" (iBGP route reflector) or "tor" (eBGP, one AS per node)."""
    lines = ["frr defaults datacenter", "hostname lab-router", f"log file {log_file}", "!",
             f"router bgp {asn}", f" bgp router-id {router_id}", " no bgp ebgp-requires-policy",
             " no bgp default ipv4-unicast", " bgp graceful-restart",
             f" bgp graceful-restart restart-time {graceful_restart_time}"]
    if role == "rr":
        lines.append(f" bgp cluster-id {router_id}")
    for n in neighbors:
        lines.append(f" neighbor {n.address} remote-as {n.asn}")
        lines.append(f" neighbor {n.address} timers 10 30")
    lines += [" !", " address-family ipv4 unicast"]
    for n in neighbors:
        lines.append(f"  neighbor {n.address} activate")
        if role == "rr":
            lines.append(f"  neighbor {n.address} route-reflector-client")
        else:
            lines.append(f"  neighbor {n.address} attribute-unchanged next-hop")
    lines += [" exit-address-family", "!"]
    return "\n".join(lines) + "\n"


def command(conf: Path, vty_dir: Path, pidfile: Path) -> list[str]:
    return [BGPD, "-Z", "-S", "-n", "--vty_socket", str(vty_dir), "-i", str(pidfile), "-f", str(conf)]


def established(vty_dir: Path, ns: str) -> dict[str, bool]:
    """``{neighbor address: Established?}`` from ``show bgp ipv4 unicast summary json``."""
    out = run(["vtysh", "--vty_socket", str(vty_dir), "-d", "bgpd", "-c", "show bgp ipv4 unicast summary json"],
              ns=ns, timeout=10, check=False).stdout
    try:
        peers = json.loads(out or "{}").get("peers", {})
    except ValueError:
        return {}
    return {addr: p.get("state") == "Established" for addr, p in peers.items()}
