"""Make the IPAM records and the dataplane agree: at agent start, on a repeated ADD, and for
CNI 1.1 GC.

A kill -9 mid-ADD or mid-DEL leaves an attachment half done: an IP with no veth, a veth
down with no route, a veth with no record. Every IPAM record is an attachment
(``attrs``: ``network``, ``container_id``, ``ifname``, ``netns``, ``host_ifname``, ``mtu``;
the host veth name is always read from the record, never recomputed). For each one,
:class:`Reconciler.run` decides (before the CNI server accepts requests):

* whole (CHECK would find nothing wrong) -> kept;
* its host veth is retired -> a DEL was under way: the DEL is completed;
* its netns is gone -> nobody owns it: rolled back (IP released);
* otherwise -> finished in place by :func:`finish` (the same steps as ADD, each of them
  idempotent) and its host route handed to the plugin's WorkloadSink, the route's only writer
  (felix in the agent), or rolled back if that fails.

A host veth with our prefix and no record is removed. A rollback is exactly the plugin's
DEL of that attachment (:meth:`cni.plugin.CNIPlugin.delete`), so felix hears of it and the
veth pair goes through the retired group. Nothing here ever answers "DEL it first".

:meth:`Reconciler.gc` is the CNI 1.1 ``GC`` verb (spec 1.1.0, "GC: Clean up any stale
resources"): every record of that network whose ``(containerID, ifname)`` is not in
``cni.dev/valid-attachments`` is rolled back the same way. GC is per network (only records
of the network named in the config are touched); errors do not stop it, they are reported
together at the end.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .errors import (INCOMPATIBLE_CNI_VERSION, INTERNAL, CNIError, InvalidConfig, NetnsNotFound,
                     WiringError)
from .ipam import Allocation
from .model import CNIRequest, WorkloadEndpoint
from .steps import in_thread
from .wiring import GATEWAY, Wiring

if TYPE_CHECKING:
    from .plugin import CNIPlugin

log = logging.getLogger(__name__)

KEPT, FINISHED, ROLLED_BACK, FAILED = "kept", "finished", "rolled back", "failed"
GC_VERSION = "1.1.0"  # CNI spec 1.1.0 introduced GC; older configs must not get it
GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")  # libcni sends both
_REQUIRED = ("network", "container_id", "ifname", "netns", "host_ifname")


@dataclass(frozen=True)
class Outcome:
    """What became of one IPAM record: ``action`` is one of KEPT, FINISHED, ROLLED_BACK,
    FAILED (left as it was, ``reason`` says why); ``reason`` is empty when kept."""

    handle: str
    ip: IPv4Address
    action: str
    reason: str = ""


@dataclass(frozen=True)
class Report:
    """One reconcile or GC pass: an outcome per record looked at, the host veths removed
    for having no record, and every error met (the pass goes on past them)."""

    outcomes: tuple[Outcome, ...] = ()
    orphan_veths: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def handles(self, action: str) -> list[str]:
        return sorted(o.handle for o in self.outcomes if o.action == action)


# -- the dataplane side (worker thread; Wiring calls only) ---------------------------------

def defects(w: Wiring, ip: IPv4Address, attrs: Mapping[str, Any], protocol: int,
            mtu: int, *, route: bool = True) -> list[str]:
    """What an attachment lacks compared to a finished ADD (the host route only if ``route``);
    [] when whole. Raises NetnsNotFound if its netns is gone, CNIError if the state cannot be
    read."""
    netns, ifname, host_ifname = attrs["netns"], attrs["ifname"], attrs["host_ifname"]
    pod = w.pod_iface(netns, ifname)  # first: a gone netns says everything
    out: list[str] = []
    host = w.host_veth(host_ifname)
    if host is None:
        out.append(f"host veth {host_ifname} is missing")
    else:
        if host.retired:
            out.append(f"host veth {host_ifname} is retired")
        if not host.up:
            out.append(f"host veth {host_ifname} is down")
        if host.proxy_arp != 1 or host.forwarding != 1:
            out.append(f"host veth {host_ifname} has proxy_arp={host.proxy_arp} "
                       f"forwarding={host.forwarding}")
    if route and not w.host_route_exists(ip, host_ifname, protocol):
        out.append(f"host route {ip}/32 dev {host_ifname} is missing")
    if pod is None:
        out.append(f"pod interface {ifname} is missing in {netns}")
    elif (f"{ip}/32" not in {str(a) for a in pod.addresses} or pod.mtu != mtu or not pod.up
          or not pod.gateway_route or pod.default_via != GATEWAY):
        out.append(f"pod interface {ifname} is not configured (address, MTU, up, routes)")
    return out


def finish(w: Wiring, ip: IPv4Address, attrs: Mapping[str, Any], protocol: int,
           mtu: int) -> None:
    """Complete a half-wired attachment in place with ADD's own steps (each idempotent):
    the veth pair if the pod end is missing (a host veth of that name whose peer is not in
    the netns is a dead sandbox's, deleted first, as Calico does), then both sides. The host
    route is not written here: it is the WorkloadSink's (one writer per route), which the
    caller awaits next. Raises NetnsNotFound (netns gone), WiringError when the pieces cannot be
    completed (the pod has the interface name but our host veth is missing or retired) or
    anything is still wrong afterwards."""
    netns, ifname, host_ifname = attrs["netns"], attrs["ifname"], attrs["host_ifname"]
    pod = w.pod_iface(netns, ifname)
    host = w.host_veth(host_ifname)
    if pod is None:
        if host is not None:
            w.delete_host_veth(host_ifname)
        w.create_veth_in_netns(host_ifname, netns, ifname, mtu)
    elif host is None or host.retired:
        raise WiringError(f"{ifname} exists in {netns} but host veth {host_ifname} is "
                          f"{'retired' if host else 'missing'}: the pair cannot be completed")
    w.configure_pod_side(netns, ifname, ip, mtu)
    w.configure_host_side(host_ifname)
    left = defects(w, ip, attrs, protocol, mtu, route=False)
    if left:
        raise WiringError(f"still broken after completing it: {'; '.join(left)}")


# -- the passes ----------------------------------------------------------------------------

def _del_request(alloc: Allocation) -> CNIRequest | None:
    """The DEL that removes ``alloc``, or None if its attrs do not name the attachment its
    handle is (a record from another writer: only its IP can be released)."""
    a = alloc.attrs
    if not all(isinstance(a.get(k), str) and a.get(k) for k in _REQUIRED[:3]):
        return None
    if alloc.handle != f"{a['network']}.{a['container_id']}.{a['ifname']}":
        return None
    args = {k: v for k, v in (("K8S_POD_NAMESPACE", a.get("pod_namespace")),
                              ("K8S_POD_NAME", a.get("pod_name"))) if isinstance(v, str) and v}
    return CNIRequest("DEL", a["container_id"], str(a.get("netns") or ""), a["ifname"], args,
                      "", {"name": a["network"]})


class Reconciler:
    """Runs the passes for ``plugin`` (its IPAM, wiring, route protocol, host veth prefix,
    default MTU and workload sink)."""

    def __init__(self, plugin: "CNIPlugin") -> None:
        self.plugin = plugin

    async def run(self) -> Report:
        """The start-up pass over every record, then the host veths with no record. Takes the
        plugin's request lock. Raises CNIError only if the IPAM state cannot be read."""
        p = self.plugin
        async with p._lock:
            allocs = await in_thread("IPAM read", p.ipam.allocations)
            veths = await in_thread("list host veths", p.wiring.list_host_veths, p.host_prefix)
            outcomes, errors = [], []
            for alloc in sorted(allocs.values(), key=lambda a: a.handle):
                outcomes.append(await self._one(alloc, veths, errors))
            # Names still referenced by a record (a shared name under the old naming included).
            owned = {a.attrs.get("host_ifname") for a in allocs.values()}
            orphans = [n for n, retired in sorted(veths.items()) if n not in owned and not retired]
            removed = []
            for name in orphans:
                try:
                    if await in_thread("retire orphan veth", p.wiring.retire_host_veth, name):
                        removed.append(name)
                        log.warning("reconcile: host veth %s has no IPAM record; removed", name)
                except CNIError as e:
                    errors.append(f"orphan host veth {name}: {e.msg}")
            try:
                await p.reap()
            except CNIError as e:
                errors.append(f"deleting retired veths: {e.msg}")
        report = Report(tuple(outcomes), tuple(removed), tuple(errors))
        _log_summary("reconcile", report)
        return report

    async def gc_request(self, req: CNIRequest) -> None:
        """The ``GC`` verb: ``req.config`` names the network and lists the attachments the
        runtime still has in ``cni.dev/valid-attachments`` (``[{"containerID", "ifname"}]``;
        ``null`` is an empty list, Go's nil slice; libcni also sends it as
        ``cni.dev/attachments``). Raises CNIError 1 for a config older than 1.1.0, 7 for a
        missing name or a missing or malformed list (never read as "nothing is valid"), 999
        naming every failure when the pass went on past some."""
        name = req.config.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidConfig("network configuration has no name")
        if req.config.get("cniVersion") != GC_VERSION:
            raise CNIError(INCOMPATIBLE_CNI_VERSION, f"GC needs cniVersion {GC_VERSION}, config "
                           f"has {req.config.get('cniVersion')!r}")
        key = next((k for k in GC_KEYS if k in req.config), None)
        if key is None:
            raise InvalidConfig(f"GC needs {GC_KEYS[0]} in the network configuration")
        listed = req.config[key] if req.config[key] is not None else []
        if not isinstance(listed, list) or not all(
                isinstance(x, dict) and isinstance(x.get("containerID"), str)
                and isinstance(x.get("ifname"), str) for x in listed):
            raise InvalidConfig(f"{key} must be a list of {{containerID, ifname}} strings")
        report = await self.gc(name, [(x["containerID"], x["ifname"]) for x in listed])
        if report.errors:
            raise CNIError(INTERNAL, f"GC incomplete: {'; '.join(report.errors)}")

    async def gc(self, network: str, valid: Iterable[tuple[str, str]]) -> Report:
        """CNI GC for ``network``: roll back every record of that network whose
        ``(container ID, ifname)`` is not in ``valid``. The caller holds the plugin's lock
        (GC comes through :meth:`cni.plugin.CNIPlugin.handle`). Raises CNIError only if the
        IPAM state cannot be read."""
        keep = set(valid)
        allocs = await in_thread("IPAM read", self.plugin.ipam.allocations)
        outcomes, errors = [], []
        for alloc in sorted(allocs.values(), key=lambda a: a.handle):
            a = alloc.attrs
            if a.get("network") != network:
                continue
            if (a.get("container_id"), a.get("ifname")) in keep:
                outcomes.append(Outcome(alloc.handle, alloc.ip, KEPT))
                continue
            outcomes.append(await self._roll_back(alloc, "not in cni.dev/valid-attachments",
                                                  errors))
        report = Report(tuple(outcomes), (), tuple(errors))
        _log_summary(f"GC of network {network}", report)
        return report

    async def _one(self, alloc: Allocation, veths: Mapping[str, bool],
                   errors: list[str]) -> Outcome:
        p, a = self.plugin, alloc.attrs
        missing = [k for k in _REQUIRED if not isinstance(a.get(k), str) or not a.get(k)]
        if missing:
            return await self._roll_back(alloc, f"record lacks {', '.join(missing)}", errors)
        if veths.get(a["host_ifname"]):
            return await self._roll_back(alloc, "its host veth is retired (a DEL was under way)",
                                         errors)
        mtu = a.get("mtu") if isinstance(a.get("mtu"), int) else p.mtu
        try:
            wrong = await in_thread("inspect attachment", defects, p.wiring, alloc.ip, a,
                                    p.protocol, mtu)
        except NetnsNotFound:
            return await self._roll_back(alloc, f"its netns {a['netns']} is gone", errors)
        except CNIError as e:  # cannot tell: leave it for the next pass, never guess
            errors.append(f"{alloc.handle}: {e.msg}")
            return Outcome(alloc.handle, alloc.ip, FAILED, f"could not inspect it: {e.msg}")
        if not wrong:
            return Outcome(alloc.handle, alloc.ip, KEPT)
        why = "; ".join(wrong)
        try:
            await in_thread("finish attachment", finish, p.wiring, alloc.ip, a, p.protocol, mtu)
            await p._route_added(WorkloadEndpoint(a["container_id"], a["ifname"], a["host_ifname"],
                                                  alloc.ip, a["netns"], a.get("pod_namespace"),
                                                  a.get("pod_name")))
        except CNIError as e:
            return await self._roll_back(alloc, f"{why}; completing it failed: {e.msg}", errors)
        log.warning("reconcile %s: half-wired (%s); finished", alloc.handle, why)
        return Outcome(alloc.handle, alloc.ip, FINISHED, why)

    async def _roll_back(self, alloc: Allocation, why: str, errors: list[str]) -> Outcome:
        """The DEL of that attachment (route, veth, IP, felix); just the IP release when the
        record does not name an attachment."""
        p = self.plugin
        req = _del_request(alloc)
        try:
            if req is not None:
                await p.delete(req)
            else:
                await in_thread("IPAM release", p.ipam.release, alloc.handle)
                name = alloc.attrs.get("host_ifname")
                if isinstance(name, str) and name.startswith(p.host_prefix):
                    await in_thread("retire host veth", p.wiring.retire_host_veth, name)
        except CNIError as e:
            errors.append(f"{alloc.handle}: rollback incomplete: {e.msg}")
            log.error("reconcile %s: %s; rollback incomplete: %s", alloc.handle, why, e.msg)
            return Outcome(alloc.handle, alloc.ip, FAILED, f"{why}; rollback incomplete: {e.msg}")
        log.warning("reconcile %s: %s; rolled back (IP %s released)", alloc.handle, why, alloc.ip)
        return Outcome(alloc.handle, alloc.ip, ROLLED_BACK, why)


def _log_summary(what: str, r: Report) -> None:
    counts = {act: len(r.handles(act)) for act in (KEPT, FINISHED, ROLLED_BACK, FAILED)}
    if counts[FINISHED] or counts[ROLLED_BACK] or counts[FAILED] or r.orphan_veths or r.errors:
        log.warning("%s: %s, %d orphan veths removed, %d errors", what,
                    ", ".join(f"{n} {act}" for act, n in counts.items()), len(r.orphan_veths),
                    len(r.errors))
    else:
        log.info("%s: %d attachments, all whole", what, counts[KEPT])
