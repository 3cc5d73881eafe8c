"""BGP -> FIB convergence (announce and withdraw) and memory, podroute agent vs BIRD.

Layout (all inside fresh ``prb-<hex>`` namespaces, deleted afterwards):

    src   BIRD 2 "peer": br0 198.18.0.1/24, a ``static`` protocol holding N ``10.x.y.z/26
          blackhole`` routes exported over iBGP (``next hop self``, ``passive``); no kernel
          protocol, so its FIB is never touched
    pod   a real ``podroute node run`` agent (felix + ExaBGP speaker + CNI server), eth0
          198.18.0.11/24, pools 198.19.0.0/16 (its block 198.19.1.0/26) and 10.0.0.0/8
    bird  the anchors, one after the other in the same namespace (eth0 198.18.0.12/24): BIRD 2
          with ``protocol kernel`` exporting into the FIB, then FRR (zebra + bgpd; zebra
          installs bgpd's best routes, rtm_protocol 186)

The 10.0.0.0/8 /26s exist only as FIB entries (via 198.18.0.1) in isolated namespaces; no
packet is ever sent to them. Receivers run one at a time (2 shared cores).

Timing: the FIB is counted by an in-process rtnetlink dump (unicast routes of the receiver's
protocol, 90 or BIRD's 12) every ~5 ms. t=0 is the receiver's own "session established"
timestamp: the agent's status ``since`` (time.time() when ExaBGP reported ``up``) and BIRD's
``show protocols`` since (``timeformat protocol iso long ms``). FRR reports its session's
uptime in whole seconds only, so its t=0 is the source BIRD's Established time for that
session (ms resolution; both ends establish within a round trip). Withdraw: t=0 just before
``birdc disable`` of the source's static protocol; done when the receiver's FIB has 0 of them.
Memory: RSS (VmRSS) summed over the receiver's process tree once it holds all N routes; for
podroute the larger of that and a second sample after the full FIB resync a link event causes
(as every pod's veth does), the agent's steady state.
"""
from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import yaml

from . import ns as N

SRC_IP, POD_IP, BIRD_IP = "198.18.0.1", "198.18.0.11", "198.18.0.12"
ASN = 64512
POLL_S = 0.005


# --- FIB counting --------------------------------------------------------------------------------
class FibCounter:
    """Counts unicast IPv4 routes of ``protocol`` in the main table of ``netns`` via rtnetlink."""

    def __init__(self, netns: str, protocol: int) -> None:
        from felix import codec
        from felix.netlink import open_route_socket
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
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss_mb(pid: int) -> tuple[float, dict[str, float]]:
    """Sum of VmRSS (MB) over ``pid`` and its descendants, and per process ``{comm[pid]: MB}``."""
    kids = _children()
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
    kids = _children()
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


def _cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b[k] - a.get(k, 0.0), 1) for k in b}


# --- BIRD helpers --------------------------------------------------------------------------------
def birdc(sock: Path, *cmd: str, ns: str, check: bool = True) -> str:
    return N.sh(["birdc", "-s", str(sock), *cmd], ns=ns, timeout=30, check=check).stdout


def bird_since(sock: Path, ns: str, proto: str) -> float | None:
    """Wall-clock time the protocol's state last changed, if it is Established."""
    out = birdc(sock, "show", "protocols", proto, ns=ns)
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == proto and "Established" in line:
            # name proto table state since(date time.ms) info
            stamp = f"{parts[4]} {parts[5]}"
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return None


def _src_conf(d: Path, n: int) -> str:
    from .fib import prefixes
    lines = [f"router id {SRC_IP};", f'log "{d}/src.log" {{ warning, error, fatal }};',
             "timeformat protocol iso long ms;", "protocol device {}",
             "protocol static s1 {", "  ipv4;"]
    lines += [f"  route {p} blackhole;" for p in prefixes(n)]
    lines += ["}",
              "template bgp recv {",
              f"  local {SRC_IP} as {ASN};", "  direct;", "  passive on;", "  hold time 30;",
              "  ipv4 { import none; export all; next hop self; };", "}",
              f"protocol bgp r_pod from recv {{ neighbor {POD_IP} as {ASN}; }}",
              f"protocol bgp r_bird from recv {{ neighbor {BIRD_IP} as {ASN}; }}"]
    return "\n".join(lines) + "\n"


