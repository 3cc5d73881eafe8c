"""felix: podroute's FIB reconciler (after Calico Felix's routetable).

Modules: routes (Route values), routetable (RouteTable reconciler), dataplane (the seam),
netlink (real adapter), fake (in-memory fake), codec (rtnetlink encode/decode), monitor (drift
detection), worker (the thread that owns a RouteTable), backoff (retry timing and log
rate-limiting for failing routes), errors. Nothing is imported eagerly here so ``import felix.routes`` stays cheap.
"""
