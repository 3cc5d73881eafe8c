"""``podroute``: the node agent, its status, CNI installation and the multi-node lab.

Exit codes: 0 success, 1 runtime failure (agent crashed, lab check failed), 2 bad
usage or invalid config (one line on stderr naming the file and key).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "/etc/podroute/node.yaml"


def _load_config(path: str):
    from podroute.config import load
    return load(path)


def _tune_malloc() -> None:
    """Keep the agent's RSS close to what it holds. A 100k-route burst grows dicts and lists
    to megabytes; glibc raises its mmap threshold after such a block is freed (up to 32 MB),
    so later big blocks come from the heap, whose free space is rarely returned: the same
    100k-route run measured 122 or 202 MB RSS depending on the order of frees. A fixed
    M_MMAP_THRESHOLD (which also stops the dynamic adjustment, mallopt(3)) maps every block
    over 256 KiB on its own and unmaps it on free. A no-op where glibc's mallopt is missing."""
    import ctypes
    try:
        ctypes.CDLL(None).mallopt(-3, 256 * 1024)  # M_MMAP_THRESHOLD (malloc.h)
    except (OSError, AttributeError):
        pass


def cmd_node_run(args: argparse.Namespace) -> int:
    from podroute import logs
    from podroute.agent import Agent  # lazy: pulls in pyroute2 and the speaker; --help must not
    cfg = _load_config(args.config)
    logs.setup(args.log_level, args.log_format)
    _tune_malloc()
    start = None
    if cfg.datastore.from_datastore:  # the node's blocks and pools first (waits for the datastore)
        from podroute.blocks_wiring import prepare
        start = asyncio.run(prepare(cfg))
    # Built outside the event loop: set-up uses blocking netlink (pyroute2's sync API
    # refuses to run inside a running loop), and it is one-off work before serving.
    agent = Agent(cfg, start=start)
    # The agent holds 100k+ long-lived, acyclic route objects: leave what start-up built out
    # of every collection (gc.freeze) and collect the young generation less often, so a
    # table-sized burst does not pay repeated cyclic-GC passes over the whole heap.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    return asyncio.run(agent.run())


