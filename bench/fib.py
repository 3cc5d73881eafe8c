"""FIB programming (add/delete N ``/26 via`` routes) and no-op full resync, against iproute2.

Layout per run: a fresh ``prb-<hex>`` namespace with a veth pair ``d0``/``d1`` (both ends inside; d0 198.18.0.1/24, up);
routes ``10.a.b.c/26 via 198.18.0.2 proto 90``. The 10.0.0.0/8 destinations exist only as FIB
entries in that isolated namespace, which has no other link: no packet is ever sent to them.
The podroute and iproute2 sides each get their own fresh namespace with the same setup.

Method: both sides start from the same input, the N prefixes as text, with nothing open, and
stop when the kernel has acknowledged every route.

- ``fib_add_N``: the anchor's clock covers ``ip -batch FILE`` (process start, its netlink socket,
  reading and parsing ``route add P via GW proto 90`` lines, the writes). The file is written
  before the clock starts, as the N strings exist before felix's clock starts. felix's clock
  covers opening ``NetlinkDataplane`` (its netlink socket), parsing each string into a
  ``Route`` (``Route.via``), ``RouteTable`` + ``set_routes`` and ``apply()`` (its kernel dump
  and the writes). What is left on the anchor's side only is the ``ip`` process start,
  recorded as ``anchor_empty_batch_s`` (an empty batch file) in the detail, not subtracted:
  it is what running ``ip`` costs. ``detail`` splits felix's time into its parts.
- ``fib_delete_N``: the anchor parses ``route del P proto 90`` lines; felix is told the new
  desired state, which is how every felix caller removes routes (``set_routes(owner, [])``),
  and its clock covers that call and ``apply()`` on the table of the add step (its socket
  stays open, as the agent's does; the anchor starts a new ``ip``).
- ``resync_N``: both clocks start with the N routes in the kernel and stop when the caller
  holds the table as data. The anchor is ``ip -j route show proto 90`` + ``json.loads`` (a
  fresh process each time: a shell-driven agent has no state to keep); felix is
  ``mark_dirty()`` + ``apply()`` on the agent's long-lived table (the agent's periodic
  resync), which also diffs the dump against desired state, work the anchor does not do.
  The median of 5 runs on each side. A fresh table (cold caches) is in the detail.
- ``gc.collect()`` runs before each of felix's timed regions so a collection the bench's own
  garbage left pending is not charged to felix; the anchor's work is in another process.
"""
from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from ipaddress import IPv4Address

from . import ns as N

GW = "198.18.0.2"
PROTO = 90


def prefixes(n: int) -> list[str]:
    """N distinct /26s from 10.0.0.0/8 (at most 262,144)."""
    if n > 1 << 18:
        raise ValueError("at most 262144 /26s fit in 10.0.0.0/8")
    base = 10 << 24
    return [str(IPv4Address(base + (i << 6))) + "/26" for i in range(n)]


def _setup() -> str:
    ns = N.new_ns()
    # no dummy module on this kernel: a veth pair with both ends inside the namespace
    N.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1", ns=ns)
    N.ip("addr", "add", "198.18.0.1/24", "dev", "d0", ns=ns)
    N.ip("link", "set", "d1", "up", ns=ns)
    N.ip("link", "set", "d0", "up", ns=ns)
    return ns


def count_routes(ns: str) -> int:
    out = N.ip("-j", "route", "show", "proto", str(PROTO), ns=ns).stdout
    return len(json.loads(out)) if out.strip() else 0


def _ip_batch(ns: str, lines: list[str]) -> float:
    with tempfile.NamedTemporaryFile("w", prefix="prb-", suffix=".batch") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        t0 = time.perf_counter()
        N.ip("-batch", f.name, ns=ns, timeout=600)
        return time.perf_counter() - t0


