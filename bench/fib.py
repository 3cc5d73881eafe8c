"""FIB programming (add/delete N ``/26 via`` routes) and no-op full resync, against iproute2.

Layout per run: a fresh ``prb-<hex>`` namespace with a veth pair ``d0``/``d1`` (both ends inside; d0 198.18.0.1/24, up);
routes ``10.a.b.c/26 via 198.18.0.2 proto 90``. The 10.0.0.0/8 destinations exist only as FIB
entries in that isolated namespace, which has no other link: no packet is ever sent to them.
The podroute and iproute2 sides each get their own fresh namespace with the same setup.
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
    res: dict = {}
    # --- anchor: ip -batch ---------------------------------------------------------------
    ns_a = _setup()
    try:
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
    res["anchor"] = {"add_s": t_add, "delete_s": t_del, "resync_s": anchor_resync}

    # --- podroute: felix RouteTable over NetlinkDataplane ----------------------------------
    ns_p = _setup()
    try:
        dp = NetlinkDataplane(ns_p)
        try:
            t0 = time.perf_counter()
            routes = [Route.via(p, GW) for p in pfx]
            t_build = time.perf_counter() - t0
            rt = RouteTable(dp, protocol=PROTO)
            t0 = time.perf_counter()
            rt.set_routes("bgp", routes)
            t_set = time.perf_counter() - t0
            gc.collect()
            t0 = time.perf_counter()
            r = rt.apply()
            p_add = time.perf_counter() - t0
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
                t0 = time.perf_counter()
                r2 = rt2.apply()
                cold.append(time.perf_counter() - t0)
                dp2.close()
                if r2.changes or r2.errors:
                    raise N.BenchError(f"cold resync changed {r2.changes} routes")
            warm = []
            for _ in range(5):
                rt.mark_dirty()
                t0 = time.perf_counter()
                r3 = rt.apply()
                warm.append(time.perf_counter() - t0)
                if r3.changes or r3.errors:
                    raise N.BenchError(f"resync changed {r3.changes} routes")
            rt.set_routes("bgp", [])
            t0 = time.perf_counter()
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
         "detail": {"podroute_apply_s": p_add, "anchor_s": t_add, "route_objects_s": t_build,
                    "set_routes_s": t_set}},
        {"figure": f"fib_delete_{n}", "unit": "routes/s", "higher_is_better": True,
         "podroute": n / p_del, "anchor": n / t_del, "anchor_name": "ip -batch",
         "target_ratio": 0.5, "target": ">= 0.5x ip -batch rate",
         "detail": {"podroute_apply_s": p_del, "anchor_s": t_del}},
        {"figure": f"resync_{n}", "unit": "ms", "higher_is_better": False,
         "podroute": p_res * 1e3, "anchor": a_res * 1e3, "anchor_name": "ip -j route show + json.loads",
         "target_ratio": 2.0, "target": "<= 2x anchor",
         "detail": {"podroute_warm_ms": [x * 1e3 for x in warm], "podroute_cold_ms": [x * 1e3 for x in cold],
                    "anchor_ms": [x * 1e3 for x in anchor_resync],
                    "note": "podroute = RouteTable.mark_dirty()+apply() on the agent's long-lived table "
                            "(median of 5); cold = a fresh RouteTable+NetlinkDataplane"}},
    ]
