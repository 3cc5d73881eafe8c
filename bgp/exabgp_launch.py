"""ExaBGP entry point with one fast path: IPv4-unicast UPDATEs reach the API process with their
prefixes as the raw wire field (Withdrawn Routes, or NLRI), not as one decoded object each.
And one fix: an API teardown sends its Cease NOTIFICATION under graceful restart too
(:func:`install_cease_teardown`).

Run as ``python exabgp_launch.py server <conf>`` (the arguments ``exabgp`` itself takes). It
runs in ExaBGP's process, so it imports only the standard library and exabgp, never the bgp
package (its own directory is taken off ``sys.path`` first).

Why (measured, ExaBGP 5.0.15, 10k /26 withdrawals in 13 UPDATEs as BIRD sends them):
``Update.unpack_message`` spends ~42 ms building an INET NLRI object per withdrawn prefix and
the JSON encoder ~15 ms rendering them: ~57 ms of CPU before podroute sees a route, which alone
is 2-3x BIRD's whole withdraw convergence. Announcements cost the same per prefix (89 ms of
ExaBGP CPU for 10k, more than the agent's own 69 ms). ``receive { packets; }`` does not avoid
it: ``Protocol.read_message`` decodes every UPDATE an API process subscribes to.

What, for UPDATEs (RFC 4271 §4.3) received where ADD-PATH receive (RFC 7911) is off for IPv4
unicast and ExaBGP keeps no Adj-RIB-In:

- a pure withdrawal (non-empty Withdrawn Routes, Total Path Attribute Length 0, no NLRI)
  whose field checks out (every prefix length <= 32, the prefixes fill it exactly) becomes a
  :class:`RawWithdraw`, rendered as::

    "update": { "withdraw-raw": { "ipv4 unicast": "<hex of the Withdrawn Routes field>" } }

- a pure announcement (no Withdrawn Routes, non-empty NLRI) whose path attributes ExaBGP's
  own ``Attributes.unpack`` decodes without error into a plain set (a NEXT_HOP, no
  MP_REACH/MP_UNREACH, nothing ExaBGP marks internal, such as RFC 7606 treat-as-withdraw)
  and whose NLRI field checks out the same way becomes a :class:`RawAnnounce`, rendered with
  ExaBGP's own attribute JSON::

    "update": { "attribute": { ... }, "announce-raw": { "ipv4 unicast": { "<next hop>": "<hex of the NLRI field>" } } }

Every other UPDATE, one that fails a check included, goes to ExaBGP's own decoder unchanged,
so a malformed message still gets ExaBGP's NOTIFICATION (RFC 4271 §6.3, RFC 7606 §5.3) or
treat-as-withdraw. What ExaBGP loses for the raw kinds: its per-prefix debug log lines.

If the running ExaBGP is not a 5.0.x release with the hooks this relies on, nothing is patched
and one line saying why is printed: prefixes then arrive decoded, which ``bgp.api`` parses as
before.
"""
from __future__ import annotations

import os
import sys

# The update keys this file renders and bgp/api.py parses (the one definition: this file
# cannot import the bgp package, bgp/api.py imports these).
WITHDRAW_RAW = "withdraw-raw"
ANNOUNCE_RAW = "announce-raw"
_INTERNAL = 0xFFF0  # ExaBGP's own attribute codes (Attribute.CODE.INTERNAL_*) start above this


def _check_nlri(field: bytes) -> bool:
    """True when ``field`` is a well-formed sequence of IPv4 (length, prefix) tuples
    (RFC 4271 §4.3) that ends exactly at its end."""
    i, end = 0, len(field)
    while i < end:
        plen = field[i]
        if plen > 32:
            return False
        i += 1 + ((plen + 7) >> 3)
    return i == end


