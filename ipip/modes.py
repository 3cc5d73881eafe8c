"""Encapsulation modes of an IP pool and the per-route decision they imply.

Mirrors Calico's ``IPPool`` ``spec.ipipMode`` / ``spec.vxlanMode`` (projectcalico.org/v3):
each is ``Always``, ``CrossSubnet`` or ``Never``; a pool may enable at most one of
them (Calico's validator rejects a pool with both set). With ``CrossSubnet``, traffic
to a node on the same underlay subnet is sent natively and only traffic crossing a
subnet boundary is encapsulated (IPIP: RFC 2003; VXLAN: RFC 7348).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from typing import Sequence

from .errors import EncapConfigError


class EncapMode(str, Enum):
    """Calico's ``ipipMode`` / ``vxlanMode`` values (the strings are Calico's spelling)."""

    ALWAYS = "Always"
    CROSS_SUBNET = "CrossSubnet"
    NEVER = "Never"


class Encapsulation(str, Enum):
    """How one route's packets leave the node: natively, in IPIP (tunl0) or in VXLAN."""

    NONE = "none"
    IPIP = "ipip"
    VXLAN = "vxlan"


@dataclass(frozen=True)
class PoolEncap:
    """An IP pool and its encapsulation settings.

    ``cidr``: the pool (e.g. 198.19.0.0/16). Raises :class:`~ipip.errors.EncapConfigError`
    naming the pool if both ``ipip`` and ``vxlan`` are other than ``Never`` — Calico
    makes them mutually exclusive per pool.
    """

    cidr: IPv4Network
    ipip: EncapMode = EncapMode.NEVER
    vxlan: EncapMode = EncapMode.NEVER

    def __post_init__(self) -> None:
        # Accept the plain strings a config file holds ("Always"), store the enum.
        for name in ("ipip", "vxlan"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, EncapMode(value))
            except ValueError:
                raise EncapConfigError(
                    f"pool {self.cidr}: {name}Mode {value!r} is not one of "
                    f"{[m.value for m in EncapMode]}") from None
        if self.ipip is not EncapMode.NEVER and self.vxlan is not EncapMode.NEVER:
            raise EncapConfigError(
                f"pool {self.cidr}: ipipMode={self.ipip.value} and vxlanMode={self.vxlan.value} "
                f"are mutually exclusive; set one of them to Never")

    @property
    def encapsulation(self) -> Encapsulation:
        """The tunnel this pool uses when it encapsulates (NONE if both modes are Never)."""
        if self.ipip is not EncapMode.NEVER:
            return Encapsulation.IPIP
        if self.vxlan is not EncapMode.NEVER:
            return Encapsulation.VXLAN
        return Encapsulation.NONE

    @property
    def mode(self) -> EncapMode:
        """The active mode (of whichever tunnel is enabled), NEVER if none is."""
        return self.ipip if self.ipip is not EncapMode.NEVER else self.vxlan


def route_encap(pool: PoolEncap, *, local_subnets: Sequence[IPv4Network],
                next_hop: IPv4Address) -> Encapsulation:
    """Encapsulation for a route to a block of ``pool`` whose owner node is ``next_hop``.

    ``local_subnets``: the underlay subnets of this node's own interfaces.
    ``Always`` → the pool's tunnel; ``Never`` → NONE; ``CrossSubnet`` → NONE when
    ``next_hop`` lies inside one of ``local_subnets`` (same L2 segment, reachable
    natively), else the tunnel. This is Felix's route resolver behaviour for
    ``ipipMode``/``vxlanMode: CrossSubnet``.
    """
    tunnel = pool.encapsulation
    mode = pool.mode
    if tunnel is Encapsulation.NONE or mode is EncapMode.NEVER:
        return Encapsulation.NONE
    if mode is EncapMode.ALWAYS:
        return tunnel
    same_subnet = any(next_hop in net for net in local_subnets)
    return Encapsulation.NONE if same_subnet else tunnel
