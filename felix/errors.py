"""felix's exception hierarchy: lower-level errors (OSError, netlink NLMSG_ERROR) are mapped here.

FelixError
 ├── DataplaneError(errno, message)  a netlink/kernel operation failed as a whole (dump, socket)
 ├── InvalidRoute(field, message)    a Route was built with inconsistent fields (a ValueError too)
 └── RouteConflict(dst, message)     a route of another protocol occupies our destination
"""
from __future__ import annotations

import errno as _errno
import os


class FelixError(Exception):
    """Base class of every error raised by felix."""


class DataplaneError(FelixError):
    """A dataplane call failed as a whole.

    ``errno`` is the positive kernel errno (rtnetlink(7) NLMSG_ERROR code negated, or OSError.errno);
    ``message`` is human-readable (kernel extack text when it sent one).
    """

    def __init__(self, errno: int, message: str = "") -> None:
        self.errno = int(errno)
        self.message = message or os.strerror(self.errno)
        name = _errno.errorcode.get(self.errno, str(self.errno))
        super().__init__(f"[{name}] {self.message}")


class InvalidRoute(FelixError, ValueError):
    """A Route's fields are inconsistent. ``field`` names the offending dataclass field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class RouteConflict(FelixError):
    """A non-ours route (another protocol, e.g. proto kernel or BIRD's 12) holds ``dst``; felix leaves it alone."""

    def __init__(self, dst: object, message: str = "") -> None:
        self.dst = dst
        super().__init__(message or f"{dst}: a route of another protocol exists; not touching it")
