"""The real :class:`cni.wiring.Wiring`: pyroute2 netlink + /proc/sys writes.

The only module of ``cni`` that imports pyroute2. Pod-namespace work runs in a
short-lived thread that ``setns(2)``s into the CNI_NETNS path and opens its own netlink
socket there (~1 ms; ``IPRoute(netns=...)`` forks a helper and would *create* a missing
namespace). A missing netns path is :class:`~cni.errors.NetnsNotFound`, never created.

"Host" is the namespace of the calling thread (the agent's), or ``host_netns`` (a netns
path) when given, which tests use to run the host side inside a throwaway namespace.
NetlinkError/OSError are mapped to :mod:`cni.errors` here: EEXIST -> InterfaceExists,
EBUSY/EAGAIN/ENOBUFS -> WiringError code 11 (try again later), others -> code 999.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface
from typing import Any, Callable, Iterator, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .errors import (TRY_AGAIN_LATER, CNIError, InterfaceExists, NetnsNotFound, WiringError)
from .wiring import GATEWAY, HostVethState, PodIfaceState

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SCOPE_LINK = 253
MAIN_TABLE = 254
_TRANSIENT = {errno.EBUSY, errno.EAGAIN, errno.ENOBUFS, errno.EINTR}
_libc = ctypes.CDLL(None, use_errno=True)


def _errno(e: BaseException) -> int | None:
    if isinstance(e, NetlinkError):
        return e.code
    if isinstance(e, OSError):
        return e.errno
    return None


def _wrap(what: str, e: BaseException) -> CNIError:
    if isinstance(e, CNIError):
        return e
    code = _errno(e)
    text = os.strerror(code) if code else str(e)
    return WiringError(f"{what}: {text}", repr(e),
                       code=TRY_AGAIN_LATER if code in _TRANSIENT else 999)


def _open_netns(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NetnsNotFound(path, str(e)) from e
    except OSError as e:
        raise _wrap(f"open network namespace {path}", e) from e


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread switched into the netns at ``path``; return its result
    or re-raise its exception. Raises NetnsNotFound / WiringError if setns fails."""
    fd = _open_netns(path)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise WiringError(f"setns into {path}: {os.strerror(err)}")
            box["result"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    try:
        t = threading.Thread(target=target, name="cni-netns", daemon=True)
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _sysctl_path(kind: str, ifname: str, key: str) -> str:
    return f"/proc/sys/net/ipv4/{kind}/{ifname}/{key}"


def _write_sysctl(kind: str, ifname: str, key: str, value: str) -> None:
    with open(_sysctl_path(kind, ifname, key), "w") as f:
        f.write(value)


def _read_sysctl(kind: str, ifname: str, key: str) -> int:
    with open(_sysctl_path(kind, ifname, key)) as f:
        return int(f.read().strip())


def _index(ipr: IPRoute, ifname: str) -> int | None:
    """Index of ``ifname`` in the calling thread's netns (the one ``ipr`` was opened in).

    SIOCGIFINDEX via ``socket.if_nametoindex`` (~20 µs) instead of pyroute2's
    ``link_lookup``, which dumps and parses every link (~1.5 ms, several times per ADD).
    The ioctl socket is created in the calling thread's namespace, as ``ipr`` was."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _link_info(ipr: IPRoute, idx: int) -> tuple[str, int, bool]:
    link = ipr.get_links(idx)[0]
    return (link.get("address") or link.get_attr("IFLA_ADDRESS"), int(link.get("mtu") or
            link.get_attr("IFLA_MTU")), bool(link["flags"] & 1))


class NetlinkWiring:
    """pyroute2-backed Wiring. ``host_netns``: optional netns path for the host side."""

    def __init__(self, host_netns: str | None = None) -> None:
        self.host_netns = host_netns

    @contextmanager
    def _ipr(self, what: str) -> Iterator[IPRoute]:
        try:
            with IPRoute() as ipr:
                yield ipr
        except CNIError:
            raise
        except (NetlinkError, OSError) as e:
            raise _wrap(what, e) from e

    def _host(self, fn: Callable[[], T]) -> T:
        if self.host_netns is None:
            return fn()
        return run_in_netns(self.host_netns, fn)

    # -- ADD --------------------------------------------------------------------------------

    def create_veth_in_netns(self, host_ifname: str, netns: str, pod_ifname: str,
                             mtu: int) -> None:
        def work() -> None:
            fd = _open_netns(netns)
            try:
                with self._ipr(f"create veth {host_ifname}") as ipr:
                    try:
                        ipr.link("add", ifname=host_ifname, kind="veth", mtu=mtu,
                                 peer={"ifname": pod_ifname, "net_ns_fd": fd, "mtu": mtu})
                    except NetlinkError as e:
                        if e.code == errno.EEXIST:
                            if _index(ipr, host_ifname) is not None:
                                raise InterfaceExists(host_ifname, "the host namespace") from e
                            raise InterfaceExists(pod_ifname, netns) from e
                        raise
            finally:
                os.close(fd)
        self._host(work)

    def configure_pod_side(self, netns: str, pod_ifname: str, ip: IPv4Address, mtu: int) -> str:
        def work() -> str:
            with self._ipr(f"configure {pod_ifname} in {netns}") as ipr:
                lo = _index(ipr, "lo")
                if lo is not None:
                    ipr.link("set", index=lo, state="up")
                idx = _index(ipr, pod_ifname)
                if idx is None:
                    raise WiringError(f"interface {pod_ifname} not found in {netns}")
                try:
                    ipr.addr("add", index=idx, address=str(ip), prefixlen=32)
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise
                ipr.link("set", index=idx, mtu=mtu, state="up")  # one RTM_NEWLINK for both
                ipr.route("replace", dst=f"{GATEWAY}/32", oif=idx, scope=SCOPE_LINK)
                ipr.route("replace", dst="0.0.0.0/0", gateway=str(GATEWAY), oif=idx)
                return _link_info(ipr, idx)[0]
        return run_in_netns(netns, work)

    def configure_host_side(self, host_ifname: str) -> str:
        def work() -> str:
            with self._ipr(f"configure host veth {host_ifname}") as ipr:
                idx = _index(ipr, host_ifname)
                if idx is None:
                    raise WiringError(f"host interface {host_ifname} not found")
                try:
                    _write_sysctl("conf", host_ifname, "proxy_arp", "1")
                    _write_sysctl("neigh", host_ifname, "proxy_delay", "0")
                    _write_sysctl("conf", host_ifname, "forwarding", "1")
                except OSError as e:
                    raise _wrap(f"sysctl on {host_ifname}", e) from e
                ipr.link("set", index=idx, state="up")
                return _link_info(ipr, idx)[0]
        return self._host(work)

    def add_host_route(self, ip: IPv4Address, host_ifname: str, proto: int) -> None:
        def work() -> None:
            with self._ipr(f"add route {ip}/32 dev {host_ifname}") as ipr:
                idx = _index(ipr, host_ifname)
                if idx is None:
                    raise WiringError(f"cannot add route {ip}/32: host interface "
                                      f"{host_ifname} not found")
                ipr.route("replace", dst=f"{ip}/32", oif=idx, scope=SCOPE_LINK, proto=proto,
                          table=MAIN_TABLE)
        self._host(work)

    # -- DEL --------------------------------------------------------------------------------

    def delete_host_route(self, ip: IPv4Address, host_ifname: str, proto: int) -> bool:
        def work() -> bool:
            with self._ipr(f"delete route {ip}/32 dev {host_ifname}") as ipr:
                idx = _index(ipr, host_ifname)
                if idx is None:
                    return False  # the kernel removed it with the device
                try:
                    ipr.route("del", dst=f"{ip}/32", oif=idx, scope=SCOPE_LINK, proto=proto,
                              table=MAIN_TABLE)
                except NetlinkError as e:
                    if e.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                        return False
                    raise
                return True
        return self._host(work)

    def delete_host_veth(self, host_ifname: str) -> bool:
        return self._host(lambda: _delete_link(self, f"delete host veth {host_ifname}", host_ifname))

    def delete_pod_iface(self, netns: str, pod_ifname: str) -> bool:
        try:
            return run_in_netns(netns, lambda: _delete_link(self, f"delete {pod_ifname} in {netns}", pod_ifname))
        except NetnsNotFound:
            return False

    # -- CHECK ------------------------------------------------------------------------------

    def host_veth(self, host_ifname: str) -> HostVethState | None:
        def work() -> HostVethState | None:
            with self._ipr(f"read host veth {host_ifname}") as ipr:
                idx = _index(ipr, host_ifname)
                if idx is None:
                    return None
                mac, mtu, up = _link_info(ipr, idx)
            try:
                return HostVethState(host_ifname, mac, mtu, up,
                                     _read_sysctl("conf", host_ifname, "proxy_arp"),
                                     _read_sysctl("conf", host_ifname, "forwarding"))
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as e:
                raise _wrap(f"read sysctls of {host_ifname}", e) from e
        return self._host(work)

    def host_route_exists(self, ip: IPv4Address, host_ifname: str, proto: int) -> bool:
        def work() -> bool:
            with self._ipr(f"read routes of {host_ifname}") as ipr:
                idx = _index(ipr, host_ifname)
                if idx is None:
                    return False
                for r in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
                    if (r.get_attr("RTA_DST") == str(ip) and r["dst_len"] == 32
                            and r.get_attr("RTA_OIF") == idx and r["proto"] == proto
                            and r["scope"] == SCOPE_LINK):
                        return True
                return False
        return self._host(work)

    def pod_iface(self, netns: str, pod_ifname: str) -> PodIfaceState | None:
        def work() -> PodIfaceState | None:
            with self._ipr(f"read {pod_ifname} in {netns}") as ipr:
                idx = _index(ipr, pod_ifname)
                if idx is None:
                    return None
                mac, mtu, up = _link_info(ipr, idx)
                addrs = tuple(IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                              for a in ipr.get_addr(family=socket.AF_INET, index=idx))
                gw_route = False
                default_via = None
                for r in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
                    if r.get_attr("RTA_OIF") != idx:
                        continue
                    if (r["dst_len"] == 32 and r.get_attr("RTA_DST") == str(GATEWAY)
                            and r["scope"] == SCOPE_LINK):
                        gw_route = True
                    if r["dst_len"] == 0 and r.get_attr("RTA_GATEWAY"):
                        default_via = IPv4Address(r.get_attr("RTA_GATEWAY"))
                return PodIfaceState(pod_ifname, mac, mtu, up, addrs, gw_route, default_via)
        return run_in_netns(netns, work)


def _delete_link(wiring: "NetlinkWiring", what: str, ifname: str) -> bool:
    """Delete ``ifname`` in the calling thread's namespace; False if it was already gone."""
    with wiring._ipr(what) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return False
            raise
        return True
