"""The lab's external BGP routers: BIRD 2 (podroute.lab.bird) or FRR bgpd (podroute.lab.frr)
as route reflector(s) (topologies rr, rr2; iBGP, RFC 4456) or as ToR (topology tor; eBGP,
AS 65000, one AS per node). Topologies mesh and podroute-rr have none: the nodes peer
among themselves from the cluster file.

Each router runs in its namespace from ``<root>/<router name>/`` (config, control socket,
pid file, ``router.out``); lab.json records it as ``{"name", "ns", "impl", "pid", "dir",
"ctl", "role", "asn", "router_id"}``.
"""
from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

from podroute.lab import bird, frr
from podroute.lab.model import ASN, RR2_IP, RR_IP, TOR_ASN, Lab, Node, router_ip, wait
from podroute.lab.netns import LabError, run
from podroute.lab.options import CLUSTER_FILE_TOPOLOGIES


def command(impl: str, rdir: Path) -> tuple[list[str], Path]:
    """``(argv, control socket)`` that runs router ``impl`` (bird|frr) on the config already
    in ``rdir`` (bird.conf / bgpd.conf), in the foreground."""
    if impl == "bird":
        ctl = rdir / "bird.ctl"
        return ["bird", "-f", "-c", str(rdir / "bird.conf"), "-s", str(ctl), "-P", str(rdir / "bird.pid")], ctl
    return frr.command(rdir / "bgpd.conf", rdir, rdir / "bgpd.pid"), rdir / "bgpd.vty"


def spawn(ns: str, impl: str, rdir: Path, mode: str = "wb") -> subprocess.Popen[bytes]:
    """Start router ``impl`` from ``rdir`` inside ``ns`` in its own session, output to
    ``rdir/router.out`` (``mode`` "wb" truncates, "ab" appends)."""
    argv, _ = command(impl, rdir)
    with open(rdir / "router.out", mode) as out:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _role(lab: Lab) -> tuple[str, int]:
    return ("tor", TOR_ASN) if lab.topology == "tor" else ("rr", ASN)


def _neighbors(lab: Lab, name: str) -> list[bird.BirdNeighbor]:
    local = (lambda n: router_ip(n.subnet)) if name == "rr" else (lambda n: RR2_IP)
    return [bird.BirdNeighbor(n.name, ipaddress.IPv4Address(n.ip), n.asn, local(n)) for n in lab.nodes]


def write_config(lab: Lab, name: str, router_id: ipaddress.IPv4Address) -> Path:
    """Render router ``name``'s config for every node now in ``lab`` into its directory."""
    role, asn = _role(lab)
    rdir = lab.path / name
    rdir.mkdir(exist_ok=True)
    if lab.peer == "bird":
        (rdir / "bird.conf").write_text(
            bird.render(router_id, asn, _neighbors(lab, name), rdir / "bird.log", role, lab.router_restart_time))
    else:
        (rdir / "bgpd.conf").write_text(
            frr.render(router_id, asn, _neighbors(lab, name), rdir / "bgpd.log", role, lab.router_restart_time))
    return rdir


def start(lab: Lab, name: str, ns: str, router_id: ipaddress.IPv4Address) -> None:
    """Configure and start router ``name`` in ``ns`` for every node of ``lab``, record it,
    and wait (15 s) for its control socket. Raises LabError with the end of its output if
    it exits first."""
    role, asn = _role(lab)
    rdir = write_config(lab, name, router_id)
    _, ctl = command(lab.peer, rdir)
    proc = spawn(ns, lab.peer, rdir)
    lab.routers.append({"name": name, "ns": ns, "impl": lab.peer, "pid": proc.pid, "dir": str(rdir),
                        "ctl": str(ctl), "role": role, "asn": asn, "router_id": str(router_id)})
    lab.save()
    wait(f"{lab.peer} on {name} to start", lambda: ctl.exists() or proc.poll() is not None, 15)
    if proc.poll() is not None:
        raise LabError(f"{lab.peer} on {name} exited with {proc.returncode}: "
                       f"{(rdir / 'router.out').read_text(errors='replace')[-500:]}")


def _vtysh(r: dict, *commands: str) -> None:
    args = [a for c in commands for a in ("-c", c)]
    run(["vtysh", "--vty_socket", r["dir"], "-d", "bgpd", *args], ns=r["ns"], timeout=10)


def add_neighbor(lab: Lab, node: Node) -> None:
    """Configure a session to ``node`` (already in ``lab.nodes``) on every external router of
    the running lab: BIRD re-reads its re-rendered config (``birdc configure`` keeps the
    sessions whose protocol did not change), FRR takes the neighbour through vtysh."""
    for r in lab.routers:
        write_config(lab, r["name"], ipaddress.IPv4Address(r["router_id"]))
        if r["impl"] == "bird":
            bird.birdc(Path(r["ctl"]), "configure", ns=r["ns"])
            continue
        af = "route-reflector-client" if r["role"] == "rr" else "attribute-unchanged next-hop"
        _vtysh(r, "configure terminal", f"router bgp {r['asn']}", f"neighbor {node.ip} remote-as {node.asn}",
               f"neighbor {node.ip} timers 10 30", "address-family ipv4 unicast", f"neighbor {node.ip} activate",
               f"neighbor {node.ip} {af}")


def remove_neighbor(lab: Lab, node: Node) -> None:
    """Drop the session to ``node`` (already removed from ``lab.nodes``) on every external
    router; its routes go with it."""
    for r in lab.routers:
        write_config(lab, r["name"], ipaddress.IPv4Address(r["router_id"]))
        if r["impl"] == "bird":
            bird.birdc(Path(r["ctl"]), "configure", ns=r["ns"])
        else:
            _vtysh(r, "configure terminal", f"router bgp {r['asn']}", f"no neighbor {node.ip}")


def start_all(lab: Lab) -> None:
    """Start the routers ``lab.topology`` has (none for mesh / podroute-rr)."""
    if lab.topology in CLUSTER_FILE_TOPOLOGIES:
        return  # podroute nodes peer among themselves; the rr namespace only routes the underlay
    start(lab, "rr", lab.prefix + "rr", RR_IP)
    if lab.topology == "rr2":
        start(lab, "rr2", lab.prefix + "rr2", RR2_IP)


def sessions(lab: Lab) -> dict[str, bool]:
    """``{"<router>:<node>": Established?}`` as each external router sees its sessions."""
    out: dict[str, bool] = {}
    by_ip = {n.ip: n.name for n in lab.nodes}
    for r in lab.routers:
        if r["impl"] == "bird":
            states = bird.established(Path(r["ctl"]), r["ns"])
        else:
            states = {by_ip.get(a, a): up for a, up in frr.established(Path(r["dir"]), r["ns"]).items()}
        for node, up in states.items():
            out[f"{r['name']}:{node}"] = up
    return out
