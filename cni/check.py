"""What CNI CHECK (and a repeated ADD) compares: the wiring as it is against what it should be.

CNI spec 1.1 "CHECK: Check container's networking is as expected": the plugin consults
``prevResult`` for the expected interfaces and addresses, and reports an error if one it
created is missing or in an invalid state. Two parts:

* :func:`observe` reads the dataplane (one worker-thread hop) and lists every difference
  from the wiring :mod:`cni.wiring` describes (host veth up with proxy ARP, host ``/32``
  route, pod address/MTU/routes);
* :func:`prev_result_problems` compares ``prevResult`` with what was observed: our address
  among its ``ips``, its pod interface (``name`` = CNI_IFNAME, ``sandbox`` = CNI_NETNS) and
  its host interface present, and their ``mac`` equal to the real interfaces' MACs (as the
  reference ``ptp`` plugin's CHECK validates the interfaces it created).

Problems are short texts naming the object and the difference; the caller joins them into
one code-999 error.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Mapping

from .wiring import GATEWAY, HostVethState, PodIfaceState, Wiring


@dataclass(frozen=True)
class Observed:
    """The dataplane as read for one attachment: ``host``/``pod`` are None when missing."""

    problems: tuple[str, ...]
    host: HostVethState | None
    pod: PodIfaceState | None


def observe(wiring: Wiring, protocol: int, netns: str, ifname: str, ip: IPv4Address,
            host_ifname: str, mtu: int) -> Observed:
    """Read host veth, host route and pod interface (blocking: run in a worker thread).
    Raises what the wiring raises for an unusable netns (NetnsNotFound, NotANetns)."""
    problems: list[str] = []
    host = wiring.host_veth(host_ifname)
    if host is None:
        problems.append(f"host veth {host_ifname} is missing")
    else:
        if not host.up:
            problems.append(f"host veth {host_ifname} is down")
        if host.proxy_arp != 1:
            problems.append(f"host veth {host_ifname} has proxy_arp={host.proxy_arp}, want 1")
    if not wiring.host_route_exists(ip, host_ifname, protocol):
        problems.append(f"host route {ip}/32 dev {host_ifname} scope link proto {protocol} "
                        "is missing")
    pod = wiring.pod_iface(netns, ifname)
    if pod is None:
        problems.append(f"pod interface {ifname} is missing in {netns}")
    else:
        if f"{ip}/32" not in {str(a) for a in pod.addresses}:
            problems.append(f"pod interface {ifname} lacks address {ip}/32 "
                            f"(has {', '.join(map(str, pod.addresses)) or 'none'})")
        if pod.mtu != mtu:
            problems.append(f"pod interface {ifname} has MTU {pod.mtu}, want {mtu}")
        if not pod.up:
            problems.append(f"pod interface {ifname} is down")
        if not pod.gateway_route:
            problems.append(f"pod route {GATEWAY} dev {ifname} scope link is missing")
        if pod.default_via != GATEWAY:
            problems.append(f"pod default route via {GATEWAY} dev {ifname} is missing")
    return Observed(tuple(problems), host, pod)


def _mac(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) and value else None


def prev_result_problems(prev: Mapping[str, Any], ifname: str, netns: str, host_ifname: str,
                         ip: IPv4Address, seen: Observed) -> list[str]:
    """Differences between ``prevResult`` (a decoded CNI result of any supported version)
    and the attachment as observed."""
    problems: list[str] = []
    ips = prev.get("ips")
    addrs = {str(i.get("address")) for i in ips if isinstance(i, dict)} \
        if isinstance(ips, list) else set()
    if f"{ip}/32" not in addrs:
        problems.append(f"prevResult ips {sorted(addrs)} do not hold {ip}/32")
    ifaces = prev.get("interfaces")
    ifaces = [i for i in ifaces if isinstance(i, dict)] if isinstance(ifaces, list) else []
    pod = next((i for i in ifaces if i.get("name") == ifname and i.get("sandbox") == netns), None)
    host = next((i for i in ifaces if i.get("name") == host_ifname and not i.get("sandbox")),
                None)
    for what, entry, state, name, where in (
            ("pod interface", pod, seen.pod, ifname, f" in sandbox {netns}"),
            ("host veth", host, seen.host, host_ifname, "")):
        if entry is None:
            problems.append(f"prevResult lists no {what} {name}{where}")
            continue
        want = _mac(entry.get("mac"))
        if want is not None and state is not None and state.mac.lower() != want:
            problems.append(f"{what} {name} has MAC {state.mac}, prevResult says {want!r}")
    return problems
