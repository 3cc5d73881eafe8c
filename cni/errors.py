"""CNI error codes and the exception hierarchy of the ``cni`` package.

Source: CNI spec 1.0.0, section "Error" and its table "Well-known Error Codes"
(codes 50/51 come from CNI spec 1.1 "STATUS: Check plugin status", named as libcni's
``types.ErrPluginNotAvailable``/``ErrLimitedConnectivity``). Codes 1-99 are reserved by the
spec; 100+ are plugin-specific. ``999`` is what the reference plugins' skel
(``types.ErrInternal``) uses for "other", and what we use for any failure that
has no better well-known code.

Every exception raised across the ``cni`` seams is a :class:`CNIError`; the
server turns it into the wire error ``{"ok": false, "code", "msg", "details"}``
and the shim into the spec's error JSON ``{"cniVersion", "code", "msg",
"details"}`` with exit status 1.
"""
from __future__ import annotations

INCOMPATIBLE_CNI_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT_VARIABLES = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50  # CNI 1.1: cannot service ADD requests
LIMITED_CONNECTIVITY = 51  # CNI 1.1: not available, and existing containers may be affected
INTERNAL = 999  # "other": the reference plugins' skel uses 999 as well

CODE_NAMES = {
    INCOMPATIBLE_CNI_VERSION: "incompatible CNI version",
    UNSUPPORTED_FIELD: "unsupported field in network configuration",
    UNKNOWN_CONTAINER: "container unknown or does not exist",
    INVALID_ENVIRONMENT_VARIABLES: "invalid necessary environment variables",
    IO_FAILURE: "I/O failure",
    DECODING_FAILURE: "failed to decode content",
    INVALID_NETWORK_CONFIG: "invalid network config",
    TRY_AGAIN_LATER: "try again later",
    PLUGIN_NOT_AVAILABLE: "plugin not available",
    LIMITED_CONNECTIVITY: "plugin not available, limited connectivity",
    INTERNAL: "other",
}


class CNIError(Exception):
    """A failure with a CNI error code.

    ``code``: int (see module constants), ``msg``: short human text,
    ``details``: longer text (may be empty). Mirrors the spec's error object.
    """

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_wire(self) -> dict:
        """The agent->shim error form: ``{"ok": false, "code", "msg", "details"}``."""
        return {"ok": False, "code": self.code, "msg": self.msg, "details": self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, msg={self.msg!r}, details={self.details!r})"


class InvalidConfig(CNIError):
    """Network configuration rejected (code 7)."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(INVALID_NETWORK_CONFIG, msg, details)


class IPAMError(CNIError):
    """IPAM state could not be read or written (code 5, I/O failure)."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(IO_FAILURE, msg, details)


class IPAMExhausted(CNIError):
    """No free address left in the node's block(s).

    Code 11 (try again later): the condition clears by itself when pods on the
    node terminate, and the runtime retries sandbox creation with backoff.
    """

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(TRY_AGAIN_LATER, msg, details)


class WiringError(CNIError):
    """A dataplane (netlink, sysctl) operation failed; code 999 unless transient (11)."""

    def __init__(self, msg: str, details: str = "", code: int = INTERNAL) -> None:
        super().__init__(code, msg, details)


class NetnsNotFound(WiringError):
    """The pod's network namespace path does not exist (code 3, container unknown)."""

    def __init__(self, netns: str, details: str = "") -> None:
        super().__init__(f"network namespace {netns} does not exist", details, code=UNKNOWN_CONTAINER)
        self.netns = netns


class NotANetns(CNIError):
    """CNI_NETNS exists but is not a network namespace (e.g. a plain file left behind after
    its bind mount went away, or the agent's own namespace); code 4, invalid CNI_NETNS.
    ``reason`` says what it is instead."""

    def __init__(self, netns: str, reason: str, details: str = "") -> None:
        super().__init__(INVALID_ENVIRONMENT_VARIABLES,
                         f"CNI_NETNS {netns} is not a usable network namespace: {reason}", details)
        self.netns = netns
        self.reason = reason


HOST_NS = "the host namespace"  # InterfaceExists.where for a name taken on the host side


class InterfaceExists(WiringError):
    """An interface name we must create is already taken (code 999). ``where``: the netns
    path, or :data:`HOST_NS`."""

    def __init__(self, ifname: str, where: str, details: str = "") -> None:
        super().__init__(f"interface {ifname} already exists in {where}", details)
        self.ifname = ifname
        self.where = where
