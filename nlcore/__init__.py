"""The rtnetlink layer ``felix/`` and ``cni/`` share, and the prefix key every route table uses.

Built on :mod:`struct` and raw ``AF_NETLINK`` sockets, not pyroute2: the FIB write path and
the CNI ADD/DEL path pack their requests here (pyroute2 stays for link, address and
namespace work off those paths). Imports nothing of podroute; felix, cni and bgp import it
and still not each other.

- :mod:`nlcore.wire`: netlink/rtnetlink constants, the precompiled structs, TLV packing and
  walking, :class:`~nlcore.wire.CodecError`.
- :mod:`nlcore.route`: RTM_NEWROUTE / RTM_DELROUTE / RTM_GETROUTE requests as iproute2 sends
  them, and :data:`~nlcore.route.PODROUTE_PROTO`, the rtm_protocol of podroute's routes.
- :mod:`nlcore.ack`: NLMSG_ERROR decoding with the extended-ACK text, with or without
  NETLINK_CAP_ACK.
- :mod:`nlcore.netns`: run a function (open a socket) in another network namespace from a
  helper thread.
- :mod:`nlcore.prefixkey`: ``1 << length | network >> (32 - length)``, the int key of a prefix.
- :mod:`nlcore.fast`: the hot-path helpers (slot setters of frozen dataclasses, CPython's
  ipaddress internals), each with the measurement that justifies it; the only module that
  steps around a public Python API.
"""
