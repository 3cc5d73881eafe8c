"""The lab's underlay: fabric bridges, the router namespace(s) and one namespace per node.

Namespaces (``prl-<name>-``)::

    fab      L2 fabric: one bridge br<s> per underlay subnet 198.18.<s>.0/24
    rr       the route reflector / ToR and the underlay's L3 hop between subnets:
             eth<s> 198.18.<s>.1/24 on each subnet, IP forwarding on
    rr2      (topology rr2 only) the second reflector, eth0 198.18.0.2/24 on br0
    etcd     (etcd and kubernetes labs) the cluster's etcd (and kube-apiserver), eth0 198.18.0.3/24 on br0, default via
             198.18.0.1 (nodes of every subnet reach it through the router namespace)
    n<i>     node i in subnet s = (i-1) mod K: eth0 198.18.<s>.(10+i)/24, default via
             198.18.<s>.1, IP forwarding on (a node added at run time with a name of its
             own, ``lab node add --name web``, is ``prl-<lab>-web``; its fabric port stays n<i>)

Every veth is created with both ends directly inside lab namespaces (podroute.lab.netns),
and every namespace is recorded in lab.json before the next step.
"""
from __future__ import annotations

from podroute.lab import netns
from podroute.lab.model import (ASN, CONTROL_PLANE_DATASTORES, ETCD_IP, RR2_IP, TOR_ASN, Lab, Node, node_block,
                                node_ip, router_ip)
from podroute.lab.netns import LabError


def check_ipip(fab: str) -> None:
    """Raise LabError in one line, suggesting VXLAN, when this kernel cannot make an IPIP
    device (probed inside namespace ``fab``; the probe device is removed)."""
    # Endpoints are needed: a keyless ipip link duplicates the fallback tunl0 (EEXIST).
    probe = netns.ip("link", "add", "prl-probe", "type", "ipip", "remote", "198.18.255.254",
                     "local", "198.18.255.253", ns=fab, check=False)
    if probe.returncode != 0:
        raise LabError("this kernel has no IPIP support (module ipip not available); "
                       "use --encapsulation vxlan (or run the IPIP tests in the VM: pytest tests/vm)")
    netns.ip("link", "del", "prl-probe", ns=fab, check=False)


def attach(lab: Lab, ns: str, port: str, address: str, subnet: int = 0, *, default_route: bool = True) -> None:
    """Create namespace ``ns`` with its ``eth0`` on subnet ``subnet``'s bridge (fabric side
    named ``port``), at ``address``/24, with a default route via that subnet's router unless
    ``default_route`` is False. Raises LabError from ``ip``."""
    fab = lab.prefix + "fab"
    netns.add(ns)
    lab.add_namespace(ns)
    netns.veth(ns, "eth0", fab, port)
    netns.ip("link", "set", port, "master", f"br{subnet}", ns=fab)
    netns.ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
    if default_route:
        netns.ip("route", "add", "default", "via", str(router_ip(subnet)), ns=ns)


def build(lab: Lab, n_nodes: int) -> None:
    """Create the fabric, router and ``n_nodes`` node namespaces of ``lab`` and append
    the nodes to ``lab.nodes`` (state dirs ``<root>/n<i>`` created). Raises LabError
    from the failing ``ip`` command."""
    fab = lab.prefix + "fab"
    netns.add(fab)
    lab.add_namespace(fab)
    if lab.encapsulation == "ipip":
        check_ipip(fab)
    rr = lab.prefix + "rr"
    netns.add(rr)
    lab.add_namespace(rr)
    for s in range(lab.subnets):
        netns.ip("link", "add", f"br{s}", "type", "bridge", ns=fab)
        netns.ip("link", "set", f"br{s}", "up", ns=fab)
        netns.veth(rr, f"eth{s}", fab, f"rr{s}")
        netns.ip("link", "set", f"rr{s}", "master", f"br{s}", ns=fab)
        netns.ip("addr", "add", f"{router_ip(s)}/24", "dev", f"eth{s}", ns=rr)
    # The router namespace joins the subnets (the underlay's L3 hop for CrossSubnet labs).
    netns.sysctl(rr, "net.ipv4.ip_forward", "1")
    if lab.topology == "rr2":  # a second reflector on subnet 0, for losing one RR
        attach(lab, lab.prefix + "rr2", "rr2", str(RR2_IP), default_route=False)
    if lab.datastore in CONTROL_PLANE_DATASTORES:
        attach(lab, lab.prefix + "etcd", "etcd", str(ETCD_IP))
    for i in range(1, n_nodes + 1):
        add_node(lab, i)
    lab.save()


def add_node(lab: Lab, i: int, name: str | None = None) -> Node:
    """Create node ``i``'s namespace (named ``n<i>`` unless ``name``) on its subnet's bridge,
    append it to ``lab.nodes`` and return it. Its block is ``node_block(i)`` on the file
    datastore and "" (claimed by its agent later) on etcd. Raises LabError from ``ip``."""
    name = name or f"n{i}"
    s = (i - 1) % lab.subnets
    node_ns = f"{lab.prefix}{name}"
    ip = node_ip(i, s)
    # A node has a default route in real life; proxy ARP for 169.254.1.1 needs one too.
    attach(lab, node_ns, f"n{i}", str(ip), s)
    netns.sysctl(node_ns, "net.ipv4.ip_forward", "1")
    ndir = lab.path / name
    ndir.mkdir(parents=True, exist_ok=True)
    asn = TOR_ASN + i if lab.topology == "tor" else ASN  # AS per node under a ToR
    block = str(node_block(i)) if lab.datastore == "file" else ""
    node = Node(name, node_ns, str(ip), block, str(ndir), subnet=s, asn=asn, index=i)
    lab.nodes.append(node)
    lab.last_index = max(lab.last_index, i)
    lab.save()
    return node
