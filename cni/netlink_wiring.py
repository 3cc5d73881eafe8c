"""The real :class:`cni.wiring.Wiring`: rtnetlink + /proc/sys writes.

The only module of ``cni`` that speaks netlink. ADD and DEL (the path a pod waits on) use
:mod:`cni.rtnl`, our own request packer (an ADD is ~10 requests in 5 ``sendmsg`` calls, about
1 ms of kernel time); CHECK's table reads use pyroute2, the only pyroute2 import of ``cni``.
Pod-namespace sockets are opened by a short-lived thread that ``setns(2)``s into the
CNI_NETNS path (a netlink socket stays in the netns it was created in; ``IPRoute(netns=...)``
forks a helper and would *create* a missing namespace). A missing netns path is
:class:`~cni.errors.NetnsNotFound`, never created. An existing path that is not a network
namespace (:mod:`cni.netnsfile`) is :class:`~cni.errors.NotANetns` (code 4), and so is
the agent's own namespace given as a pod's. DEL treats the first like a namespace that is
gone and refuses the second (it would delete the node's own CNI_IFNAME).

DEL retires the host veth (down, moved to link group :data:`RETIRED_GROUP`) instead of
deleting it: unregistering a netdev waits for RCU grace periods with the RTNL held (~20 ms
here, the bulk of a DEL). :meth:`NetlinkWiring.reap_retired` later deletes the whole group in
one ``RTM_DELLINK`` (``ip link del group``), one unregister batch for any number of pods.

"Host" is the namespace of the calling thread (the agent's), or ``host_netns`` (a netns
path) when given, which tests use to run the host side inside a throwaway namespace.
NetlinkError/OSError are mapped to :mod:`cni.errors` here: EEXIST -> InterfaceExists,
EBUSY/EAGAIN/ENOBUFS -> WiringError code 11 (try again later), others -> code 999.

Why one file of ~420 lines: one class implements :class:`cni.wiring.Wiring` operation by
operation, and its helpers (namespace entry, sysctls, the errno mapping above) serve all of
the operations.
"""
from __future__ import annotations

import errno
import os
import socket
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Interface
from typing import Callable, Iterator, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nlcore.netns import SetnsError, call_in_netns
from nlcore.wire import RT_SCOPE_LINK as SCOPE_LINK, RT_TABLE_MAIN as MAIN_TABLE

from . import rtnl
from .errors import (HOST_NS, TRY_AGAIN_LATER, CNIError, InterfaceExists, NetnsNotFound,
                     NotANetns, WiringError)
from .netnsfile import IS_HOST as _IS_HOST, check_netns_fd as _check_netns_fd
from .netnsfile import same_file as _same_file
from .rtnl import Rtnl, RtnlError
from .wiring import GATEWAY, HostVethState, PodIfaceState

