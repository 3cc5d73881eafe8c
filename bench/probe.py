"""The probes every BGP receiver is measured with, so each side is observed the same way.

``FibCounter`` counts a namespace's routes by an in-process rtnetlink dump (the same code for
every receiver, only the protocol number differs); ``wait_count`` polls it every ``POLL_S`` and
stamps samples with ``time.time()`` (CLOCK_REALTIME, the clock BIRD's timestamps use too);
``tree_rss_mb`` / ``tree_cpu_ms`` read ``/proc`` for a process and its descendants.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from podroute.lab.netns import children

from . import ns as N

POLL_S = 0.005


# --- FIB counting --------------------------------------------------------------------------------
class FibCounter:
    """Counts unicast IPv4 routes of ``protocol`` in the main table of ``netns`` via rtnetlink."""

    def __init__(self, netns: str, protocol: int) -> None:
        from felix import codec
        from felix.nlsocket import open_route_socket
        self._c = codec
        self.protocol = protocol
        self.sock = open_route_socket(netns)
        self.sock.settimeout(10)
        self.buf = bytearray(1 << 20)
        self.seq = 1

    def count(self) -> int:
        c = self._c
        self.seq += 1
        self.sock.send(c.encode_route_dump_request(seq=self.seq, table=254, protocol=self.protocol))
        n = 0
        while True:
            k = self.sock.recv_into(self.buf)
            view = memoryview(self.buf)[:k]
            for mtype, _f, seq, off, length in c.iter_messages(view):
                if seq != self.seq:
                    continue
                if mtype == c.NLMSG_DONE or mtype == c.NLMSG_ERROR:
                    return n
                b = off + 16
                if mtype == c.RTM_NEWROUTE and view[b + 5] == self.protocol and view[b + 7] == 1:
                    n += 1

    def close(self) -> None:
        self.sock.close()


def wait_count(counter: FibCounter, pred, timeout: float, series: list | None = None,
               on_change=None) -> float:
    """Poll until ``pred(count)``; append (time.time(), count) to ``series``; call
    ``on_change(count)`` on the first sample and whenever the count changes. Returns time.time()
    of the first satisfying sample. Raises BenchError on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        n = counter.count()
        now = time.time()
        if n != last:
            if series is not None:
                series.append((now, n))
            if on_change is not None:
                on_change(n)
            last = n
        if pred(n):
            return now
        if time.monotonic() > deadline:
            raise N.BenchError(f"FIB count stuck at {n} after {timeout:.0f}s")
        time.sleep(POLL_S)


# --- process memory ------------------------------------------------------------------------------
def tree_rss_mb(pid: int) -> tuple[float, dict[str, float]]:
    """Sum of VmRSS (MB) over ``pid`` and its descendants, and per process ``{comm[pid]: MB}``."""
    kids = children()
    todo, total, parts = [pid], 0.0, {}
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            status = Path(f"/proc/{p}/status").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                mb = int(line.split()[1]) / 1024
                total += mb
                parts[f"{cmd} [{p}]"] = round(mb, 1)
    return total, parts


def tree_cpu_ms(pid: int) -> dict[str, float]:
    """CPU time (ms, /proc/PID/schedstat: time on a CPU) of ``pid`` and each descendant,
    keyed by process name."""
    kids = children()
    todo, out = [pid], {}
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            ns_on_cpu = int(Path(f"/proc/{p}/schedstat").read_text().split()[0])
            name = Path(f"/proc/{p}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        out[name] = out.get(name, 0.0) + ns_on_cpu / 1e6
    return out


def tree_cpu_all_threads_ms(pid: int) -> float:
    """CPU time (ms) of ``pid`` and its descendants, every thread included (/proc/PID/stat
    utime + stime, in clock ticks: 10 ms resolution). ``tree_cpu_ms``'s schedstat is the main
    thread's alone, which leaves out felix's thread and the metrics listener's."""
    kids = children()
    todo, total = [pid], 0
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return total * 1000.0 / tick


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b[k] - a.get(k, 0.0), 1) for k in b}