def install() -> str | None:
    """Patch ExaBGP in this process. Returns None when installed (or already installed),
    else the reason it was not. Raises nothing."""
    try:
        from exabgp import version
        from exabgp.bgp.message.direction import Direction
        from exabgp.bgp.message.update import Update
        from exabgp.bgp.message.update.attribute import Attribute, Attributes
        from exabgp.protocol.family import AFI, SAFI
        from exabgp.reactor.api.response.json import JSON
    except Exception as exc:  # noqa: BLE001 - any import problem: run unpatched
        return f"exabgp layout not as expected ({exc})"
    if not str(version.release).startswith("5.0."):
        return f"exabgp {version.release} is not 5.0.x"
    if Update.__dict__.get("_podroute_raw_withdraw"):
        return None
    original_unpack = Update.__dict__.get("unpack_message")
    original_update = JSON.__dict__.get("_update")
    if not isinstance(original_unpack, classmethod) or original_update is None \
            or not hasattr(JSON, "_json"):
        return "exabgp Update.unpack_message / JSON._update not found"
    unpack = original_unpack.__func__
    ipv4, unicast, inbound = AFI.ipv4, SAFI.unicast, Direction.IN
    next_hop, mp = Attribute.CODE.NEXT_HOP, (Attribute.CODE.MP_REACH_NLRI, Attribute.CODE.MP_UNREACH_NLRI)

    class RawWithdraw(Update):
        """A pure IPv4-unicast withdrawal kept as its Withdrawn Routes field (``raw``)."""

        def __init__(self, raw: bytes) -> None:
            Update.__init__(self, [], Attributes())
            self.raw = raw

    class RawAnnounce(Update):
        """A pure IPv4-unicast announcement: decoded attributes, the NLRI field as ``raw``."""

        def __init__(self, attributes, next_hop: str, raw: bytes) -> None:
            Update.__init__(self, [], attributes)
            self.next_hop = next_hop
            self.raw = raw

    def unpack_message(cls, data, direction, negotiated):
        n = len(data)
        if direction == inbound and n > 4:
            neighbor = getattr(negotiated, "neighbor", None)
            if neighbor is not None and not neighbor["adj-rib-in"] \
                    and not negotiated.addpath.receive(ipv4, unicast):
                w = (data[0] << 8) | data[1]
                if w:  # the body is 2 + w bytes of withdrawals, then 2 zero bytes
                    if n == w + 4 and data[w + 2] == 0 and data[w + 3] == 0:
                        field = data[2:w + 2]
                        if _check_nlri(field):
                            return RawWithdraw(field)
                else:  # 2 zero bytes, 2 + a bytes of attributes, then the NLRI
                    a = (data[2] << 8) | data[3]
                    field = data[4 + a:]
                    if a and field and _check_nlri(field):
                        attributes = Attributes.unpack(data[4:4 + a], direction, negotiated)
                        hop = attributes.get(next_hop)
                        if hop is not None and not any(code in attributes for code in mp) \
                                and not any(code >= _INTERNAL for code in attributes):
                            return RawAnnounce(attributes, str(hop), field)
        return unpack(cls, data, direction, negotiated)

    def _update(self, update):
        kind = type(update)
        if kind is RawWithdraw:
            return {"message": self._json(
                f'{{ "update": {{ "{WITHDRAW_RAW}": {{ "ipv4 unicast": "{update.raw.hex()}" }} }} }}')}
        if kind is RawAnnounce:
            return {"message": self._json(
                f'{{ "update": {{ "attribute": {{ {update.attributes.json()} }}, "{ANNOUNCE_RAW}": '
                f'{{ "ipv4 unicast": {{ "{update.next_hop}": "{update.raw.hex()}" }} }} }} }}')}
        return original_update(self, update)

    Update.unpack_message = classmethod(unpack_message)
    Update._podroute_raw_withdraw = (original_unpack, original_update)
    JSON._update = _update
    return None


def install_cease_teardown() -> str | None:
    """Make ExaBGP's API ``neighbor N teardown C`` send its Cease NOTIFICATION (code 6,
    subcode C; podroute uses it only for subcode 1, "Maximum Number of Prefixes Reached",
    RFC 4486 §3) even when graceful restart was negotiated. ExaBGP 5.0's ``Peer._main`` closes
    the TCP session without a NOTIFICATION whenever the OPEN it sent carried the GR capability,
    so without this the peer takes the teardown for a restart and keeps our routes as stale
    (RFC 4724 §4).

    The API teardown removes GR from that one session's sent OPEN (built afresh per session),
    which is what the silent-close check reads. Stopping ExaBGP (SIGTERM: ``Peer.stop`` /
    ``shutdown``, not ``teardown``) still closes silently, as podroute's graceful stop needs.
    Returns None when installed (or already installed), else why not. Raises nothing."""
    try:
        from exabgp.bgp.message.open.capability import Capability
        from exabgp.reactor.peer import Peer
    except Exception as exc:  # noqa: BLE001 - any import problem: run unpatched
        return f"exabgp layout not as expected ({exc})"
    original = Peer.__dict__.get("teardown")
    if original is None:
        return "exabgp Peer.teardown not found"
    if getattr(original, "_podroute_cease", False):
        return None
    gr = Capability.CODE.GRACEFUL_RESTART

    def teardown(self, code, restart=True):
        sent = getattr(getattr(self.proto, "negotiated", None), "sent_open", None)
        if sent is not None:
            sent.capabilities.pop(gr, None)
        return original(self, code, restart)

    teardown._podroute_cease = True
    teardown._podroute_original = original
    Peer.teardown = teardown
    return None


def uninstall() -> None:
    """Undo :func:`install` in this process (tests); a no-op when it is not installed."""
    from exabgp.bgp.message.update import Update
    from exabgp.reactor.api.response.json import JSON
    saved = Update.__dict__.get("_podroute_raw_withdraw")
    if saved:
        Update.unpack_message, JSON._update = saved
        del Update._podroute_raw_withdraw


def uninstall_cease_teardown() -> None:
    """Undo :func:`install_cease_teardown` in this process (tests); a no-op when not installed."""
    from exabgp.reactor.peer import Peer
    patched = Peer.__dict__.get("teardown")
    if getattr(patched, "_podroute_cease", False):
        Peer.teardown = patched._podroute_original


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    # Run as a script, this file's directory is sys.path[0]: the bgp package's module names
    # must not shadow anything ExaBGP imports.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:  # so ps/top/pgrep show "exabgp" as with its own entry point, not "python"
        with open("/proc/self/comm", "w") as f:
            f.write("exabgp")
    except OSError:
        pass
    why = install()
    if why is not None:
        print(f"podroute: ExaBGP withdrawal fast path off: {why}", flush=True)
    why = install_cease_teardown()
    if why is not None:
        print(f"podroute: ExaBGP teardown stays silent under graceful restart: {why}", flush=True)
    from exabgp.application.main import main as exabgp_main
    sys.argv[0] = "exabgp"
    return exabgp_main()


if __name__ == "__main__":
    sys.exit(main())