T = TypeVar("T")
RETIRED_GROUP = 0x70727464  # IFLA_GROUP of retired host veths ("prtd"); never 0 (default group)
_TRANSIENT = {errno.EBUSY, errno.EAGAIN, errno.ENOBUFS, errno.EINTR}


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
    """An O_RDONLY descriptor of the network namespace at ``path``. Raises NetnsNotFound,
    NotANetns (exists but is no network namespace) or WiringError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NetnsNotFound(path, str(e)) from e
    except OSError as e:
        raise _wrap(f"open network namespace {path}", e) from e
    try:
        _check_netns_fd(path, fd)
    except BaseException as e:
        os.close(fd)
        if isinstance(e, OSError):
            raise _wrap(f"statfs network namespace {path}", e) from e
        raise
    return fd


def run_in_netns(path: str, fn: Callable[[], T], not_host: str | None = None) -> T:
    """Run ``fn`` in a fresh thread switched into the netns at ``path``; return its result
    or re-raise its exception. Raises NetnsNotFound / NotANetns / WiringError if setns fails;
    NotANetns also if ``not_host`` (a netns path) names the same namespace as ``path``."""
    fd = _open_netns(path)
    try:
        if not_host is not None and _same_file(fd, not_host):
            raise NotANetns(path, _IS_HOST)
    except BaseException:
        os.close(fd)
        raise
    try:
        return call_in_netns(fd, fn, name="cni-netns")
    except SetnsError as e:
        raise WiringError(f"setns into {path}: {os.strerror(e.errno)}") from e
    finally:
        os.close(fd)


def _sysctl_path(kind: str, ifname: str, key: str) -> str:
    return f"/proc/sys/net/ipv4/{kind}/{ifname}/{key}"


def _write_sysctl(kind: str, ifname: str, key: str, value: str) -> None:
    with open(_sysctl_path(kind, ifname, key), "w") as f:
        f.write(value)


def _read_sysctl(kind: str, ifname: str, key: str) -> int:
    with open(_sysctl_path(kind, ifname, key)) as f:
        return int(f.read().strip())


def _index(ifname: str) -> int | None:
    """Index of ``ifname`` in the calling thread's netns.

    SIOCGIFINDEX via ``socket.if_nametoindex`` (~20 µs; pyroute2's ``link_lookup`` dumps and
    parses every link, ~1.5 ms). The ioctl socket is created in the calling thread's
    namespace, so callers that opened a netlink socket in this thread see the same links."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


def _link_info(ipr: IPRoute, idx: int) -> tuple[str, int, bool]:
    link = ipr.get_links(idx)[0]
    return (link.get("address") or link.get_attr("IFLA_ADDRESS"), int(link.get("mtu") or
            link.get_attr("IFLA_MTU")), bool(link["flags"] & 1))


def _check(results: list, what: str, ok: frozenset[int] = frozenset()) -> None:
    """Raise the first refused request of a transaction (errnos in ``ok`` are tolerated)."""
    for r in results:
        if isinstance(r, RtnlError) and r.errno not in ok:
            raise _wrap(what, r) from r