def run(n: int) -> list[dict]:
    """Returns two figures: ``fib_add`` and ``fib_delete`` (rates in routes/s), plus ``resync``."""
    from felix.netlink import NetlinkDataplane
    from felix.routes import Route
    from felix.routetable import RouteTable

    pfx = prefixes(n)
    # --- anchor: ip -batch ---------------------------------------------------------------
    ns_a = _setup()
    try:
        t_empty = _ip_batch(ns_a, [])  # the ip process alone: start, socket, no routes
        t_add = _ip_batch(ns_a, [f"route add {p} via {GW} proto {PROTO}" for p in pfx])
        if count_routes(ns_a) != n:
            raise N.BenchError("ip -batch did not install every route")
        anchor_resync = []
        for _ in range(5):
            t0 = time.perf_counter()
            out = N.ip("-j", "route", "show", "proto", str(PROTO), ns=ns_a).stdout
            rows = json.loads(out)
            anchor_resync.append(time.perf_counter() - t0)
            assert len(rows) == n
        t_del = _ip_batch(ns_a, [f"route del {p} proto {PROTO}" for p in pfx])
        if count_routes(ns_a) != 0:
            raise N.BenchError("ip -batch did not delete every route")
    finally:
        N.delete_ns(ns_a)

    # --- podroute: felix from the same text prefixes ---------------------------------------
    ns_p = _setup()
    try:
        gc.collect()
        t0 = time.perf_counter()
        dp = NetlinkDataplane(ns_p)
        t_open = time.perf_counter()
        try:
            routes = [Route.via(p, GW) for p in pfx]
            t_built = time.perf_counter()
            rt = RouteTable(dp, protocol=PROTO)
            rt.set_routes("bgp", routes)
            t_set = time.perf_counter()
            r = rt.apply()
            t_end = time.perf_counter()
            p_add = t_end - t0
            p_add_parts = {"open_s": t_open - t0, "route_objects_s": t_built - t_open,
                           "set_routes_s": t_set - t_built, "apply_s": t_end - t_set}
            if r.errors or r.added != n:
                raise N.BenchError(f"felix add: {r.added} added, {len(r.errors)} errors: {r.errors[:2]}")
            if count_routes(ns_p) != n:
                raise N.BenchError("felix did not install every route")
            # full resync with nothing to change: a fresh RouteTable+dataplane (cold decode cache)
            # first, then the agent's steady state (mark_dirty + apply on the same objects)
            cold = []
            for _ in range(2):
                dp2 = NetlinkDataplane(ns_p)
                rt2 = RouteTable(dp2, protocol=PROTO)
                rt2.set_routes("bgp", routes)
                gc.collect()
                t0 = time.perf_counter()
                r2 = rt2.apply()
                cold.append(time.perf_counter() - t0)
                dp2.close()
                if r2.changes or r2.errors:
                    raise N.BenchError(f"cold resync changed {r2.changes} routes")
            warm = []
            for _ in range(5):
                gc.collect()
                rt.mark_dirty()
                t0 = time.perf_counter()
                r3 = rt.apply()
                warm.append(time.perf_counter() - t0)
                if r3.changes or r3.errors:
                    raise N.BenchError(f"resync changed {r3.changes} routes")
            gc.collect()
            t0 = time.perf_counter()
            rt.set_routes("bgp", [])
            r = rt.apply()
            p_del = time.perf_counter() - t0
            if r.errors or r.deleted != n or count_routes(ns_p) != 0:
                raise N.BenchError(f"felix delete: {r.deleted} deleted, {len(r.errors)} errors")
        finally:
            dp.close()
    finally:
        N.delete_ns(ns_p)

    a_res = statistics.median(anchor_resync)
    p_res = statistics.median(warm)
    return [
        {"figure": f"fib_add_{n}", "unit": "routes/s", "higher_is_better": True,
         "podroute": n / p_add, "anchor": n / t_add, "anchor_name": "ip -batch",
         "target_ratio": 0.5, "target": ">= 0.5x ip -batch rate",
         "detail": {"podroute_s": p_add, "podroute_parts": p_add_parts, "anchor_s": t_add,
                    "anchor_empty_batch_s": t_empty,
                    "method": "both from N text prefixes to every route acknowledged"}},
        {"figure": f"fib_delete_{n}", "unit": "routes/s", "higher_is_better": True,
         "podroute": n / p_del, "anchor": n / t_del, "anchor_name": "ip -batch",
         "target_ratio": 0.5, "target": ">= 0.5x ip -batch rate",
         "detail": {"podroute_s": p_del, "anchor_s": t_del, "anchor_empty_batch_s": t_empty,
                    "method": "felix: set_routes(owner, []) + apply(); anchor: ip -batch of del lines"}},
        {"figure": f"resync_{n}", "unit": "ms", "higher_is_better": False,
         "podroute": p_res * 1e3, "anchor": a_res * 1e3, "anchor_name": "ip -j route show + json.loads",
         "target_ratio": 2.0, "target": "<= 2x anchor",
         "detail": {"podroute_warm_ms": [x * 1e3 for x in warm], "podroute_cold_ms": [x * 1e3 for x in cold],
                    "anchor_ms": [x * 1e3 for x in anchor_resync],
                    "note": "podroute = RouteTable.mark_dirty()+apply() on the agent's long-lived table "
                            "(median of 5); cold = a fresh RouteTable+NetlinkDataplane"}},
    ]
