"""Validation of the CNI request parameters the agent receives, before anything acts on them.

Rules (CNI spec 1.1 "Parameters" / "Attachment Parameters", as libcni's ``pkg/utils`` applies
them in the reference plugins' ``skel``):

* CNI_CONTAINERID: ``^[A-Za-z0-9][A-Za-z0-9_.-]*$`` (ASCII), at most
  :data:`MAX_CONTAINER_ID` characters; code 4 otherwise (libcni ``ValidateContainerID``).
  The spec sets no length limit; every runtime we know uses 64 hex digits. 255 is NAME_MAX:
  libcni caches each result in a file named ``<network>-<containerID>-<ifname>``, so a longer
  ID could not be cached by the runtime's own library; it also bounds what an ID adds to a
  log line or the IPAM state.
* CNI_IFNAME: not empty, at most 15 bytes (IFNAMSIZ - 1) of UTF-8, not ``.`` or ``..``, no
  ``/``, ``:`` or whitespace; code 4 (libcni ``ValidateInterfaceName``, after the kernel's
  ``dev_valid_name``). We also refuse control characters, which the kernel would take but
  which would garble a log line.
* network name (config ``name``): the container-ID pattern; code 7 (libcni
  ``ValidateNetworkName``).
* CNI_NETNS: when given, an absolute path without control characters; code 4. The agent
  opens it in its own process, so a path relative to the shim's working directory would
  name something else.

Messages never contain the raw value: it is shown by ``repr`` and cut to
:data:`_SHOWN` characters, so a newline or a 1 MB value cannot reach a log line whole.
:mod:`cni.shim` applies the container-ID and interface-name rules with its own stdlib-only
copy (a test checks that the two agree).
"""
from __future__ import annotations

import re

from .errors import INVALID_ENVIRONMENT_VARIABLES, CNIError, InvalidConfig

MAX_CONTAINER_ID = 255
MAX_IFNAME = 15  # bytes: IFNAMSIZ (16) minus the terminating NUL
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", re.ASCII)
_SHOWN = 40


def shown(value: str) -> str:
    """``repr(value)`` cut to about :data:`_SHOWN` characters (for error messages)."""
    text = repr(value[:_SHOWN])
    return text + f"... ({len(value)} characters)" if len(value) > _SHOWN else text


def _controls(value: str) -> bool:
    return any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in value)


def container_id(cid: str) -> None:
    """Raise CNIError 4 unless ``cid`` is a valid CNI_CONTAINERID."""
    if not cid:
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES, "CNI_CONTAINERID is required")
    if len(cid) > MAX_CONTAINER_ID:
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES,
                       f"CNI_CONTAINERID is longer than {MAX_CONTAINER_ID} characters",
                       f"{len(cid)} characters")
    if not _NAME.fullmatch(cid):
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES,
                       f"CNI_CONTAINERID {shown(cid)} has invalid characters: it must match "
                       "^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def ifname(name: str) -> None:
    """Raise CNIError 4 unless ``name`` is a valid CNI_IFNAME."""
    what = f"CNI_IFNAME {shown(name)}"
    if not name:
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES, "CNI_IFNAME is required")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES, f"{what} is not valid UTF-8") from None
    if size > MAX_IFNAME:
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES,
                       f"{what} is too long: {size} bytes, at most {MAX_IFNAME}")
    if name in (".", ".."):
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES, f"{what} is not a valid interface name")
    if any(c in "/:" or c.isspace() for c in name) or _controls(name):
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES,
                       f"{what} contains '/', ':', whitespace or a control character")


def network_name(name: object) -> str:
    """Return ``name`` if it is a valid network name; raise InvalidConfig (7) otherwise."""
    if not isinstance(name, str) or not name:
        raise InvalidConfig("network configuration has no name")
    if len(name) > MAX_CONTAINER_ID:
        raise InvalidConfig(f"network name is longer than {MAX_CONTAINER_ID} characters")
    if not _NAME.fullmatch(name):
        raise InvalidConfig(f"network name {shown(name)} has invalid characters: it must "
                            "match ^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    return name


def netns_path(path: str) -> None:
    """Raise CNIError 4 if a non-empty CNI_NETNS is not absolute or has control characters."""
    if path and (not path.startswith("/") or _controls(path)):
        raise CNIError(INVALID_ENVIRONMENT_VARIABLES,
                       f"CNI_NETNS {shown(path)} must be an absolute path without control "
                       "characters")
