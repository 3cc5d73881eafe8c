"""pyroute2 adapter for :class:`~ipip.dataplane.IPIPDataplane` (the only pyroute2 user in ipip/).

``NetlinkDataplane(netns=None)`` acts on the caller's namespace; ``netns="name"`` on
``/var/run/netns/name``, which must exist (opened with ``flags=0`` so pyroute2 does
not create it). Every NetlinkError/OSError is mapped to :mod:`ipip.errors`.
The socket is opened lazily and must be used from one thread at a time.
"""
from __future__ import annotations

import errno as _errno
import shutil
import subprocess
from ipaddress import IPv4Address, IPv4Interface

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .dataplane import FDBEntry, LinkInfo, NeighEntry, VXLANParams, normalize_mac
from .devices import TUNL0
from .errors import DataplaneError, InterfaceNotFound, IPIPUnavailable

AF_INET = 2
IFF_UP = 0x1
NUD_PERMANENT = 0x80
NUD_NOARP = 0x40


class NetlinkDataplane:
    """Real dataplane over rtnetlink in namespace ``netns`` (None: the current one)."""

    def __init__(self, netns: str | None = None, *, modprobe: bool = True) -> None:
        self.netns = netns
        self.modprobe = modprobe
        self._ipr: IPRoute | None = None

    # -- plumbing -------------------------------------------------------------------------
    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            try:
                self._ipr = IPRoute(netns=self.netns, flags=0) if self.netns else IPRoute()
            except (NetlinkError, OSError) as e:
                raise DataplaneError(f"cannot open netlink in netns {self.netns!r}: {e}",
                                     getattr(e, "code", None) or getattr(e, "errno", None)) from e
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            finally:
                self._ipr = None

    def _call(self, what: str, fn, *args, ok: tuple[int, ...] = (), **kw):
        try:
            return fn(*args, **kw)
        except NetlinkError as e:
            if e.code in ok:
                return None
            if e.code == _errno.ENODEV:
                raise InterfaceNotFound(f"{what}: no such device") from e
            raise DataplaneError(f"{what}: {e}", e.code) from e
        except OSError as e:
            raise DataplaneError(f"{what}: {e}", e.errno) from e

    def _index(self, ifname: str) -> int:
        link = self.get_link(ifname)
        if link is None:
            raise InterfaceNotFound(f"no interface {ifname!r} in netns {self.netns or '(current)'}")
        return link.index

    # -- links ----------------------------------------------------------------------------
    def get_link(self, ifname: str) -> LinkInfo | None:
        msgs = self._call(f"get link {ifname}", self.ipr.link, "get", ifname=ifname,
                          ok=(_errno.ENODEV,))
        if not msgs:
            return None
        m = list(msgs)[0]
        kind = m.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
        vx = None
        if kind == "vxlan":
            d = m.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
            local = d.get("IFLA_VXLAN_LOCAL")
            parent = d.get("IFLA_VXLAN_LINK")
            vx = VXLANParams(vni=d.get("IFLA_VXLAN_ID"), port=d.get("IFLA_VXLAN_PORT"),
                             local=IPv4Address(local) if local else None,
                             learning=bool(d.get("IFLA_VXLAN_LEARNING")),
                             parent_ifname=self._name_of(parent) if parent else None)
        mac = m.get("IFLA_ADDRESS")
        return LinkInfo(ifname=m.get("IFLA_IFNAME"), index=m["index"], kind=kind,
                        mtu=m.get("IFLA_MTU"), up=bool(m["flags"] & IFF_UP),
                        mac=mac if mac and len(mac) == 17 else None, vxlan=vx)

    def _name_of(self, index: int) -> str | None:
        msgs = self._call(f"get link #{index}", self.ipr.link, "get", index=index,
                          ok=(_errno.ENODEV,))
        return list(msgs)[0].get("IFLA_IFNAME") if msgs else None

    def ensure_ipip_fallback(self, ifname: str = TUNL0) -> None:
        """tunl0 appears in every namespace once the ``ipip`` module is loaded (the
        kernel's fallback device); otherwise load the module, then, like Felix's
        ipip_mgr, create an ipip link of that name (which also autoloads the module)."""
        if self.get_link(ifname) is not None:
            return
        if self.modprobe and shutil.which("modprobe"):
            try:
                subprocess.run(["modprobe", "ipip"], capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if self.get_link(ifname) is not None:
                return
        try:
            self.ipr.link("add", ifname=ifname, kind="ipip")
        except NetlinkError as e:
            if e.code == _errno.EEXIST:
                return
            if e.code in (_errno.EOPNOTSUPP, _errno.ENOENT, _errno.EINVAL):
                raise IPIPUnavailable() from None
            raise DataplaneError(f"create ipip device {ifname}: {e}", e.code) from e
        except OSError as e:
            raise DataplaneError(f"create ipip device {ifname}: {e}", e.errno) from e

    def add_vxlan(self, ifname: str, params: VXLANParams, *, mtu: int | None = None,
                  mac: str | None = None) -> None:
        kw = dict(ifname=ifname, kind="vxlan", vxlan_id=params.vni, vxlan_port=params.port,
                  vxlan_learning=1 if params.learning else 0)
        if params.local is not None:
            kw["vxlan_local"] = str(params.local)
        if params.parent_ifname:
            kw["vxlan_link"] = self._index(params.parent_ifname)
        if mtu:
            kw["mtu"] = mtu
        if mac:
            kw["address"] = normalize_mac(mac)
        self._call(f"add vxlan {ifname}", self.ipr.link, "add", **kw)

    def delete_link(self, ifname: str) -> None:
        link = self.get_link(ifname)
        if link is not None:
            self._call(f"delete link {ifname}", self.ipr.link, "del", index=link.index,
                       ok=(_errno.ENODEV,))

    def set_link(self, ifname: str, *, mtu: int | None = None, up: bool | None = None,
                 mac: str | None = None) -> None:
        idx = self._index(ifname)
        kw: dict = {}
        if mtu is not None:
            kw["mtu"] = mtu
        if mac is not None:
            kw["address"] = normalize_mac(mac)
        if up is not None:
            kw["state"] = "up" if up else "down"
        if kw:
            self._call(f"set link {ifname}", self.ipr.link, "set", index=idx, **kw)

    # -- addresses ------------------------------------------------------------------------
    def list_addresses(self, ifname: str) -> list[IPv4Interface]:
        idx = self._index(ifname)
        out = []
        for a in self._call(f"dump addresses of {ifname}", self.ipr.addr, "dump", family=AF_INET) or ():
            if a["index"] == idx:
                ip = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
                out.append(IPv4Interface(f"{ip}/{a['prefixlen']}"))
        return out

    def interface_of(self, address: IPv4Address) -> tuple[str, IPv4Interface] | None:
        """The interface holding ``address`` and the address with its prefix, or None."""
        for a in self._call(f"dump addresses for {address}", self.ipr.addr, "dump", family=AF_INET) or ():
            ip = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
            if ip == str(address):
                name = self._name_of(a["index"])
                if name:
                    return name, IPv4Interface(f"{ip}/{a['prefixlen']}")
        return None

    def add_address(self, ifname: str, address: IPv4Interface) -> None:
        self._call(f"add {address} to {ifname}", self.ipr.addr, "add", index=self._index(ifname),
                   address=str(address.ip), prefixlen=address.network.prefixlen,
                   ok=(_errno.EEXIST,))

    def del_address(self, ifname: str, address: IPv4Interface) -> None:
        self._call(f"delete {address} from {ifname}", self.ipr.addr, "del",
                   index=self._index(ifname), address=str(address.ip),
                   prefixlen=address.network.prefixlen, ok=(_errno.EADDRNOTAVAIL, _errno.ESRCH))

    # -- FDB and neighbours ----------------------------------------------------------------
    def list_fdb(self, ifname: str) -> list[FDBEntry]:
        idx = self._index(ifname)
        out = []
        for f in self._call(f"dump fdb of {ifname}", self.ipr.fdb, "dump") or ():
            dst, mac = f.get("NDA_DST"), f.get("NDA_LLADDR")
            if f["ifindex"] != idx or not dst or not mac or mac == "00:00:00:00:00:00":
                continue
            if not f["state"] & NUD_PERMANENT or ":" in dst:
                continue
            out.append(FDBEntry(mac=normalize_mac(mac), dst=IPv4Address(dst)))
        return out

    def add_fdb(self, ifname: str, entry: FDBEntry) -> None:
        self._call(f"add fdb {entry.mac} dst {entry.dst} on {ifname}", self.ipr.fdb, "append",
                   ifindex=self._index(ifname), lladdr=entry.mac, dst=str(entry.dst),
                   ok=(_errno.EEXIST,))

    def del_fdb(self, ifname: str, entry: FDBEntry) -> None:
        self._call(f"delete fdb {entry.mac} dst {entry.dst} on {ifname}", self.ipr.fdb, "del",
                   ifindex=self._index(ifname), lladdr=entry.mac, dst=str(entry.dst),
                   ok=(_errno.ENOENT,))

    def list_neighbours(self, ifname: str) -> list[NeighEntry]:
        idx = self._index(ifname)
        out = []
        for n in self._call(f"dump neighbours of {ifname}", self.ipr.neigh, "dump",
                            family=AF_INET) or ():
            if n["ifindex"] == idx and n["state"] & NUD_PERMANENT and n.get("NDA_LLADDR"):
                out.append(NeighEntry(ip=IPv4Address(n.get("NDA_DST")),
                                      mac=normalize_mac(n.get("NDA_LLADDR"))))
        return out

    def set_neighbour(self, ifname: str, entry: NeighEntry) -> None:
        self._call(f"set neighbour {entry.ip} on {ifname}", self.ipr.neigh, "replace",
                   ifindex=self._index(ifname), dst=str(entry.ip), lladdr=entry.mac,
                   state=NUD_PERMANENT)

    def del_neighbour(self, ifname: str, entry: NeighEntry) -> None:
        self._call(f"delete neighbour {entry.ip} on {ifname}", self.ipr.neigh, "del",
                   ifindex=self._index(ifname), dst=str(entry.ip), lladdr=entry.mac,
                   ok=(_errno.ENOENT,))
