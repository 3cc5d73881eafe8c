"""Exceptions of the ipip component: every lower-level error (NetlinkError, OSError) is mapped here."""
from __future__ import annotations


class IPIPError(Exception):
    """Base class of every error raised by ``ipip/``."""


class EncapConfigError(IPIPError, ValueError):
    """An IP pool's encapsulation settings are invalid (e.g. IPIP and VXLAN both enabled)."""


class IPIPUnavailable(IPIPError):
    """The running kernel cannot provide an IPIP device (no ``ipip`` module)."""

    MESSAGE = ("this kernel has no IPIP support (module ipip not available); "
               "use VXLAN encapsulation")

    def __init__(self, message: str = MESSAGE) -> None:
        super().__init__(message)


class InterfaceNotFound(IPIPError, LookupError):
    """A named network interface does not exist (in the namespace asked about)."""


class DataplaneError(IPIPError):
    """A netlink operation failed; ``errno`` is the kernel's error number when known."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
