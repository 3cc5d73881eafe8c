"""Data shapes shared by the CNI server, the plugin and the agent.

Wire format (one JSON line each way over the agent's unix socket; documented in
full in :mod:`cni.shim`)::

    request  {"command": "ADD"|"DEL"|"CHECK"|"STATUS"|"GC", "containerID": str, "netns": str,
              "ifName": str, "args": {str: str}, "path": str, "config": {...}}

(STATUS and GC carry no attachment: ``containerID``/``ifName``/``netns`` may be empty; GC is
about a whole network.)
    response {"ok": true, "result": {...} | null}
           | {"ok": false, "code": int, "msg": str, "details": str}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Mapping

from . import validate
from .errors import DECODING_FAILURE, INVALID_ENVIRONMENT_VARIABLES, CNIError

#: The CNI result object (CNI spec 1.0.0 "Success" section) or None for DEL/CHECK/STATUS.
CNIResult = dict[str, Any] | None

#: Commands that act on one attachment: they need a valid CNI_CONTAINERID and CNI_IFNAME.
ATTACHMENT_COMMANDS = ("ADD", "DEL", "CHECK")
COMMANDS = (*ATTACHMENT_COMMANDS, "STATUS", "GC")


@dataclass(frozen=True)
class CNIRequest:
    """One CNI invocation as forwarded by the shim.

    ``args`` holds the parsed CNI_ARGS (``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``,
    ...); ``config`` the network configuration JSON from stdin, unmodified.

    Construction validates ``container_id``, ``ifname`` and ``netns`` (:mod:`cni.validate`):
    required for :data:`ATTACHMENT_COMMANDS`, checked when present for any other command.
    Raises CNIError 4, so no invalid value exists past this point (nor reaches a log line).
    """

    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.command in ATTACHMENT_COMMANDS or self.container_id:
            validate.container_id(self.container_id)
        if self.command in ATTACHMENT_COMMANDS or self.ifname:
            validate.ifname(self.ifname)
        validate.netns_path(self.netns)

    @property
    def pod_namespace(self) -> str | None:
        return self.args.get("K8S_POD_NAMESPACE") or None

    @property
    def pod_name(self) -> str | None:
        return self.args.get("K8S_POD_NAME") or None

    @classmethod
    def from_wire(cls, obj: Any) -> "CNIRequest":
        """Build from the decoded request line. Raises CNIError 6 (shape) or 4 (missing fields)."""
        if not isinstance(obj, dict):
            raise CNIError(DECODING_FAILURE, "request is not a JSON object")
        command = obj.get("command")
        if command not in COMMANDS:
            raise CNIError(INVALID_ENVIRONMENT_VARIABLES, f"unknown CNI_COMMAND {command!r}")
        cid = obj.get("containerID") or ""
        ifname = obj.get("ifName") or ""
        netns = obj.get("netns") or ""
        for key, value in (("containerID", cid), ("ifName", ifname), ("netns", netns)):
            if not isinstance(value, str):
                raise CNIError(DECODING_FAILURE, f"{key} must be a string")
        args = obj.get("args") or {}
        config = obj.get("config")
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            raise CNIError(DECODING_FAILURE, "args must be an object of strings")
        if not isinstance(config, dict):
            raise CNIError(DECODING_FAILURE, "config must be a JSON object")
        return cls(command=command, container_id=cid, netns=netns, ifname=ifname,
                   args=dict(args), path=str(obj.get("path") or ""), config=config)

    def to_wire(self) -> dict[str, Any]:
        return {"command": self.command, "containerID": self.container_id, "netns": self.netns,
                "ifName": self.ifname, "args": dict(self.args), "path": self.path,
                "config": dict(self.config)}


@dataclass(frozen=True)
class WorkloadEndpoint:
    """A wired pod interface, as felix needs it to own ``<ip>/32 dev <host_ifname> scope link``.

    ``netns``: the CNI_NETNS path; ``pod_namespace``/``pod_name``: from CNI_ARGS, None when
    not run by Kubernetes.
    """

    container_id: str
    ifname: str
    host_ifname: str
    ip: IPv4Address
    netns: str
    pod_namespace: str | None = None
    pod_name: str | None = None