class NetlinkWiring:
    """rtnetlink-backed Wiring. ``host_netns``: optional netns path for the host side (tests
    run the host side in a throwaway namespace); ``retired_group``: IFLA_GROUP for retired
    host veths (non-zero, used by nothing else on the node)."""

    def __init__(self, host_netns: str | None = None, retired_group: int = RETIRED_GROUP) -> None:
        if not 0 < retired_group < 1 << 32:
            raise ValueError(f"retired_group {retired_group} must be in 1..2**32-1")
        self.host_netns = host_netns
        self.retired_group = retired_group

    @contextmanager
    def _ipr(self, what: str) -> Iterator[IPRoute]:
        try:
            with IPRoute() as ipr:
                yield ipr
        except CNIError:
            raise
        except (NetlinkError, OSError) as e:
            raise _wrap(what, e) from e

    @contextmanager
    def _nl(self, what: str, netns: str | None = None) -> Iterator[Rtnl]:
        """An Rtnl in the calling thread's netns, or in ``netns`` (opened by a helper thread)."""
        try:
            sock = Rtnl() if netns is None else run_in_netns(netns, Rtnl)
        except CNIError:
            raise
        except OSError as e:
            raise _wrap(what, e) from e
        try:
            with sock:
                yield sock
        except CNIError:
            raise
        except OSError as e:
            raise _wrap(what, e) from e

    @property
    def _host_ns_path(self) -> str:
        """The host namespace as a path any thread of ours can stat (worker threads never
        setns: :func:`run_in_netns` uses fresh threads)."""
        return self.host_netns or "/proc/self/ns/net"

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
                # the pod end's routes (a default route) would land in the host namespace
                if _same_file(fd, self._host_ns_path):
                    raise NotANetns(netns, _IS_HOST)
                with self._nl(f"create veth {host_ifname}") as nl:
                    try:
                        nl.call(rtnl.veth_new(nl.next_seq(), host_ifname, pod_ifname, fd, mtu))
                    except RtnlError as e:
                        if e.errno == errno.EEXIST:
                            if nl.link(host_ifname) is not None:
                                raise InterfaceExists(host_ifname, HOST_NS) from e
                            raise InterfaceExists(pod_ifname, netns) from e
                        raise
            finally:
                os.close(fd)
        self._host(work)

    def configure_pod_side(self, netns: str, pod_ifname: str, ip: IPv4Address, mtu: int) -> str:
        what = f"configure {pod_ifname} in {netns}"
        with self._nl(what, netns) as nl:
            link = nl.link(pod_ifname)
            if link is None:
                raise WiringError(f"interface {pod_ifname} not found in {netns}")
            seq, idx = nl.next_seq, link.index
            results = nl.transact([
                rtnl.link_set(seq(), 1, up=True),  # lo is always ifindex 1 in a netns
                rtnl.addr_add(seq(), idx, ip, 32),
                rtnl.link_set(seq(), idx, up=True, mtu=mtu),
                # metric = ifindex: each attachment of the netns (eth0, Multus' net1) keeps
                # its own two routes; "replace" at metric 0 would take the other's
                rtnl.route(seq(), "replace", GATEWAY, 32, idx, scope=SCOPE_LINK, proto=4,
                           metric=idx),
                rtnl.route(seq(), "replace", IPv4Address(0), 0, idx, gateway=GATEWAY, proto=4,
                           metric=idx),
            ])
            _check(results, what, frozenset({errno.EEXIST}))
            return link.mac

    def configure_host_side(self, host_ifname: str) -> str:
        what = f"configure host veth {host_ifname}"

        def work() -> str:
            with self._nl(what) as nl:
                link = nl.link(host_ifname)
                if link is None:
                    raise WiringError(f"host interface {host_ifname} not found")
                try:
                    _write_sysctl("conf", host_ifname, "proxy_arp", "1")
                    _write_sysctl("neigh", host_ifname, "proxy_delay", "0")
                    _write_sysctl("conf", host_ifname, "forwarding", "1")
                except OSError as e:
                    raise _wrap(f"sysctl on {host_ifname}", e) from e
                nl.call(rtnl.link_set(nl.next_seq(), link.index, up=True))
                return link.mac
        return self._host(work)

    def add_host_route(self, ip: IPv4Address, host_ifname: str, proto: int) -> None:
        what = f"add route {ip}/32 dev {host_ifname}"

        def work() -> None:
            idx = _index(host_ifname)
            if idx is None:
                raise WiringError(f"cannot add route {ip}/32: host interface "
                                  f"{host_ifname} not found")
            with self._nl(what) as nl:
                nl.call(rtnl.route(nl.next_seq(), "replace", ip, 32, idx, scope=SCOPE_LINK,
                                   proto=proto, table=MAIN_TABLE))
        self._host(work)

    # -- DEL --------------------------------------------------------------------------------

    def delete_host_route(self, ip: IPv4Address, host_ifname: str, proto: int) -> bool:
        def work() -> bool:
            idx = _index(host_ifname)
            if idx is None:
                return False  # the kernel removed it with the device
            with self._nl(f"delete route {ip}/32 dev {host_ifname}") as nl:
                try:
                    nl.call(rtnl.route(nl.next_seq(), "delete", ip, 32, idx, scope=SCOPE_LINK,
                                       proto=proto, table=MAIN_TABLE))
                except RtnlError as e:
                    if e.errno in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                        return False
                    raise
                return True
        return self._host(work)

    def delete_host_veth(self, host_ifname: str) -> bool:
        return self._host(lambda: self._delete_link(f"delete host veth {host_ifname}", host_ifname))

    def delete_pod_iface(self, netns: str, pod_ifname: str) -> bool:
        what = f"delete {pod_ifname} in {netns}"
        try:
            # never the host's namespace: CNI_IFNAME there may be the node's own uplink
            return run_in_netns(netns, lambda: self._delete_link(what, pod_ifname),
                                not_host=self._host_ns_path)
        except NetnsNotFound:
            return False
        except NotANetns as e:
            if e.reason == _IS_HOST:
                raise
            return False  # a file left after its bind mount vanished: the namespace is gone

    def retire_host_veth(self, host_ifname: str) -> bool:
        def work() -> bool:
            idx = _index(host_ifname)
            if idx is None:
                return False
            with self._nl(f"retire host veth {host_ifname}") as nl:
                try:
                    nl.call(rtnl.link_set(nl.next_seq(), idx, up=False, group=self.retired_group))
                except RtnlError as e:
                    if e.errno == errno.ENODEV:
                        return False
                    raise
                return True
        return self._host(work)

    def reap_retired(self) -> bool:
        def work() -> bool:
            with self._nl(f"delete link group {self.retired_group}") as nl:
                try:
                    nl.call(rtnl.group_del(nl.next_seq(), self.retired_group))
                except RtnlError as e:
                    if e.errno == errno.ENODEV:  # no link in the group
                        return False
                    raise
                return True
        return self._host(work)

    def _delete_link(self, what: str, ifname: str) -> bool:
        """Delete ``ifname`` in the calling thread's namespace; False if it was already gone."""
        with self._nl(what) as nl:
            link = nl.link(ifname)
            if link is None:
                return False
            try:
                nl.call(rtnl.link_del(nl.next_seq(), link.index))
            except RtnlError as e:
                if e.errno == errno.ENODEV:
                    return False
                raise
            return True

    # -- CHECK ------------------------------------------------------------------------------

    def host_veth(self, host_ifname: str) -> HostVethState | None:
        def work() -> HostVethState | None:
            with self._nl(f"read host veth {host_ifname}") as nl:
                link = nl.link(host_ifname)
            if link is None:
                return None
            try:
                return HostVethState(host_ifname, link.mac, link.mtu, link.up,
                                     _read_sysctl("conf", host_ifname, "proxy_arp"),
                                     _read_sysctl("conf", host_ifname, "forwarding"),
                                     link.group == self.retired_group)
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as e:
                raise _wrap(f"read sysctls of {host_ifname}", e) from e
        return self._host(work)

    def host_route_exists(self, ip: IPv4Address, host_ifname: str, proto: int) -> bool:
        # A kernel-filtered dump of the routes through that veth: CHECK, a repeated ADD and the
        # restart reconciler ask this per pod, and the main table may hold 100k BGP routes.
        def work() -> bool:
            idx = _index(host_ifname)
            if idx is None:
                return False
            with self._nl(f"read routes of {host_ifname}") as nl:
                return any(r.dst == IPv4Address(ip) and r.dst_len == 32 and r.scope == SCOPE_LINK
                           for r in nl.routes(oif=idx, protocol=proto, table=MAIN_TABLE))
        return self._host(work)

    def list_host_veths(self, prefix: str) -> dict[str, bool]:
        def work() -> dict[str, bool]:
            out: dict[str, bool] = {}
            with self._ipr("list host veths") as ipr:
                for link in ipr.get_links():
                    name = link.get_attr("IFLA_IFNAME") or ""
                    info = link.get_attr("IFLA_LINKINFO")
                    if not name.startswith(prefix) or info is None \
                            or info.get_attr("IFLA_INFO_KIND") != "veth":
                        continue
                    out[name] = link.get_attr("IFLA_GROUP") == self.retired_group
            return out
        return self._host(work)

    def pod_iface(self, netns: str, pod_ifname: str) -> PodIfaceState | None:
        def work() -> PodIfaceState | None:
            with self._ipr(f"read {pod_ifname} in {netns}") as ipr:
                idx = _index(pod_ifname)
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

