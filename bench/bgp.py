"""BGP -> FIB convergence (announce and withdraw) and memory, podroute agent vs BIRD (and FRR).

Layout (all inside fresh ``prb-<hex>`` namespaces, deleted afterwards):

    src   BIRD 2 "peer": br0 198.18.0.1/24, a ``static`` protocol holding N ``10.x.y.z/26
          blackhole`` routes exported over iBGP (``next hop self``, ``passive``); no kernel
          protocol, so its FIB is never touched. One BGP protocol per receiver address:
          ``r_pod`` (podroute) and ``r_bird`` (BIRD, then FRR)
    pod   a real ``podroute node run`` agent (felix + ExaBGP speaker + CNI server), eth0
          198.18.0.11/24, pools 198.19.0.0/16 (its block 198.19.1.0/26) and 10.0.0.0/8
    bird  the anchors, one after the other in the same namespace (eth0 198.18.0.12/24): BIRD 2
          with ``protocol kernel`` exporting into the FIB, then FRR (zebra + bgpd; zebra
          installs bgpd's best routes, rtm_protocol 186)

The 10.0.0.0/8 /26s exist only as FIB entries (via 198.18.0.1) in isolated namespaces; no
packet is ever sent to them. Receivers run one at a time (2 shared cores).

Why one file of ~450 lines: every receiver is timed by the same functions (``_converge``,
``_withdraw``, ``_memory``) from one clock, and keeping them and the runs that use them
together is what lets a reader check that the method is the same for each.

Method, one for every receiver (``_converge``, ``_memory``, ``_withdraw`` below):

- Announce: t0 = the SENDER's Established time for its session with that receiver (the source
  BIRD's ``show protocols`` since, ``timeformat protocol iso long ms``, CLOCK_REALTIME). The
  sender cannot send an UPDATE before it, and the receivers' own session-up stamps differ in
  meaning and resolution (ExaBGP's ``up`` event, BIRD's state change, FRR's whole-second
  uptime), so none of them is used as t0; podroute's and BIRD's are recorded as
  ``own_session_up`` for reference. t_done = the first sample of the same ``FibCounter``
  poller (an rtnetlink dump of the receiver namespace every ~5 ms, ``time.time()``) that
  counts N unicast routes of the receiver's protocol (90, BIRD's 12, FRR's 186); t99 the first
  with >= 0.99 N. A sender's Established time later than the receiver's first route means the
  session flapped during the run: the run fails instead of reporting a shortened time.
- Withdraw: t0 = ``time.time()`` just before ``birdc disable`` of the source's static
  protocol; done when the same poller counts 0. Each receiver's withdraw comes after the
  same steps (convergence, the memory samples below).
- Memory: RSS (VmRSS) summed over the receiver's processes, sampled twice the same way for
  every receiver: ``SETTLE_S`` after convergence, and ``SETTLE_S`` after a veth pair is
  created in its namespace; the figure is the larger sample. For podroute the second sample
  also waits for the full FIB resync the link event causes (as every pod's veth does; its
  status ``fib.last_apply.at``). BIRD and FRR have no resync on a link event (BIRD's kernel
  protocol rescans every ``scan time``, 60 s here; not forced), so theirs is the same event
  and the same settle time.
- CPU (podroute only, detail): each process's CPU time from the first learned route in the FIB
  to convergence, and during the withdrawal.
"""
from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import yaml

from . import ns as N
from .probe import FibCounter, cpu_delta, tree_cpu_all_threads_ms, tree_cpu_ms, tree_rss_mb, wait_count

SRC_IP, POD_IP, BIRD_IP = "198.18.0.1", "198.18.0.11", "198.18.0.12"
ASN = 64512
SETTLE_S = 0.3  # after convergence / a link event, before an RSS sample (bookkeeping settles)


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


# --- the method, the same for every receiver --------------------------------------------------
class Source:
    """The sending BIRD: its control socket and namespace."""

    def __init__(self, sock: Path, ns: str) -> None:
        self.sock, self.ns = sock, ns

    def established(self, proto: str) -> float:
        since = bird_since(self.sock, self.ns, proto)
        if since is None:
            raise N.BenchError(f"source BIRD: session {proto} not Established after convergence")
        return since


