"""The names of podroute's tunnel devices, the one place they are spelled.

``tunl0`` is the kernel's IPIP fallback device (created in every namespace when the ``ipip``
module loads; RFC 2003 encapsulation for ``<block> via <node ip> dev tunl0 onlink``).
``vxlan.podroute`` is our VXLAN device (Calico's is ``vxlan.calico``; RFC 7348). Both names
fit IFNAMSIZ-1 = 15 characters.
"""
from __future__ import annotations

TUNL0 = "tunl0"
VXLAN_IFNAME = "vxlan.podroute"
