"""Draining a speaker (a node that is leaving): its report, and how delivery is judged.

BGP acknowledges no UPDATE (RFC 4271 §4.3), so "the peers have our withdrawal" is judged in
three steps by :func:`drain` (for :meth:`bgp.speaker.Speaker.drain`): ExaBGP acked every withdraw command; the
kernel's send queue of every Established session is empty, i.e. the peer's TCP acknowledged
every byte ExaBGP wrote (``tx_queue`` of ``/proc/net/tcp``, proc(5): for an established TCP
socket, bytes written and not yet acknowledged); then a settle time the operator chooses, for
the peers to act on it (a route reflector re-advertising, the other nodes reprogramming their
FIBs), which no protocol message reports.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterable

PROC_TCP = Path("/proc/self/net/tcp")   # this process's network namespace, where ExaBGP runs
_ESTABLISHED = "01"                     # TCP_ESTABLISHED in include/net/tcp_states.h


@dataclass(frozen=True)
class DrainReport:
    """What :meth:`Speaker.drain` did.

    ``withdrawn``: the prefixes ExaBGP held for us (announced and reflected) when it began.
    ``acked``: ExaBGP acked every withdrawal (and End-of-RIB to a session that came back).
    ``delivered`` / ``undelivered``: Established peers whose TCP had / had not acknowledged
    every byte by the deadline. ``down``: configured peers not Established; they hold our
    routes as stale until their restart timer ends (RFC 4724 §4.2) or a session comes back
    and gets End-of-RIB. Times in seconds.
    """

    withdrawn: tuple[IPv4Network, ...]
    acked: bool
    delivered: tuple[IPv4Address, ...]
    undelivered: tuple[IPv4Address, ...]
    down: tuple[IPv4Address, ...]
    settle_s: float
    took_s: float

    @property
    def complete(self) -> bool:
        return self.acked and not self.undelivered

    def as_dict(self) -> dict[str, object]:
        return {"complete": self.complete, "withdrawn": [str(p) for p in self.withdrawn],
                "acked": self.acked, "delivered": [str(a) for a in self.delivered],
                "undelivered": [str(a) for a in self.undelivered], "down": [str(a) for a in self.down],
                "settle_s": self.settle_s, "took_s": round(self.took_s, 3)}


def parse_send_queues(text: str, peers: Iterable[IPv4Address]) -> dict[IPv4Address, int]:
    """``{peer: unacknowledged bytes}`` over the established sockets to each of ``peers`` in
    ``/proc/net/tcp`` text (the largest if a peer has several, e.g. a connection collision).
    A peer with no established socket is absent. Addresses there are the kernel's __be32
    printed as a host-order %08X, hence the native-order unpack."""
    want = set(peers)
    out: dict[IPv4Address, int] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 5 or f[3] != _ESTABLISHED:
            continue
        try:
            addr = IPv4Address(struct.pack("=I", int(f[2].split(":")[0], 16)))
            tx = int(f[4].split(":")[0], 16)
        except (ValueError, struct.error):
            continue
        if addr in want:
            out[addr] = max(out.get(addr, 0), tx)
    return out


async def send_queues(peers: Iterable[IPv4Address], path: Path = PROC_TCP) -> dict[IPv4Address, int]:
    """:func:`parse_send_queues` of ``path``, read off the event loop."""
    text = await asyncio.to_thread(path.read_text)
    return parse_send_queues(text, peers)


async def drain(withdrawn: tuple[IPv4Network, ...], acked: Callable[[], bool],
                established: Callable[[], list[IPv4Address]],
                configured: Callable[[], list[IPv4Address]], *, speed: float, settle_s: float,
                timeout: float, log: logging.Logger) -> DrainReport:
    """Wait (polling every 20 ms) until ``acked()`` (ExaBGP acked the withdrawal of
    ``withdrawn``, already requested by the caller), then until every ``established()``
    peer's send queue is empty, both within ``timeout`` s of the start, then ``settle_s`` s.
    ``speed`` is ExaBGP's reactor speed (s); ``configured()`` lists every peer."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    deadline = t0 + timeout
    while not acked() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    done = acked()
    if done and withdrawn:
        # ExaBGP acks a command when it is queued; its reactor writes the UPDATE on a
        # later pass. A send queue read before that would be empty, and mean nothing.
        await asyncio.sleep(min(0.5, max(0.05, 5 * speed)))
    up = established()
    queues: dict[IPv4Address, int] = {}
    while up:
        try:
            queues = await send_queues(up)
        except OSError as exc:
            log.warning("cannot read TCP send queues: %s", exc)
            break
        # No socket to an Established peer: nothing confirms it, so it counts as not.
        if all(queues.get(a) == 0 for a in up) or loop.time() >= deadline:
            break
        await asyncio.sleep(0.02)
    undelivered = tuple(sorted(a for a in up if queues.get(a) != 0))
    if settle_s > 0:
        await asyncio.sleep(settle_s)
    report = DrainReport(withdrawn=withdrawn, acked=done,
                         delivered=tuple(sorted(a for a in up if a not in undelivered)),
                         undelivered=undelivered,
                         down=tuple(sorted(a for a in configured() if a not in up)),
                         settle_s=settle_s, took_s=loop.time() - t0)
    (log.info if report.complete else log.warning)(
        "drained: %d prefixes withdrawn, acked %s, delivered to %d peers, undelivered %d, "
        "down %d", len(withdrawn), done, len(report.delivered), len(undelivered),
        len(report.down))
    return report