def _recv_conf(d: Path) -> str:
    return "\n".join([
        f"router id {BIRD_IP};", f'log "{d}/recv.log" {{ warning, error, fatal }};',
        "timeformat protocol iso long ms;",
        "protocol device {}",
        "protocol kernel { ipv4 { import none; export all; }; learn off; scan time 60; }",
        f"protocol bgp peer1 {{ local {BIRD_IP} as {ASN}; neighbor {SRC_IP} as {ASN}; direct; hold time 30;",
        "  ipv4 { import all; export none; }; }",
    ]) + "\n"


def _start_bird(ns: str, conf: Path, sock: Path, log: Path):
    p = N.popen(["bird", "-f", "-c", str(conf), "-s", str(sock), "-P", str(sock) + ".pid"], ns=ns, log=log)
    deadline = time.monotonic() + 30
    # BIRD creates its control socket before parsing the config: wait for an answer
    while not sock.exists() or N.sh(["birdc", "-s", str(sock), "show", "status"], ns=ns,
                                     check=False).returncode != 0:
        if p.poll() is not None:
            raise N.BenchError(f"bird exited {p.returncode}: {log.read_text()[-400:]}")
        if time.monotonic() > deadline:
            raise N.BenchError("bird control socket never appeared")
        time.sleep(0.02)
    return p


FRR_ZEBRA, FRR_BGPD = "/usr/lib/frr/zebra", "/usr/lib/frr/bgpd"
FRR_PROTO = 186  # RTPROT_BGP, what zebra stamps on bgpd's routes


def _frr_bgpd_conf() -> str:
    return "\n".join([
        "frr defaults datacenter", "hostname bench-frr", f"router bgp {ASN}", f" bgp router-id {BIRD_IP}",
        " no bgp ebgp-requires-policy", " no bgp default ipv4-unicast",
        f" neighbor {SRC_IP} remote-as {ASN}", f" neighbor {SRC_IP} timers 10 30",
        " address-family ipv4 unicast", f"  neighbor {SRC_IP} activate", " exit-address-family", ""])


