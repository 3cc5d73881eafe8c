"""BIRD 2 as the lab's route reflector / ToR: config rendering and birdc queries.

The reflector follows RFC 4456: every node is an iBGP ``rr client``; BIRD reflects
each node's block to the others with the next hop unchanged (iBGP keeps NEXT_HOP,
RFC 4271 §5.1.3), so each node routes another node's block via that node's IP.
BIRD runs without a kernel protocol: its namespace's FIB is never touched.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from podroute.lab.netns import run


@dataclass(frozen=True)
class BirdNeighbor:
    name: str
    address: ipaddress.IPv4Address
    asn: int
    local: ipaddress.IPv4Address | None = None   # our address on the neighbor's subnet


def render(router_id: ipaddress.IPv4Address, asn: int, neighbors: list[BirdNeighbor],
           log_file: Path, role: str = "rr", graceful_restart_time: int = 120) -> str:
    """``role``: "rr" (iBGP route reflector, RFC 4456) or "tor" (eBGP to one AS per node,
    keeping the originating node as NEXT_HOP on the shared subnet, RFC 4271 §5.1.3)."""
    session = ["  rr client;", f"  rr cluster id {router_id};"] if role == "rr" else []
    keep = " next hop keep;" if role == "tor" else ""
    lines = [
        f"router id {router_id};",
        f'log "{log_file}" all;',
        "protocol device {}",
        # Next hops of reflected routes are on the fabric subnet: resolve them directly.
        "protocol direct { ipv4; interface \"eth*\"; }",
        "template bgp node_client {",
        f"  local {router_id} as {asn};",
        "  direct;  # iBGP defaults to multihop in BIRD; the nodes share the fabric subnet",
        *session,
        "  hold time 30;",
        "  graceful restart on;",
        f"  graceful restart time {graceful_restart_time};",
        # Reflect BGP routes only, never the fabric's connected route.
        f"  ipv4 {{ import all; export where source = RTS_BGP;{keep} }};",
        "}",
    ]
    for n in neighbors:
        local = f"local {n.local} as {asn}; " if n.local else ""
        lines.append(f"protocol bgp {n.name} from node_client {{ {local}neighbor {n.address} as {n.asn}; }}")
    return "\n".join(lines) + "\n"


def birdc(sock: Path, *cmd: str, ns: str) -> str:
    return run(["birdc", "-s", str(sock), *cmd], ns=ns, timeout=10).stdout


def established(sock: Path, ns: str) -> dict[str, bool]:
    """``{protocol name: Established?}`` for the BGP protocols, from ``birdc show protocols``."""
    out = birdc(sock, "show", "protocols", ns=ns)
    states: dict[str, bool] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "BGP":
            states[parts[0]] = "Established" in line
    return states
