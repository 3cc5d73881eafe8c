"""``podroute lab reconfigure``: switch a running lab's pool encapsulation at runtime.

What an operator does on a real cluster when an IP pool's ``ipipMode`` / ``vxlanMode``
changes (Calico: edit the IPPool, Felix reprograms), done here by config + restart:

1. rewrite every node's ``node.yaml`` with the new pool modes (the same renderer
   ``lab up`` uses, :func:`podroute.lab.agents.node_config`; on an etcd lab the IPPool in
   etcd is replaced instead);
2. restart the agents one node at a time (rolling): SIGTERM by the PID recorded in
   ``lab.json``, wait (bounded), start it again exactly as ``lab up`` does
   (:func:`podroute.lab.agents.start`), record the new PID in ``lab.json``, wait
   until its sessions are Established and its graceful-restart hold is released. Routes stay in the FIB across the restart; the
   new agent keeps its previous BGP routes as stale only until every peer has sent
   End-of-RIB (RFC 4724 §4.2), then replaces them with the new mode's routes, and
   removes the device of a mode switched off (``Agent._remove_unused_tunnels``);
3. wait until converged: every session Established, no graceful-restart hold, every
   node's route to every other block uses exactly the new mode's next hop
   (native ``via <node IP> dev <uplink>``, ``dev tunl0 onlink`` for IPIP/RFC 2003,
   ``dev vxlan.podroute onlink`` for VXLAN/RFC 7348; CrossSubnet: native within a
   subnet), no proto-90 route mentions a switched-off device and no node still has a
   ``vxlan.podroute`` link when VXLAN is off;
4. ping every pod pair.

Exit status: 0 converged and every pair pings, 1 not converged in time or a ping
failed, 2 bad usage (unknown lab, bad mode). Pods keep the MTU they were wired with:
switching from none to an encapsulation leaves existing pods at the underlay MTU until
they are re-created (as in Calico, where the pod MTU is fixed at CNI ADD).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from podroute.lab import agents, fabric, netns, probes
from podroute.lab.model import Lab, Node, wait
from podroute.lab.options import validate_encapsulation
from podroute.lab.netns import LabError
from podroute.routing import TUNL0, VXLAN_DEV

AGENT_STOP_GRACE_S = 20.0


def expected_route(lab: Lab, src: Node, dst: Node) -> str:
    """The ``ip route`` text (prefix through the device and onlink flag) ``src`` must hold
    for ``dst``'s block under the lab's current encapsulation."""
    native = f"{dst.block} via {dst.ip} dev eth0"
    if lab.encapsulation == "none" or (lab.encap_mode == "CrossSubnet" and src.subnet == dst.subnet):
        return native
    dev = TUNL0 if lab.encapsulation == "ipip" else VXLAN_DEV
    return f"{dst.block} via {dst.ip} dev {dev} onlink"


def _unused_devices(lab: Lab) -> list[str]:
    return [dev for enc, dev in (("ipip", TUNL0), ("vxlan", VXLAN_DEV)) if lab.encapsulation != enc]


def convergence_problems(lab: Lab) -> list[str]:
    """Everything that still differs from the converged state (empty list: converged)."""
    problems: list[str] = []
    unused = _unused_devices(lab)
    for n in lab.nodes:
        st = agents.status(n)
        if not st:
            problems.append(f"{n.name}: agent not answering")
            continue
        peers = st["bgp"]["peers"]
        if not peers or any(p["state"] != "established" for p in peers):
            problems.append(f"{n.name}: BGP not established")
        if st["fib"].get("graceful_restart_hold"):
            problems.append(f"{n.name}: still holding stale routes (no End-of-RIB yet)")
        routes = probes.fib_routes(n.ns)
        for m in lab.nodes:
            if m is n:
                continue
            want = expected_route(lab, n, m)
            got = [r for r in routes if r.startswith(m.block + " ")]
            if len(got) != 1 or not (got[0] == want or got[0].startswith(want + " ")):
                problems.append(f"{n.name}: route to {m.block} is {got or 'missing'}, want {want!r}")
        for r in routes:
            if any(f"dev {dev} " in r + " " for dev in unused):
                problems.append(f"{n.name}: old-mode route left: {r}")
        if lab.encapsulation != "vxlan" and netns.ip("link", "show", VXLAN_DEV, ns=n.ns, check=False).returncode == 0:
            problems.append(f"{n.name}: {VXLAN_DEV} still present")
    return problems


def _restarted(node: Node) -> bool:
    if not agents.established(node):  # raises LabError if the agent exited
        return False
    st = agents.status(node)
    return bool(st) and not st["fib"].get("graceful_restart_hold")


def lab_reconfigure(*, name: str, state_root: Path, encapsulation: str, encap_mode: str = "Always",
                    timeout: float = 120.0) -> int:
    """Switch lab ``name`` to ``encapsulation`` (none|ipip|vxlan) in ``encap_mode``
    (Always|CrossSubnet), restart its agents and wait up to ``timeout`` seconds for
    convergence. Returns the exit status described in the module docstring."""
    lab = Lab.load(state_root / name)
    try:
        if lab is None:
            raise LabError(f"no lab '{name}' under {state_root}")
        validate_encapsulation(encapsulation, encap_mode)
        if encapsulation == "ipip":
            fabric.check_ipip(lab.prefix + "fab")
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        return 2
    old = f"{lab.encapsulation} {lab.encap_mode}" if lab.encapsulation != "none" else "none"
    new = f"{encapsulation} {encap_mode}" if encapsulation != "none" else "none"
    print(f"lab '{name}': switching encapsulation {old} -> {new} on {len(lab.nodes)} nodes", flush=True)
    lab.encapsulation, lab.encap_mode = encapsulation, encap_mode
    lab.save()
    t0 = time.monotonic()
    try:
        if lab.datastore == "etcd":  # the pool lives in etcd, not in the node configs
            from podroute.lab import etcd
            etcd.apply(lab, puts=[etcd.pool(lab)])
        # Rolling, one node at a time, as an operator restarts a DaemonSet: the others keep
        # their sessions, so the restarted agent exercises the graceful-restart path (keeps
        # its old routes as stale until End-of-RIB, then the new mode's routes replace them).
        for n in lab.nodes:
            if n.pid:
                netns.kill_pid(n.pid, grace=AGENT_STOP_GRACE_S)
            agents.start(lab, n)  # rewrites node.yaml from lab.encapsulation, records the PID
            wait(f"{n.name}'s agent to re-establish BGP and release stale routes",
                         lambda n=n: _restarted(n), timeout, 0.1)
        problems: list[str] = []

        def converged() -> bool:
            nonlocal problems
            for n in lab.nodes:
                agents.check(n)
            problems = convergence_problems(lab)
            return not problems

        try:
            wait("the new encapsulation to converge", converged, timeout, 0.25)
        except LabError as e:
            print(f"podroute lab: {e}:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
    except LabError as e:
        print(f"podroute lab: {e}", file=sys.stderr)
        return 1
    took = time.monotonic() - t0
    lab.timings["reconfigure_s"] = took
    lab.save()
    failed = [(s.name, d.name) for s in lab.pods for d in lab.pods if s is not d and not probes.ping(s, d)]
    for n in lab.nodes:
        for r in probes.fib_routes(n.ns):
            print(f"  {n.name}: {r}")
    pairs = len(lab.pods) * (len(lab.pods) - 1)
    print(f"converged in {took:.1f} s; pod pairs reachable: {pairs - len(failed)}/{pairs}"
          + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0