def _run_frr(ns: str, workdir: Path, src_sock: Path, src_ns: str, n: int, timeout: float) -> dict:
    """FRR as the receiver: zebra (as its default user ``frr``, so its run directory is a
    world-writable temporary directory of its own: the bench's work dir is private) and bgpd
    (``-S``: as root, no user switch) over a private zserv socket. Returns
    to_99_ms/to_100_ms/rss_mb/series; the directory's logs are copied to ``workdir/frr``."""
    import shutil
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="prb-frr-"))
    os.chmod(d, 0o777)
    zserv, vty = d / "zserv.api", d
    (d / "zebra.conf").write_text("hostname bench-zebra\n")
    (d / "bgpd.conf").write_text(_frr_bgpd_conf())
    fc = FibCounter(ns, FRR_PROTO)
    procs = []
    try:
        procs.append(N.popen([FRR_ZEBRA, "-z", str(zserv), "--vty_socket", str(vty), "-i", str(d / "zebra.pid"),
                              "-f", str(d / "zebra.conf")], ns=ns, log=d / "zebra.out"))
        deadline = time.monotonic() + 30
        while not zserv.exists():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise N.BenchError(f"zebra did not start: {(d / 'zebra.out').read_text()[-400:]}")
            time.sleep(0.02)
        series: list = []
        procs.append(N.popen([FRR_BGPD, "-S", "-p", "0", "-z", str(zserv), "--vty_socket", str(vty),
                              "-i", str(d / "bgpd.pid"), "-f", str(d / "bgpd.conf")], ns=ns, log=d / "bgpd.out"))
        t_full = wait_count(fc, lambda c: c >= n, timeout, series)
        since = bird_since(src_sock, src_ns, "r_bird")
        if since is None:
            raise N.BenchError("FRR receiver: source BIRD does not show its session Established")
        rss = sum(tree_rss_mb(p.pid)[0] for p in procs)
        t99 = next(t for t, c in series if c >= 0.99 * n)
        return {"session_up": since, "to_99_ms": (t99 - since) * 1e3, "to_100_ms": (t_full - since) * 1e3,
                "rss_mb": rss, "series_ms": [[round((t - since) * 1e3, 2), c] for t, c in series]}
    finally:
        fc.close()
        for p in reversed(procs):
            N.stop(p)
        shutil.copytree(d, workdir / "frr", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.api", "*.vty"))
        shutil.rmtree(d, ignore_errors=True)


def _agent_conf(d: Path) -> Path:
    cfg = {
        "nodeName": "bench-pod", "nodeIP": POD_IP, "asn": ASN, "podCIDRs": ["198.19.1.0/26"],
        "ipPools": [{"cidr": "198.19.0.0/16", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never"},
                    {"cidr": "10.0.0.0/8", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never"}],
        "mtu": 1500,
        "peers": [{"address": SRC_IP, "asn": ASN, "holdTime": 30}],
        "resyncInterval": 3600,
        "paths": {"stateDir": str(d / "state"), "runDir": str(d / "run")},
    }
    path = d / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _agent_status(d: Path) -> dict | None:
    from podroute import statusd  # read-only client of the agent's status socket
    try:
        return statusd.query(d / "run" / "agent.sock", timeout=30)
    except Exception:  # noqa: BLE001 - not up yet
        return None


# --- the figure ----------------------------------------------------------------------------------
def _topology(workdir: Path) -> dict[str, str]:
    src = N.new_ns()
    N.ip("link", "add", "br0", "type", "bridge", ns=src)
    N.ip("addr", "add", f"{SRC_IP}/24", "dev", "br0", ns=src)
    N.ip("link", "set", "br0", "up", ns=src)
    spaces = {"src": src}
    for role, addr, port in (("pod", POD_IP, "p1"), ("bird", BIRD_IP, "p2")):
        r = N.new_ns()
        N.veth(r, "eth0", src, port)
        N.ip("link", "set", port, "master", "br0", ns=src)
        N.ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=r)
        N.sysctl(r, "net.ipv4.ip_forward", "1")
        spaces[role] = r
    return spaces


def run(n: int, workdir: Path, timeout: float = 300) -> dict:
    """Announce + withdraw convergence of ``n`` routes into podroute and BIRD, and their RSS.
    Returns a dict with per-receiver results and time series (ms since session up, count)."""
    import sys
    workdir.mkdir(parents=True, exist_ok=True)
    spaces = _topology(workdir)
    out: dict = {"n": n}
    try:
        src_sock = workdir / "src.ctl"
        (workdir / "src.conf").write_text(_src_conf(workdir, n))
        _start_bird(spaces["src"], workdir / "src.conf", src_sock, workdir / "src.out")
        t0 = time.monotonic()
        while f"{n} of {n} routes" not in birdc(src_sock, "show", "route", "count", ns=spaces["src"]) and \
                f"{n} of {n} " not in birdc(src_sock, "show", "route", "count", ns=spaces["src"]):
            if time.monotonic() - t0 > 60:
                raise N.BenchError("source BIRD never loaded its static routes")
            time.sleep(0.05)

        # (b) anchor first: BIRD with the kernel protocol
        fc = FibCounter(spaces["bird"], 12)
        try:
            rsock = workdir / "recv.ctl"
            (workdir / "recv.conf").write_text(_recv_conf(workdir))
            series: list = []
            bp = _start_bird(spaces["bird"], workdir / "recv.conf", rsock, workdir / "recv.out")
            t_full = wait_count(fc, lambda c: c >= n, timeout, series)
            since = bird_since(rsock, spaces["bird"], "peer1")
            if since is None:
                raise N.BenchError("BIRD receiver: session not Established after convergence")
            rss, parts = tree_rss_mb(bp.pid)
            wseries: list = []
            tw = time.time()
            birdc(src_sock, "disable", "s1", ns=spaces["src"])
            t_w = wait_count(fc, lambda c: c == 0, timeout, wseries)
            out["bird"] = _summ(n, since, series, t_full, tw, wseries, t_w, rss, parts)
            N.stop(bp)
            birdc(src_sock, "enable", "s1", ns=spaces["src"])
        finally:
            fc.close()
        # (c) FRR anchor, same namespace (BIRD is gone; its kernel routes went with it)
        out["frr"] = _run_frr(spaces["bird"], workdir, src_sock, spaces["src"], n, timeout)

        # (a) podroute agent
        ad = workdir / "agent"
        ad.mkdir(exist_ok=True)
        cfgp = _agent_conf(ad)
        fc = FibCounter(spaces["pod"], 90)
        try:
            series = []
            ap = N.popen([sys.executable, "-m", "podroute.cli", "node", "run", "--config", str(cfgp)],
                         ns=spaces["pod"], log=ad / "agent.log",
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            cpu_marks: list[dict[str, float]] = []

            def mark(c: int) -> None:  # CPU used from the first learned route in the FIB on
                if c and not cpu_marks:
                    cpu_marks.append(tree_cpu_ms(ap.pid))
            try:
                t_full = wait_count(fc, lambda c: c >= n, timeout, series, on_change=mark)
            except N.BenchError as e:
                raise N.BenchError(f"podroute agent: {e}; log tail: {(ad / 'agent.log').read_text()[-800:]}")
            cpu_announce = _cpu_delta(cpu_marks[0], tree_cpu_ms(ap.pid)) if cpu_marks else {}
            # the agent's status lists every best route (100k entries at full size): allow it time
            st = None
            deadline = time.monotonic() + 60
            while st is None and time.monotonic() < deadline:
                st = _agent_status(ad)
            peers = (st or {}).get("bgp", {}).get("peers", [])
            since = max((p.get("since") or 0) for p in peers) if peers else None
            if not since or peers[0]["state"] != "established":
                raise N.BenchError(f"podroute agent: session not established after convergence: {peers}")
            time.sleep(0.3)  # let the agent settle (status/apply bookkeeping) before sampling RSS
            rss_conv, parts_conv = tree_rss_mb(ap.pid)
            # The steady state includes full resyncs: a link event (every pod's veth) triggers
            # one, the periodic safety net another every resyncInterval. Cause one with a veth
            # pair and sample again; the figure is the larger of the two samples.
            t_link = time.time()
            N.sh(["ip", "link", "add", "prb-x0", "type", "veth", "peer", "name", "prb-x1"],
                 ns=spaces["pod"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                la = ((_agent_status(ad) or {}).get("fib") or {}).get("last_apply") or {}
                if (la.get("at") or 0) > t_link:
                    break
                time.sleep(0.2)
            else:
                raise N.BenchError("podroute agent: no FIB apply after a link event")
            time.sleep(0.3)
            rss_sync, parts_sync = tree_rss_mb(ap.pid)
            rss, parts = max((rss_conv, parts_conv), (rss_sync, parts_sync), key=lambda x: x[0])
            wseries = []
            cpu0 = tree_cpu_ms(ap.pid)
            tw = time.time()
            birdc(src_sock, "disable", "s1", ns=spaces["src"])
            t_w = wait_count(fc, lambda c: c == 0, timeout, wseries)
            cpu_withdraw = _cpu_delta(cpu0, tree_cpu_ms(ap.pid))
            out["podroute"] = _summ(n, since, series, t_full, tw, wseries, t_w, rss, parts)
            out["podroute"]["cpu_ms_announce"] = cpu_announce
            out["podroute"]["cpu_ms_withdraw"] = cpu_withdraw
            out["podroute"]["rss_mb_converged"] = rss_conv
            out["podroute"]["rss_mb_after_resync"] = rss_sync
            out["podroute"]["last_apply"] = (_agent_status(ad) or {}).get("fib", {}).get("last_apply")
            N.stop(ap, grace=15)
        finally:
            fc.close()
    finally:
        for ns_ in spaces.values():
            N.delete_ns(ns_)
    return out


def _summ(n, since, series, t_full, tw, wseries, t_w, rss, parts) -> dict:
    t99 = next(t for t, c in series if c >= 0.99 * n)
    return {
        "session_up": since,
        "to_99_ms": (t99 - since) * 1e3, "to_100_ms": (t_full - since) * 1e3,
        "withdraw_ms": (t_w - tw) * 1e3,
        "rss_mb": rss, "rss_parts": parts,
        "series_ms": [[round((t - since) * 1e3, 2), c] for t, c in series],
        "withdraw_series_ms": [[round((t - tw) * 1e3, 2), c] for t, c in wseries],
    }
