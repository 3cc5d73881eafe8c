"""Exception hierarchy of the bgp/ component.

Lower-level failures (OSError from the socket or the child process, JSON decode errors,
ExaBGP's ``error`` acks) are mapped into these at the seam, so callers catch ``BGPError``.
"""
from __future__ import annotations


class BGPError(Exception):
    """Base of every error raised by bgp/."""


class ConfigError(BGPError):
    """The SpeakerConfig cannot be rendered into a valid ExaBGP configuration."""


class ExaBGPExited(BGPError):
    """The ExaBGP child exited (or the API session closed) while work was pending.

    ``code`` is the exit code (negative: killed by that signal) or None when unknown;
    ``stderr_tail`` holds the last lines ExaBGP printed.
    """

    def __init__(self, message: str, code: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.stderr_tail = stderr_tail


class CommandRejected(BGPError):
    """ExaBGP answered ``error`` to an API command (``exabgp.api.ack=true``).

    ``command`` is the exact line that was sent.
    """

    def __init__(self, command: str) -> None:
        super().__init__(f"ExaBGP rejected command: {command!r}")
        self.command = command
