"""felix: podroute's FIB reconciler (after Calico Felix's routetable).

Modules: routes (Route values), routetable (RouteTable reconciler), dataplane (the seam),
netlink (real adapter), fake (in-memory fake), codec (rtnetlink encode/decode), monitor (drift
detection), errors. Nothing is imported eagerly here so ``import felix.routes`` stays cheap.
"""