def cmd_node_drain(args: argparse.Namespace) -> int:
    """Take the node out of BGP before it stops: exit 0 when the withdrawal reached every
    Established peer, 1 otherwise (agent unreachable, refused, or not confirmed)."""
    from podroute import statusd
    sock = Path(args.socket) if args.socket else _load_config(args.config).paths.agent_socket
    args_ok = statusd.drain_args({"settle_s": args.settle, "timeout_s": args.timeout})
    if isinstance(args_ok, str):
        print(f"podroute node drain: {args_ok}", file=sys.stderr)
        return 2
    try:
        rep = statusd.request_drain(sock, settle_s=args.settle, timeout_s=args.timeout)
    except statusd.AgentUnreachable as e:
        print(f"podroute node drain: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rep, indent=2))
    if "error" in rep:
        print(f"podroute node drain: {rep['error']}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"withdrew {len(rep['withdrawn'])} prefix(es) in {rep['took_s']:.1f} s "
              f"(settle {rep['settle_s']:g} s); delivered to {', '.join(rep['delivered']) or 'no peer'}"
              + (f"; NOT confirmed by {', '.join(rep['undelivered'])}" if rep["undelivered"] else "")
              + (f"; not Established: {', '.join(rep['down'])}" if rep["down"] else "")
              + ("" if rep["acked"] else "; ExaBGP did not ack every withdrawal in time")
              + "; the agent is exiting")
    return 0 if rep.get("complete") else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    blocks = (f"{len(cfg.pod_cidrs)} block(s)" if cfg.pod_cidrs or not cfg.datastore.from_datastore
              else f"blocks claimed in {cfg.datastore.type}" if cfg.datastore.claims_blocks
              else "its block is the Node's spec.podCIDR")
    print(f"{args.config}: ok (node {cfg.node_name}, {blocks}, {len(cfg.peers)} peer(s))")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from podroute import statusd
    if args.socket:
        sock = Path(args.socket)
    else:
        sock = _load_config(args.config).paths.agent_socket
    deadline = time.monotonic() + args.wait
    while True:  # --wait: a just-started agent answers once its sockets are up
        try:
            st = statusd.query(sock)
            break
        except statusd.AgentUnreachable as e:
            if time.monotonic() >= deadline:
                print(f"podroute status: {e}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    print(json.dumps(st, indent=2, default=str) if args.json else statusd.render(st))
    return 0


def cmd_ipam_show(args: argparse.Namespace) -> int:
    from podroute import ipamshow
    from podroute.datastore import DatastoreError
    # With --endpoints the node config is optional: it only adds this node's local usage.
    cfg = _load_config(args.config) if not args.endpoints or Path(args.config).exists() else None
    try:
        snap = ipamshow.etcd_snapshot(args.endpoints.split(","), args.prefix) if args.endpoints else None
        data = ipamshow.collect(cfg, snap)
    except (DatastoreError, ValueError) as e:
        print(f"podroute ipam show: datastore: {e}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else ipamshow.render(data, allocations=args.allocations))
    return 0


def cmd_datastore_apply(args: argparse.Namespace) -> int:
    from podroute.datastore import Conflict, DatastoreError
    from podroute.datastore.apply import apply_file, describe_conflict, render
    try:
        done = asyncio.run(apply_file(args.file, args.endpoints.split(","), args.prefix))
    except Conflict as e:
        print(f"podroute datastore apply: {describe_conflict(e)}; nothing after it was written", file=sys.stderr)
        return 1
    except (DatastoreError, ValueError) as e:
        print(f"podroute datastore apply: {e}", file=sys.stderr)
        return 1
    print(render(done, args.endpoints, args.prefix))
    return 0


def cmd_cni_install(args: argparse.Namespace) -> int:
    from cni.install import install_shim
    from podroute.cniconf import write_conflist
    cfg = _load_config(args.config)
    shim = install_shim(Path(args.bin_dir))
    conf = write_conflist(Path(args.conf_dir), cfg)
    print(f"installed CNI plugin {shim} and network config {conf}")
    return 0


def cmd_lab_up(args: argparse.Namespace) -> int:
    from podroute.lab.runner import lab_up
    return lab_up(nodes=args.nodes, peer=args.peer, name=args.name, state_root=Path(args.state_dir),
                  pods_per_node=args.pods, keep_on_failure=args.keep, encapsulation=args.encapsulation,
                  encap_mode=args.encap_mode, subnets=args.subnets, topology=args.topology,
                  router_restart_time=args.router_restart_time, monitoring_on=args.monitoring,
                  datastore=args.datastore, lease_ttl=args.lease_ttl, release_grace=args.release_grace)


def cmd_lab_down(args: argparse.Namespace) -> int:
    from podroute.lab.runner import lab_down
    return lab_down(name=args.name, state_root=Path(args.state_dir))


def cmd_lab_status(args: argparse.Namespace) -> int:
    from podroute.lab.runner import lab_status
    return lab_status(name=args.name, state_root=Path(args.state_dir))


def cmd_lab_reconfigure(args: argparse.Namespace) -> int:
    from podroute.lab.reconfigure import lab_reconfigure
    return lab_reconfigure(name=args.name, state_root=Path(args.state_dir), encapsulation=args.encapsulation,
                           encap_mode=args.encap_mode, timeout=args.timeout)


def cmd_lab_node_add(args: argparse.Namespace) -> int:
    from podroute.lab.membership import node_add
    return node_add(lab_name=args.lab, state_root=Path(args.state_dir), name=args.name, wait_join=not args.no_wait,
                    n_pods=args.pods, lease_ttl=args.lease_ttl)


def cmd_lab_node_remove(args: argparse.Namespace) -> int:
    from podroute.lab.membership import node_remove
    return node_remove(lab_name=args.lab, state_root=Path(args.state_dir), name=args.node, expire=args.expire)


def build_parser() -> argparse.ArgumentParser:
    from podroute.statusd import DRAIN_SETTLE_S, DRAIN_TIMEOUT_S
    p = argparse.ArgumentParser(prog="podroute", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="group", required=True)

    node = sub.add_parser("node", help="run the node agent").add_subparsers(dest="cmd", required=True)
    run = node.add_parser("run", help="run the agent in the foreground (felix + BGP speaker + CNI server)")
    run.add_argument("--config", default=DEFAULT_CONFIG)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="logfmt", choices=["logfmt", "json"])
    run.set_defaults(func=cmd_node_run)
    drn = node.add_parser("drain", help="withdraw this node's routes, wait for the peers, then stop the agent "
                                        "(for a node that is leaving; a plain stop or restart keeps the routes)")
    drn.add_argument("--config", default=DEFAULT_CONFIG)
    drn.add_argument("--socket", help="agent socket (default: <runDir>/agent.sock from --config)")
    drn.add_argument("--settle", type=float, default=DRAIN_SETTLE_S,
                     help="seconds to wait after the peers have the withdrawal, for them to act on it (0..300)")
    drn.add_argument("--timeout", type=float, default=DRAIN_TIMEOUT_S,
                     help="seconds to wait for ExaBGP and the peers' TCP to take the withdrawal (1..300)")
    drn.add_argument("--json", action="store_true")
    drn.set_defaults(func=cmd_node_drain)

    cfg = sub.add_parser("config", help="node config tools").add_subparsers(dest="cmd", required=True)
    chk = cfg.add_parser("check", help="validate a node config file")
    chk.add_argument("--config", default=DEFAULT_CONFIG)
    chk.set_defaults(func=cmd_config_check)

    st = sub.add_parser("status", help="BGP peers and route summary from the running agent")
    st.add_argument("--config", default=DEFAULT_CONFIG)
    st.add_argument("--socket", help="agent status socket (default: <runDir>/agent.sock from --config)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                    help="retry for up to SECONDS while the agent does not answer (e.g. right after start)")
    st.set_defaults(func=cmd_status)

    ipam = sub.add_parser("ipam", help="IP address management").add_subparsers(dest="cmd", required=True)
    show = ipam.add_parser("show", help="pools, blocks, their nodes and utilisation (this node's from its IPAM state)")
    show.add_argument("--config", default=DEFAULT_CONFIG)
    show.add_argument("--json", action="store_true")
    show.add_argument("--endpoints", help="read the etcd datastore at these endpoints (comma-separated "
                                          "http://host:port) instead of the node config's")
    show.add_argument("--prefix", default="/podroute/", help="etcd key prefix (with --endpoints)")
    show.add_argument("--allocations", action="store_true",
                      help="also list this node's addresses and their pods (K8S_POD_NAMESPACE/K8S_POD_NAME)")
    show.set_defaults(func=cmd_ipam_show)

    ds = sub.add_parser("datastore", help="cluster datastore tools").add_subparsers(dest="cmd", required=True)
    apl = ds.add_parser("apply", help="create or replace pools, BGP configuration, peers and nodes in etcd from a "
                                      "cluster file or a list of resources (blocks are claimed, never taken)")
    apl.add_argument("--file", required=True, help="YAML: a cluster file, or a list of resources with 'kind'")
    apl.add_argument("--endpoints", required=True, help="etcd endpoints, comma-separated http://host:port")
    apl.add_argument("--prefix", default="/podroute/", help="etcd key prefix")
    apl.set_defaults(func=cmd_datastore_apply)

    cni = sub.add_parser("cni", help="CNI plugin installation").add_subparsers(dest="cmd", required=True)
    inst = cni.add_parser("install", help="install the podroute CNI plugin and its conflist")
    inst.add_argument("--config", default=DEFAULT_CONFIG)
    inst.add_argument("--bin-dir", default="/opt/cni/bin")
    inst.add_argument("--conf-dir", default="/etc/cni/net.d")
    inst.set_defaults(func=cmd_cni_install)

    lab = sub.add_parser("lab", help="a multi-node cluster in network namespaces").add_subparsers(dest="cmd", required=True)
    for name, func, helptext in (("up", cmd_lab_up, "build the lab, wire pods, prove reachability"),
                                 ("down", cmd_lab_down, "remove everything the lab created"),
                                 ("status", cmd_lab_status, "show the lab's nodes and their agents' status"),
                                 ("reconfigure", cmd_lab_reconfigure, "switch the pools' encapsulation and restart the agents")):
        sp = lab.add_parser(name, help=helptext)
        sp.add_argument("--name", default="lab", help="lab name; namespaces are prl-<name>-*")
        sp.add_argument("--state-dir", default="/var/lib/podroute-lab")
        sp.set_defaults(func=func)
        if name == "reconfigure":
            sp.add_argument("--encapsulation", required=True, choices=["none", "ipip", "vxlan"])
            sp.add_argument("--encap-mode", default="Always", choices=["Always", "CrossSubnet"])
            sp.add_argument("--timeout", type=float, default=120, help="seconds to wait for convergence")
        if name == "up":
            sp.add_argument("--nodes", type=int, default=3)
            sp.add_argument("--topology", default="rr", choices=["rr", "rr2", "tor", "mesh", "podroute-rr"],
                            help="rr: one route reflector; rr2: two; tor: eBGP ToR, one AS per node; "
                                 "mesh: node-to-node full mesh; podroute-rr: the first node reflects")
            sp.add_argument("--peer", default="bird", choices=["bird", "frr"],
                            help="implementation of the external router(s) for rr, rr2 and tor")
            sp.add_argument("--router-restart-time", type=int, default=120,
                            help="graceful-restart time (s) the external routers advertise (RFC 4724)")
            sp.add_argument("--pods", type=int, default=2, help="pods per node")
            sp.add_argument("--keep", action="store_true", help="leave the lab up even if a check fails")
            sp.add_argument("--encapsulation", default="none", choices=["none", "ipip", "vxlan"],
                            help="pool encapsulation (ipip needs a kernel with the ipip module)")
            sp.add_argument("--encap-mode", default="Always", choices=["Always", "CrossSubnet"])
            sp.add_argument("--subnets", type=int, default=1,
                            help="spread nodes over this many underlay subnets joined by a router")
            sp.add_argument("--monitoring", action="store_true",
                            help="start a Prometheus (Debian's) in the lab scraping every agent's metrics, "
                                 "with configs/prometheus/alerts.yml loaded")
            sp.add_argument("--datastore", default="file", choices=["file", "etcd", "kubernetes"],
                            help="file: node configs and a cluster file; etcd: a real etcd in the lab, nodes "
                                 "register themselves and claim their own IPAM blocks; kubernetes: etcd and a "
                                 "real kube-apiserver in the lab, Nodes registered as kubelet would, agents "
                                 "with the shipped role claim IPAMBlocks")
            sp.add_argument("--lease-ttl", type=int, default=30, help="etcd: the nodes' registration lease TTL (s)")
            sp.add_argument("--release-grace", type=int, default=60,
                            help="etcd: seconds before an empty or departed node's block is released")
    lnode = lab.add_parser("node", help="add or remove a node of a running lab").add_subparsers(dest="sub",
                                                                                             required=True)
    nadd = lnode.add_parser("add", help="add a node at run time and time its join")
    nadd.add_argument("--name", help="node name (default n<next index>)")
    nadd.add_argument("--pods", type=int, default=1, help="pods to wire on it once it has joined")
    nadd.add_argument("--no-wait", action="store_true", help="return once its agent is started (no pods)")
    nadd.add_argument("--lease-ttl", type=int, help="etcd: this node's lease TTL (s), instead of the lab's")
    nrm = lnode.add_parser("remove", help="remove a node at run time")
    nrm.add_argument("node", help="node name, e.g. n4")
    nrm.add_argument("--expire", action="store_true",
                     help="etcd: kill it and leave its registration to expire by lease, instead of draining it "
                          "and deleting the registration")
    for sp, func in ((nadd, cmd_lab_node_add), (nrm, cmd_lab_node_remove)):
        sp.add_argument("--lab", default="lab", help="lab name (lab up --name)")
        sp.add_argument("--state-dir", default="/var/lib/podroute-lab")
        sp.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    from podroute.schema import ConfigError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"podroute: invalid config: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
