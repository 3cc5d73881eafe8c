"""Import policy for learned routes (the Calico behaviour mirrored: only pool routes from
other nodes are programmed).

A route is accepted only if all hold, checked in this order (the first failing check is
the reason counted):

- ``originator_loop``: its ORIGINATOR_ID is not our router ID (RFC 4456 §8);
- ``cluster_loop``: its CLUSTER_LIST does not hold our cluster ID (RFC 4456 §8; only when
  we are a route reflector);
- ``default``: not 0.0.0.0/0, unless ``accept_default`` (the default route then skips the
  pool and own-address checks: it covers everything by definition);
- ``outside_pool``: inside one of ``import_pools`` or ``import_extra``;
- ``own_block``: does not overlap any of the node's ``own_blocks`` (we originate those);
- ``own_node_ip``: does not contain the node's own IP (a route for it would capture our own
  traffic);
- ``own_next_hop``: next hop is not the node's own IP (our route reflected back);
- ``wrong_next_hop``: when the peer enforces it (``PeerConfig.enforce_next_hop``, default on
  for iBGP only: an eBGP ToR legitimately sets itself as next hop) and the prefix lies inside
  (or equals) a block with a known owner in ``expected_next_hops``, the next hop is that
  owner's IP.

``max_prefixes`` is per-peer state and lives in bgp/adj_rib_in.py (reason ``max_prefixes``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Iterable, Mapping

from nlcore.fast import net_len as _net_len

from .model import PathAttrs

_MASKS = tuple((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33))
REASONS = ("originator_loop", "cluster_loop", "default", "outside_pool", "own_block",
           "own_node_ip", "own_next_hop", "wrong_next_hop", "max_prefixes")


@dataclass(frozen=True)
class ImportPolicy:
    """Stateless import checks (see module doc). ``expected_next_hops`` maps node block →
    that node's IP; ``router_id``/``cluster_id`` enable the RFC 4456 loop checks."""

    import_pools: tuple[IPv4Network, ...]
    own_blocks: tuple[IPv4Network, ...]
    node_ip: IPv4Address
    import_extra: tuple[IPv4Network, ...] = ()
    accept_default: bool = False
    expected_next_hops: Mapping[IPv4Network, IPv4Address] = field(default_factory=dict)
    router_id: IPv4Address | None = None
    cluster_id: IPv4Address | None = None
    # Integer forms of the ranges above, built once: check() runs per received route, and
    # IPv4Network.subnet_of/overlaps cost ~1 µs each in Python.
    _ranges: tuple = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        def ints(nets: Iterable[IPv4Network]) -> tuple[tuple[int, int, int], ...]:
            return tuple((int(n.network_address), int(n.netmask), n.prefixlen) for n in nets)
        # expected next hops grouped by block length: {len: {network int: owner}}, so a
        # prefix finds its covering blocks with one dict probe per distinct length.
        owners: dict[int, dict[int, IPv4Address]] = {}
        for block, owner in self.expected_next_hops.items():
            owners.setdefault(block.prefixlen, {})[int(block.network_address)] = owner
        object.__setattr__(self, "_ranges", (ints(self.import_pools + self.import_extra),
                                             ints(self.own_blocks), int(self.node_ip),
                                             tuple(sorted(owners.items()))))

    def check(self, prefix: IPv4Network, next_hop: IPv4Address, attrs: PathAttrs | None = None,
              *, enforce_next_hop: bool = False) -> str | None:
        """None when accepted, else the rejection reason (one of REASONS)."""
        if attrs is not None:
            if (self.router_id is not None and attrs.originator_id is not None
                    and attrs.originator_id == self.router_id):
                return "originator_loop"
            if self.cluster_id is not None and self.cluster_id in attrs.cluster_list:
                return "cluster_loop"
        net, plen = _net_len(prefix)  # nlcore.fast
        if plen == 0:
            if not self.accept_default:
                return "default"
            return "own_next_hop" if next_hop == self.node_ip else None
        pools, own, node_ip, owners = self._ranges
        for pnet, mask, pl in pools:
            if plen >= pl and net & mask == pnet:
                break
        else:
            return "outside_pool"
        pmask = _MASKS[plen]
        for onet, omask, opl in own:  # overlap: the shorter of the two masks matches both
            if (net & omask == onet) if plen >= opl else (onet & pmask == net):
                return "own_block"
        if node_ip & pmask == net:
            return "own_node_ip"
        if next_hop == self.node_ip:
            return "own_next_hop"
        if enforce_next_hop and owners:
            for blen, by_net in owners:
                if blen > plen:
                    break
                owner = by_net.get(net & _MASKS[blen])
                if owner is not None and next_hop != owner:
                    return "wrong_next_hop"
        return None