def _converge(n: int, fc: FibCounter, src: Source, src_proto: str, timeout: float, on_change=None) -> dict:
    """Wait until ``fc`` counts ``n``; times from the sender's Established time (see the module doc).
    Returns session_up (unix s), to_99_ms, to_100_ms, series_ms [[ms since session_up, count]]."""
    series: list = []
    t_full = wait_count(fc, lambda c: c >= n, timeout, series, on_change=on_change)
    since = src.established(src_proto)
    first = next(t for t, c in series if c > 0)
    if since > first:
        raise N.BenchError(f"source session {src_proto} Established at {since:.3f}, after the receiver's first "
                           f"route at {first:.3f}: the session flapped during the run")
    t99 = next(t for t, c in series if c >= 0.99 * n)
    return {"session_up": since, "to_99_ms": (t99 - since) * 1e3, "to_100_ms": (t_full - since) * 1e3,
            "series_ms": [[round((t - since) * 1e3, 2), c] for t, c in series]}


def _memory(rss, ns: str, link: str, wait_resync=None) -> dict:
    """Two RSS samples (see the module doc): ``rss()`` -> (MB, parts); ``link`` names the veth
    created in ``ns``; ``wait_resync(t_link)`` waits for the receiver's reaction, if it has one."""
    time.sleep(SETTLE_S)
    conv = rss()
    t_link = time.time()
    N.ip("link", "add", link, "type", "veth", "peer", "name", link + "p", ns=ns)
    if wait_resync is not None:
        wait_resync(t_link)
    time.sleep(SETTLE_S)
    sync = rss()
    best = max(conv, sync, key=lambda x: x[0])
    return {"rss_mb": best[0], "rss_parts": best[1], "rss_mb_converged": conv[0], "rss_mb_after_resync": sync[0]}


def _withdraw(fc: FibCounter, src: Source, timeout: float) -> dict:
    series: list = []
    tw = time.time()
    birdc(src.sock, "disable", "s1", ns=src.ns)
    t_w = wait_count(fc, lambda c: c == 0, timeout, series)
    return {"withdraw_ms": (t_w - tw) * 1e3, "withdraw_series_ms": [[round((t - tw) * 1e3, 2), c] for t, c in series]}


