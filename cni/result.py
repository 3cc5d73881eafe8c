"""What ADD answers, and the workload a record describes.

:func:`build` shapes the CNI result (CNI spec 1.1 "Success" section; configs of 0.3.x/0.4.0
get the older ``ips[].version`` field); :func:`endpoint_from_attrs` rebuilds the
:class:`~cni.model.WorkloadEndpoint` from an IPAM record's attrs."""
from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any, Mapping

from .model import WorkloadEndpoint
from .wiring import GATEWAY

OLD_RESULT_FORMAT = ("0.3.0", "0.3.1", "0.4.0")  # ips[] entries carry "version": "4"


def endpoint_from_attrs(ip: IPv4Address, attrs: Mapping[str, Any]) -> WorkloadEndpoint | None:
    """The endpoint an IPAM record describes, or None if its attrs lack the attachment's keys."""
    try:
        return WorkloadEndpoint(container_id=attrs["container_id"], ifname=attrs["ifname"],
                                host_ifname=attrs["host_ifname"], ip=ip,
                                netns=attrs.get("netns", ""),
                                pod_namespace=attrs.get("pod_namespace"),
                                pod_name=attrs.get("pod_name"))
    except KeyError:
        return None


def build(version: str, host_ifname: str, host_mac: str, ifname: str, pod_mac: str,
            netns: str, ip: IPv4Address) -> dict[str, Any]:
    ipc: dict[str, Any] = {"address": f"{ip}/32", "gateway": str(GATEWAY), "interface": 1}
    if version in OLD_RESULT_FORMAT:
        ipc["version"] = "4"
    return {
        "cniVersion": version,
        "interfaces": [{"name": host_ifname, "mac": host_mac},
                       {"name": ifname, "mac": pod_mac, "sandbox": netns}],
        "ips": [ipc],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }
