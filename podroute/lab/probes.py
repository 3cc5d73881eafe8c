"""What the lab measures and proves: FIB contents, new-node convergence time, the ping matrix.

FIB probes read ``ip route`` in a node's namespace, filtered to podroute's routes
(``proto 90``, Calico's felix protocol number). Convergence of a joining node is timed
on the wall clock (``time.time()``) because its BGP session time comes from the agent's
status (``since``, unix seconds).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable

from podroute.lab import agents, netns
from podroute.lab.model import TIMEOUT_SCALE, Node, Pod
from podroute.lab.netns import LabError

JOIN_TIMEOUT_S = 60
JOIN_POLL_S = 0.005   # the join figure's resolution; each poll is one `ip route` per pending node
PING_TRIES = 3
CLAIM_TIMEOUT_S = 60


def fib_routes(ns: str) -> list[str]:
    """Our non-workload routes in ``ns`` as ``ip route`` prints them (proto 90, not scope link)."""
    out = netns.ip("route", "show", "proto", "90", ns=ns, check=False).stdout
    return [line.strip() for line in out.splitlines() if "scope link" not in line]


def fib_has(ns: str, block: str) -> bool:
    """True when ``ns`` has a proto-90 route for exactly ``block`` (CIDR string)."""
    out = netns.ip("route", "show", "exact", block, "proto", "90", ns=ns, check=False).stdout
    return block.split("/")[0] in out


def own_blocks(ns: str) -> list[str]:
    """The blocks the node in ``ns`` holds: its proto-90 blackhole routes (the agent installs
    one per affine block), in address order."""
    out = netns.ip("route", "show", "type", "blackhole", "proto", "90", ns=ns, check=False).stdout
    cidrs = [w for line in out.splitlines() for w in line.split()[:2] if "/" in w]
    return sorted(cidrs, key=lambda c: tuple(int(x) for x in c.replace("/", ".").split(".")))


def wait_claimed(node: Node, timeout: float = CLAIM_TIMEOUT_S) -> str:
    """Wait until ``node``'s agent holds a block (etcd labs: it claims its own), record the first
    in ``node.block`` and return it. Raises LabError when the agent exits or after ``timeout``
    s (scaled)."""
    deadline = time.monotonic() + timeout * TIMEOUT_SCALE
    while True:
        agents.check(node)
        blocks = own_blocks(node.ns)
        if blocks:
            node.block = blocks[0]
            return node.block
        if time.monotonic() > deadline:
            raise LabError(f"{node.name} claimed no block within {timeout * TIMEOUT_SCALE:.0f}s")
        time.sleep(0.02)


def registered_at(node: Node) -> float | None:
    """Unix time (s, ms resolution) of the last "node registered" line in ``node``'s agent.log
    (podroute.clusterwatch logs it once the datastore has the node's registration), or None."""
    try:
        lines = (Path(node.dir) / "agent.log").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if 'msg="node registered"' in line and line.startswith("ts="):
            ts = line.split()[0][3:].rstrip("Z")
            try:
                return datetime.fromisoformat(ts + "+00:00").timestamp()
            except ValueError:
                return None
    return None


def ping(src: Pod, dst: Pod) -> bool:
    """One ICMP echo from ``src``'s namespace to ``dst``'s IP answered, in up to 3 tries of 1 s."""
    for _ in range(PING_TRIES):
        if netns.run(["ping", "-c", "1", "-W", "1", "-q", dst.ip or ""], ns=src.ns, check=False).returncode == 0:
            return True
    return False


def ping_matrix(pods: list[Pod]) -> dict[tuple[str, str], bool]:
    """``{(src name, dst name): replied}`` for every ordered pair (a pod reaches itself)."""
    return {(s.name, d.name): (s is d) or ping(s, d) for s in pods for d in pods}


@dataclass(frozen=True)
class JoinTiming:
    """``total_s``: from starting the new agent until its block is in every other FIB;
    ``converge_s``: from its last BGP session coming up until then (``total_s`` when the
    agent reported no session time); ``registered_s``: from the agent's registration in the
    datastore ("node registered" in its log) until then, None when it logged none (a file
    lab without a cluster file)."""
    total_s: float
    converge_s: float
    registered_s: float | None = None


def converge_time(t_converged: float, t_started: float, session_since: float,
                  t_registered: float | None = None) -> JoinTiming:
    """The :class:`JoinTiming` for wall-clock times (unix s); ``session_since`` 0 = unknown."""
    total = t_converged - t_started
    reg = max(0.0, t_converged - t_registered) if t_registered else None
    return JoinTiming(total, max(0.0, t_converged - session_since) if session_since else total, reg)


def wait_block_everywhere(new: Node, others: Iterable[Node]) -> float:
    """Poll until ``new``'s block is in every node of ``others``' FIB; return the wall-clock
    time (unix s) it was. Raises LabError when ``new``'s agent exits or after 60 s (scaled)
    naming the nodes still missing it."""
    others = list(others)
    pending = {n.name for n in others}
    deadline = time.monotonic() + JOIN_TIMEOUT_S * TIMEOUT_SCALE
    while pending:
        agents.check(new)
        for n in others:
            if n.name in pending and fib_has(n.ns, new.block):
                pending.discard(n.name)
        if time.monotonic() > deadline:
            raise LabError(f"{new.block} never reached {', '.join(sorted(pending))}")
        time.sleep(JOIN_POLL_S)
    return time.time()


def time_join(new: Node, others: list[Node], t_started: float) -> JoinTiming:
    """Wait for ``new``'s block in every other FIB (:func:`wait_block_everywhere`) and time it
    from ``t_started`` (unix s, when its agent was started) and from its session coming up."""
    if not new.block:
        wait_claimed(new)
    t_converged = wait_block_everywhere(new, others)
    st = agents.status(new)
    since = max((p.get("since") or 0) for p in st["bgp"]["peers"]) if st else 0
    return converge_time(t_converged, t_started, since, registered_at(new))