def _run_frr(ns: str, workdir: Path, src: Source, n: int, timeout: float) -> dict:
    """FRR as the receiver: zebra (as its default user ``frr``, so its run directory is a
    world-writable temporary directory of its own: the bench's work dir is private) and bgpd
    (``-S``: as root, no user switch) over a private zserv socket. Returns ``_converge``'s and
    ``_memory``'s keys; the directory's logs are copied to ``workdir/frr``."""
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
        procs.append(N.popen([FRR_BGPD, "-S", "-p", "0", "-z", str(zserv), "--vty_socket", str(vty),
                              "-i", str(d / "bgpd.pid"), "-f", str(d / "bgpd.conf")], ns=ns, log=d / "bgpd.out"))
        out = _converge(n, fc, src, "r_bird", timeout)

        def rss():
            parts = [tree_rss_mb(p.pid) for p in procs]
            return sum(t for t, _ in parts), {k: v for _, ps in parts for k, v in ps.items()}
        out.update(_memory(rss, ns, "prb-f0"))
        return out
    finally:
        fc.close()
        for p in reversed(procs):
            N.stop(p)
        shutil.copytree(d, workdir / "frr", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.api", "*.vty"))
        shutil.rmtree(d, ignore_errors=True)


def _agent_conf(d: Path, metrics: bool = False) -> Path:
    cfg = {
        "nodeName": "bench-pod", "nodeIP": POD_IP, "asn": ASN, "podCIDRs": ["198.19.1.0/26"],
        "ipPools": [{"cidr": "198.19.0.0/16", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never"},
                    {"cidr": "10.0.0.0/8", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Never"}],
        "mtu": 1500,
        "peers": [{"address": SRC_IP, "asn": ASN, "holdTime": 30}],
        "resyncInterval": 3600,
        "paths": {"stateDir": str(d / "state"), "runDir": str(d / "run")},
    }
    if metrics:
        cfg["metrics"] = {"address": POD_IP, "port": METRICS_PORT}
    path = d / "node.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _agent_status(d: Path) -> dict | None:
    from podroute import statusd  # read-only client of the agent's status socket
    try:
        return statusd.query(d / "run" / "agent.sock", timeout=30)
    except Exception:  # noqa: BLE001 - not up yet
        return None


# --- metrics on: the same agent with its metrics listener, scraped ---------------------------------
METRICS_PORT = 9091
# 15x Prometheus's default scrape rate: the listener's cost shows, if it has one
SCRAPE_S = float(os.environ.get("BENCH_METRICS_SCRAPE_S", "1.0"))


class Scraper:
    """GETs ``/metrics`` from the agent every SCRAPE_S on a thread, over a TCP socket made in the
    agent's namespace (no process per scrape); counts scrapes and their bytes."""

    def __init__(self, ns: str) -> None:
        import threading
        self.ns, self.scrapes, self.bytes, self.errors = ns, 0, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="bench-scraper", daemon=True)
        self._t.start()

    def _get(self) -> int:
        import socket
        from nlcore.netns import call_in_netns
        s = call_in_netns(self.ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), timeout=5)
        with s:
            s.settimeout(10)
            s.connect((POD_IP, METRICS_PORT))
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            n = 0
            while chunk := s.recv(65536):
                n += len(chunk)
            return n

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_S):
            try:
                self.bytes += self._get()
                self.scrapes += 1
            except OSError:
                self.errors += 1  # not up yet, or restarting

    def stop(self) -> dict:
        """Stop scraping, then scrape once more: a convergence shorter than SCRAPE_S (the smoke
        size) would otherwise prove nothing about the endpoint being served."""
        self._stop.set()
        self._t.join(15)
        try:
            self.bytes += self._get()
            self.scrapes += 1
        except OSError:
            self.errors += 1
        return {"scrapes": self.scrapes, "bytes": self.bytes, "errors": self.errors, "interval_s": SCRAPE_S}


def _podroute_again(n: int, workdir: Path, spaces: dict[str, str], src: Source, timeout: float,
                    metrics: bool, tag: str) -> dict:
    """One more podroute announce convergence (``_converge``), with ``metrics:`` configured and
    /metrics scraped every SCRAPE_S when ``metrics``, then its withdrawal (so the FIB is empty
    for the next run) and a graceful stop. Same namespaces and sender as the main run."""
    import sys
    birdc(src.sock, "enable", "s1", ns=src.ns)
    t0 = time.monotonic()
    while f"{n} of {n} " not in birdc(src.sock, "show", "route", "count", ns=src.ns):
        if time.monotonic() - t0 > 60:
            raise N.BenchError("source BIRD never reloaded its static routes")
        time.sleep(0.05)
    ad = workdir / f"agent-{tag}"
    ad.mkdir(exist_ok=True)
    cfgp = _agent_conf(ad, metrics=metrics)
    fc = FibCounter(spaces["pod"], 90)
    scraper = None
    try:
        ap = N.popen([sys.executable, "-m", "podroute.cli", "node", "run", "--config", str(cfgp)],
                     ns=spaces["pod"], log=ad / "agent.log",
                     env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        scraper = Scraper(spaces["pod"]) if metrics else None
        cpu_marks: list[float] = []

        def mark(c: int) -> None:  # CPU used (all threads) from the first learned route in the FIB on
            if c and not cpu_marks:
                cpu_marks.append(tree_cpu_all_threads_ms(ap.pid))
        try:
            p = _converge(n, fc, src, "r_pod", timeout, on_change=mark)
            p["cpu_ms_all_threads"] = tree_cpu_all_threads_ms(ap.pid) - cpu_marks[0] if cpu_marks else None
        except N.BenchError as e:
            raise N.BenchError(f"podroute agent ({tag}): {e}; log tail: {(ad / 'agent.log').read_text()[-800:]}")
        if scraper is not None:
            p["scraper"] = scraper.stop()
            scraper = None
            if not p["scraper"]["scrapes"] and SCRAPE_S <= 1.0:
                raise N.BenchError(f"podroute agent ({tag}): /metrics was never scraped")
        st = _agent_status(ad) or {}
        p["loop"], p["health"], p["metrics"] = st.get("loop"), st.get("health"), metrics
        p.update(_withdraw(fc, src, timeout))
        N.stop(ap, grace=15)
        return p
    finally:
        if scraper is not None:
            scraper.stop()
        fc.close()


# metrics off/on, ABBA then BAAB: a linear drift and the order within a pair cancel out
AB_ORDER = (False, True, True, False, True, False, False, True)


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


def run(n: int, workdir: Path, timeout: float = 300, metrics_ab: bool = False) -> dict:
    """Announce + withdraw convergence of ``n`` routes into podroute and BIRD (announce only into
    FRR), and their RSS. Returns ``{"n", "bird", "frr", "podroute"}``, each receiver's dict with
    the keys of ``_converge``, ``_memory`` and (podroute, BIRD) ``_withdraw``. With
    ``metrics_ab``, also ``"podroute_ab"``: eight more podroute announce convergences, metrics
    off and on in the order :data:`AB_ORDER` (:func:`_podroute_again`). Why eight and not one:
    the first 100k-route run in a namespace can be much slower than the ones after it
    (measured 2,800 ms, then 1,692 ms for the run right after it), and back-to-back runs on
    this shared 2-core machine differ by 10-30 %, so one extra run measures the order and the
    noise, not a 5 % effect; each extra run costs ~3 s (the group: ~30 s -> ~55 s)."""
    import sys
    workdir.mkdir(parents=True, exist_ok=True)
    spaces = _topology(workdir)
    out: dict = {"n": n}
    try:
        src = Source(workdir / "src.ctl", spaces["src"])
        (workdir / "src.conf").write_text(_src_conf(workdir, n))
        _start_bird(spaces["src"], workdir / "src.conf", src.sock, workdir / "src.out")
        t0 = time.monotonic()
        while f"{n} of {n} " not in birdc(src.sock, "show", "route", "count", ns=src.ns):
            if time.monotonic() - t0 > 60:
                raise N.BenchError("source BIRD never loaded its static routes")
            time.sleep(0.05)

        # (b) anchor first: BIRD with the kernel protocol
        fc = FibCounter(spaces["bird"], 12)
        try:
            rsock = workdir / "recv.ctl"
            (workdir / "recv.conf").write_text(_recv_conf(workdir))
            bp = _start_bird(spaces["bird"], workdir / "recv.conf", rsock, workdir / "recv.out")
            b = _converge(n, fc, src, "r_bird", timeout)
            b["own_session_up"] = bird_since(rsock, spaces["bird"], "peer1")
            b.update(_memory(lambda: tree_rss_mb(bp.pid), spaces["bird"], "prb-b0"))
            b.update(_withdraw(fc, src, timeout))
            out["bird"] = b
            N.stop(bp)
            birdc(src.sock, "enable", "s1", ns=src.ns)
        finally:
            fc.close()
        # (c) FRR anchor, same namespace (BIRD is gone; its kernel routes went with it)
        out["frr"] = _run_frr(spaces["bird"], workdir, src, n, timeout)

        # (a) podroute agent
        ad = workdir / "agent"
        ad.mkdir(exist_ok=True)
        cfgp = _agent_conf(ad)
        fc = FibCounter(spaces["pod"], 90)
        try:
            ap = N.popen([sys.executable, "-m", "podroute.cli", "node", "run", "--config", str(cfgp)],
                         ns=spaces["pod"], log=ad / "agent.log",
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            cpu_marks: list[dict[str, float]] = []

            def mark(c: int) -> None:  # CPU used from the first learned route in the FIB on
                if c and not cpu_marks:
                    cpu_marks.append(tree_cpu_ms(ap.pid))
            try:
                p = _converge(n, fc, src, "r_pod", timeout, on_change=mark)
            except N.BenchError as e:
                raise N.BenchError(f"podroute agent: {e}; log tail: {(ad / 'agent.log').read_text()[-800:]}")
            p["cpu_ms_announce"] = cpu_delta(cpu_marks[0], tree_cpu_ms(ap.pid)) if cpu_marks else {}
            peers = ((_agent_status(ad) or {}).get("bgp") or {}).get("peers") or []
            p["own_session_up"] = max((x.get("since") or 0) for x in peers) if peers else None

            def wait_resync(t_link: float) -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    la = ((_agent_status(ad) or {}).get("fib") or {}).get("last_apply") or {}
                    if (la.get("at") or 0) > t_link:
                        return
                    time.sleep(0.2)
                raise N.BenchError("podroute agent: no FIB apply after a link event")
            p.update(_memory(lambda: tree_rss_mb(ap.pid), spaces["pod"], "prb-x0", wait_resync))
            cpu0 = tree_cpu_ms(ap.pid)
            p.update(_withdraw(fc, src, timeout))
            p["cpu_ms_withdraw"] = cpu_delta(cpu0, tree_cpu_ms(ap.pid))
            p["last_apply"] = ((_agent_status(ad) or {}).get("fib") or {}).get("last_apply")
            out["podroute"] = p
            N.stop(ap, grace=15)
        finally:
            fc.close()
        if metrics_ab:
            out["podroute_ab"] = [_podroute_again(n, workdir, spaces, src, timeout, m, f"ab{i}-{'on' if m else 'off'}")
                                  for i, m in enumerate(AB_ORDER)]
    finally:
        for ns_ in spaces.values():
            N.delete_ns(ns_)
    return out
