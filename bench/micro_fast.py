"""``python -m bench.micro_fast [--sizes 1000,100000]``: the micro-benchmarks behind nlcore.fast.

Each line times one way of doing a per-route operation: the trick ``nlcore.fast`` hands out
(and the callers inline), against the public way, per item, best of 9 ``timeit`` runs, over
N distinct objects in shuffled order (1k stays in cache; 100k is a full table and misses
it). In-process only: no root, no namespaces. The figures quoted in nlcore/fast.py's
docstrings come from this script; it asserts nothing.
"""
from __future__ import annotations

import argparse
import random
import timeit
from ipaddress import IPv4Address, IPv4Network

from bgp.prefix import _build_public, from_key, key_of as bgp_key_of
from felix.dataplane import RouteOp, new_op
from felix.plan import Plan, plan_incremental
from felix.routes import Route, RouteType, Scope, _replace
from nlcore import fast
from nlcore.prefixkey import key_of


def _key_of_public(dst: IPv4Network) -> int:
    plen = dst.prefixlen
    k = 1 << plen | int(dst.network_address) >> (32 - plen)
    carried = getattr(dst, "key", None)
    return carried if carried == k else k


def _plan_unaliased(pending, actual, table, protocol):
    # felix.plan.plan_incremental with attribute lookups per route instead of bound locals.
    plan = Plan()
    for key, want in pending.items():
        if want is None:
            have = actual.pop(key, None)
            if have is None:
                continue
            if type(have) is tuple:
                actual[key] = have
                plan.pairs.append((key, None, have))
                continue
            plan.cleared.append(new_op("delete", have, table, protocol))
            plan.cleared_keys.append(key)
            continue
        have = actual.get(key)
        if have is None:
            plan.sets.append(new_op("add", want, table, protocol))
            plan.set_keys.append(key)
        elif type(have) is tuple:
            plan.pairs.append((key, want, have))
        elif want is have or want.satisfied_by(have):
            pass
        elif want.metric == have.metric:
            plan.sets.append(new_op("replace", want, table, protocol))
            plan.set_keys.append(key)
        else:
            plan.deletes.append(new_op("delete", have, table, protocol))
            plan.del_keys.append(key)
            plan.sets.append(new_op("add", want, table, protocol))
            plan.set_keys.append(key)
    return plan


def run(n: int) -> list[tuple[str, float]]:
    rng = random.Random(1)
    nets = [IPv4Network((0x0A000000 + i * 64, 26)) for i in range(n)]
    rng.shuffle(nets)
    addrs = [p.network_address for p in nets]
    keys = [bgp_key_of(p) for p in nets]
    gw = IPv4Address("10.255.0.1")
    r0 = Route(dst=nets[0], gateway=gw, ifname="eth0")
    setters = fast.slot_setters(Route, "dst", "type", "gateway", "ifname", "scope", "onlink",
                                "multipath", "metric")
    g = dict(nets=nets, addrs=addrs, keys=keys, gw=gw, r0=r0, Route=Route, RouteOp=RouteOp,
             new_op=new_op, U=RouteType.UNICAST, S=Scope.UNIVERSE, new=fast.new,
             osa=object.__setattr__, net_len=fast.net_len, net_len_addr=fast.net_len_addr,
             key_of=key_of, key_pub=_key_of_public, from_key=from_key, public=_build_public,
             unkey=__import__("nlcore.prefixkey", fromlist=["unkey"]).unkey, replace=_replace)
    g.update(zip(("sd", "st", "sg", "si", "ss", "so", "sm", "se"), setters))
    cases = [
        ("net,len: inline private reads", "for p in nets: a, b = p.network_address._ip, p._prefixlen"),
        ("net,len: fast.net_len", "for p in nets: a, b = net_len(p)"),
        ("net,len: public int(), .prefixlen", "for p in nets: a, b = int(p.network_address), p.prefixlen"),
        ("key: prefixkey.key_of (fast.net_len)", "for p in nets: key_of(p)"),
        ("key: same formula, public reads", "for p in nets: key_pub(p)"),
        ("dst+gw: inline private reads",
         "for p, a in zip(nets, addrs): x = p.network_address._ip, p._prefixlen, a._ip"),
        ("dst+gw: fast.net_len_addr", "for p, a in zip(nets, addrs): x = net_len_addr(p, a)"),
        ("dst+gw: public", "for p, a in zip(nets, addrs): x = int(p.network_address), p.prefixlen, int(a)"),
        ("Route: __init__", "for p in nets: Route(dst=p, gateway=gw, ifname='eth0')"),
        ("Route: new + 8 slot setters", "for p in nets:\n r = new(Route); sd(r, p); st(r, U); sg(r, gw); "
         "si(r, 'eth0'); ss(r, S); so(r, False); sm(r, ()); se(r, 0)"),
        ("Route: new + object.__setattr__ x8", "for p in nets:\n r = new(Route); osa(r, 'dst', p); "
         "osa(r, 'type', U); osa(r, 'gateway', gw); osa(r, 'ifname', 'eth0'); osa(r, 'scope', S); "
         "osa(r, 'onlink', False); osa(r, 'multipath', ()); osa(r, 'metric', 0)"),
        ("Route: copy with ifname None (routes._replace)", "for p in nets: replace(r0, None, ())"),
        ("RouteOp: __init__", "for p in nets: RouteOp('add', r0, 254, 90)"),
        ("RouteOp: dataplane.new_op (slot setters)", "for p in nets: new_op('add', r0, 254, 90)"),
        ("Prefix from key: from_key (fast.new_network)", "for k in keys: from_key(k)"),
        ("Prefix from key: Prefix((net, len))", "for k in keys: public(*unkey(k))"),
    ]
    # RouteTable's incremental plan: n pending adds (routes not in the kernel yet) and n
    # pending withdrawals (one route each), per dst.
    adds = {bgp_key_of(p): Route(dst=p, gateway=gw) for p in nets}
    g.update(adds=adds, wd=dict.fromkeys(adds), plan_incremental=plan_incremental,
             plan_unaliased=_plan_unaliased)
    cases += [
        ("plan adds: plan_incremental (bound locals)", "plan_incremental(adds, {}, 254, 90)"),
        ("plan adds: attribute lookups per route", "plan_unaliased(adds, {}, 254, 90)"),
        ("plan withdrawals: plan_incremental", "plan_incremental(wd, dict(adds), 254, 90)"),
        ("plan withdrawals: attribute lookups", "plan_unaliased(wd, dict(adds), 254, 90)"),
    ]
    number = max(1, 100_000 // n)
    out = []
    for label, stmt in cases:
        best = min(timeit.repeat(stmt, globals=g, number=number, repeat=9)) / number
        out.append((label, best / n * 1e9))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000")
    args = ap.parse_args()
    print(f"ipaddress internals in use: {fast.IPADDRESS_INTERNALS}")
    for n in (int(s) for s in args.sizes.split(",")):
        for label, ns in run(n):
            print(f"N={n:<7d} {label:48s} {ns:8.1f} ns/item")


if __name__ == "__main__":
    main()
