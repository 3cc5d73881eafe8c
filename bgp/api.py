"""Typed adapter over ExaBGP 5's line API (helper process stdin/stdout, JSON encoder).

Events: ExaBGP writes one JSON object per line (``"exabgp": "5.0.0"`` format version);
:func:`parse_line` turns one into an event dataclass, ``None`` for types we ignore, or
:data:`ACK_DONE`/:data:`ACK_ERROR` for the plain ``done``/``error`` acks that
``exabgp.api.ack=true`` interleaves with events.

Commands: built by the ``cmd_*`` functions; :class:`ApiSession` sends them one at a time and
awaits each ack. One-at-a-time is deliberate: recorded against ExaBGP 5.0.15, a pipelined
unparsable command is answered ``error`` *before* the ``done`` of valid commands sent ahead of
it (tests/fixtures/exabgp/pipelined_acks.txt), so acks cannot be matched by order when
several commands are outstanding. Bulk ``announce attributes ... nlri P1 P2 ...`` keeps
throughput up.

Why one file of ~480 lines: it is the whole contract with ExaBGP's API in both directions
(the event grammar, the command grammar, the ack discipline and the ``show neighbor json``
answer that confirms a reload), kept where one reader can
check it against ExaBGP 5.0's ``exabgp/reactor/api/`` in one pass.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Callable, Iterable, Union

from .errors import BGPError, CommandRejected, ExaBGPExited
# The keys bgp/exabgp_launch.py renders a pure withdrawal and a pure announcement under:
# {"ipv4 unicast": "<hex of the Withdrawn Routes field>"} and {"ipv4 unicast": {"<next hop>":
# "<hex of the NLRI field>"}}.
from .exabgp_launch import ANNOUNCE_RAW, WITHDRAW_RAW
from .model import PathAttrs
from .prefix import parse as parse_prefix, unpack_keys, unpack_nlri

log = logging.getLogger("bgp.api")

ACK_DONE = "done"
ACK_ERROR = "error"
_ORIGINS = {"igp": 0, "egp": 1, "incomplete": 2}
# One ``announce attributes ... nlri`` line carries at most this many prefixes (lines up to
# 1 MiB are accepted; 500 keeps each ack quick).
BULK_CHUNK = 500


@dataclass(frozen=True)
class UpdateEvent:
    """Routes received from ``peer`` in one UPDATE (RFC 4271 §4.3).

    ``announced``: (prefix, next hop, attrs) per NLRI; ``withdrawn``: prefixes from
    ExaBGP's decoded JSON; ``withdrawn_keys``: instead of those, the prefix keys
    (``bgp.prefix``) of withdrawals that came as raw wire bytes (bgp/exabgp_launch.py);
    ``announced_raw``: the announcements came as raw wire bytes (their prefixes decoded here,
    their attributes by ExaBGP).
    """

    peer: IPv4Address
    announced: list[tuple[IPv4Network, IPv4Address, PathAttrs]] = field(default_factory=list)
    withdrawn: list[IPv4Network] = field(default_factory=list)
    withdrawn_keys: list[int] | None = None
    announced_raw: bool = False

    @property
    def undecoded(self) -> bool:
        """The prefixes arrived as raw wire bytes (``withdrawn_keys`` or ``announced_raw``)."""
        return self.withdrawn_keys is not None or self.announced_raw


@dataclass(frozen=True)
class EorEvent:
    """End-of-RIB marker from ``peer`` (RFC 4724 §2) for (afi, safi), e.g. ("ipv4", "unicast")."""

    peer: IPv4Address
    afi: str
    safi: str


@dataclass(frozen=True)
class StateEvent:
    """Session state change: ``state`` is "connected", "up" or "down"; ``reason`` on down."""

    peer: IPv4Address
    state: str
    reason: str | None = None


@dataclass(frozen=True)
class NotificationEvent:
    """A NOTIFICATION received from ``peer`` (RFC 4271 §4.5: code, subcode), or, with
    ``peer`` None and ``shutdown`` True, ExaBGP announcing its own exit."""

    peer: IPv4Address | None
    code: int | None = None
    subcode: int | None = None
    message: str = ""
    shutdown: bool = False


@dataclass(frozen=True)
class OpenEvent:
    """An OPEN received from ``peer``: its ASN, hold time (s), router id, capability names.

    ``gr_advertised``: the OPEN carried the Graceful Restart capability (RFC 4724 §3, code
    64); ``gr_restart_time``: its Restart Time (s), None when absent from ExaBGP's JSON.
    """

    peer: IPv4Address
    asn: int
    hold_time: int
    router_id: IPv4Address
    capabilities: tuple[str, ...] = ()
    gr_restart_time: int | None = None
    gr_advertised: bool = False


Event = Union[UpdateEvent, EorEvent, StateEvent, NotificationEvent, OpenEvent]


def _peer(obj: dict[str, Any]) -> IPv4Address:
    return IPv4Address(obj["neighbor"]["address"]["peer"])


def _as_path(raw: Any) -> tuple[int, ...]:
    # ExaBGP 5 renders {"0": {"element": "as-sequence", "value": [..]}, ...}; older: a list.
    if isinstance(raw, list):
        return tuple(int(a) for a in raw)
    if isinstance(raw, dict):
        out: list[int] = []
        for key in sorted(raw, key=lambda k: int(k)):
            out.extend(int(a) for a in raw[key].get("value", []))
        return tuple(out)
    return ()


def _as_path_length(raw: Any) -> int:
    """AS_PATH length for best-path: an AS_SET counts as 1 (RFC 4271 §9.1.2.2 a)."""
    if isinstance(raw, dict):
        n = 0
        for seg in raw.values():
            n += 1 if seg.get("element") == "as-set" else len(seg.get("value", []))
        return n
    return len(_as_path(raw))


def parse_attrs(attr: dict[str, Any], next_hop: IPv4Address) -> PathAttrs:
    """Map ExaBGP's ``"attribute"`` object to PathAttrs (unknown keys ignored)."""
    communities = attr.get("community") or []
    raw_path = attr.get("as-path")
    as_path = _as_path(raw_path)
    length = _as_path_length(raw_path)
    return PathAttrs(
        next_hop=next_hop,
        as_path=as_path,
        as_path_length=None if length == len(as_path) else length,
        origin=_ORIGINS.get(str(attr.get("origin", "igp")).lower(), 2),
        med=int(attr["med"]) if "med" in attr else None,
        local_pref=int(attr["local-preference"]) if "local-preference" in attr else None,
        originator_id=IPv4Address(attr["originator-id"]) if "originator-id" in attr else None,
        cluster_list=tuple(IPv4Address(c) for c in attr.get("cluster-list", [])),
        communities=tuple(":".join(str(p) for p in c) if isinstance(c, list) else str(c)
                          for c in communities),
    )


def _prefix(entry: Any) -> IPv4Network:
    # {"nlri": "P"} normally; a bare "P" string under exabgp.api.compact.
    return parse_prefix(entry["nlri"] if isinstance(entry, dict) else entry)


def _parse_update(obj: dict[str, Any]) -> Event | None:
    peer = _peer(obj)
    msg = obj["neighbor"].get("message", {})
    if "eor" in msg:
        return EorEvent(peer, str(msg["eor"]["afi"]), str(msg["eor"]["safi"]))
    upd = msg.get("update")
    if upd is None:
        return None
    attr = upd.get("attribute", {})
    announced: list[tuple[IPv4Network, IPv4Address, PathAttrs]] = []
    raw = upd.get(ANNOUNCE_RAW)
    if raw is not None:  # bgp/exabgp_launch.py: a pure announcement, NLRI undecoded
        for nh_str, nlri in raw["ipv4 unicast"].items():
            nh = IPv4Address(nh_str)
            attrs = parse_attrs(attr, nh)
            announced.extend((p, nh, attrs) for p in unpack_nlri(bytes.fromhex(nlri)))
        return UpdateEvent(peer, announced, announced_raw=True)
    by_hop = upd.get("announce", {}).get("ipv4 unicast", {})
    seen: set[IPv4Network] | None = set() if len(by_hop) > 1 else None
    for nh_str, entries in by_hop.items():
        try:
            nh = IPv4Address(nh_str)
        except ValueError:
            log.debug("skipping non-IPv4 next hop %r", nh_str)
            continue
        attrs = parse_attrs(attr, nh)
        for entry in entries:
            prefix = _prefix(entry)
            if seen is not None:
                if prefix in seen:  # IPv6 link-local next hops list it under two next-hop keys
                    continue
                seen.add(prefix)
            announced.append((prefix, nh, attrs))
    raw = upd.get(WITHDRAW_RAW)
    if raw is not None:  # bgp/exabgp_launch.py: a pure withdrawal, undecoded
        return UpdateEvent(peer, announced, withdrawn_keys=unpack_keys(bytes.fromhex(raw["ipv4 unicast"])))
    withdrawn = [_prefix(e) for e in upd.get("withdraw", {}).get("ipv4 unicast", [])]
    return UpdateEvent(peer, announced, withdrawn)


@dataclass(frozen=True)
class NeighborsReply:
    """The answer to :data:`CMD_SHOW_NEIGHBORS`: each neighbor ExaBGP's reactor holds (its
    ``_peers``, which a reload updates together with the parsed configuration), as
    address -> (peer AS, FSM state name)."""

    neighbors: dict[IPv4Address, tuple[int | None, str]]


# ExaBGP 5.0 reactor/api/command/neighbor.py: one line, a JSON array of
# NeighborTemplate.as_dict() (bgp/neighbor.py), then ``done``.
CMD_SHOW_NEIGHBORS = "show neighbor json"


def parse_neighbors(text: str) -> dict[IPv4Address, tuple[int | None, str]]:
    """Parse the JSON array ``show neighbor json`` answers (see :class:`NeighborsReply`).
    Raises BGPError naming the entry that lacks ``peer.address``."""
    out: dict[IPv4Address, tuple[int | None, str]] = {}
    try:
        for entry in json.loads(text):
            peer = entry["peer"]
            asn = peer.get("as")
            out[IPv4Address(str(peer["address"]))] = (
                int(asn) if asn is not None else None, str(entry.get("fsm", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BGPError(f"unparsable 'show neighbor json' answer: {exc}: {text[:200]!r}") from exc
    return out


def parse_line(line: str | bytes) -> Event | str | NeighborsReply | None:
    """Parse one line ExaBGP wrote to the helper.

    Returns ``"done"``/``"error"`` for acks, an event dataclass, a :class:`NeighborsReply`
    for a ``show neighbor json`` answer, or None for blank lines and message types we do not
    use (keepalive, refresh, operational, unknown: logged at debug).
    Raises BGPError on a line that is neither an ack nor valid JSON of the expected shape.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    text = line.strip()
    if not text:
        return None
    if text in (ACK_DONE, ACK_ERROR):
        return text
    try:
        obj = json.loads(text)
        kind = obj.get("type")
        if kind == "update":
            return _parse_update(obj)
        if kind == "state":
            nb = obj["neighbor"]
            return StateEvent(_peer(obj), str(nb["state"]), nb.get("reason"))
        if kind == "notification":
            if obj.get("notification") == "shutdown":
                return NotificationEvent(None, shutdown=True, message="shutdown")
            n = obj["neighbor"]["notification"]
            return NotificationEvent(_peer(obj), int(n.get("code", 0)), int(n.get("subcode", 0)),
                                     str(n.get("message", "")))
        if kind == "open":
            o = obj["neighbor"]["open"]
            raw_caps = o.get("capabilities", {})
            caps = tuple(sorted(str(c.get("name", "")) for c in raw_caps.values()))
            gr = raw_caps.get("64")
            if gr is None:
                gr = next((c for c in raw_caps.values() if c.get("name") == "graceful restart"),
                          None)
            gr_time = int(gr["time"]) if gr is not None and "time" in gr else None
            return OpenEvent(_peer(obj), int(o["asn"]), int(o["hold_time"]),
                             IPv4Address(o["router_id"]), caps, gr_time, gr is not None)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, AttributeError) and text[:1] == "[":
            # A query's answer (``show neighbor json``: one JSON array); kept off the event
            # path above, which only ever sees objects.
            return NeighborsReply(parse_neighbors(text))
        raise BGPError(f"unparsable ExaBGP API line: {exc}: {text[:200]!r}") from exc
    log.debug("ignoring ExaBGP message type %r", kind)
    return None


# ---- command builders (text API, one line each, no trailing newline) ----

def _prefix_target(neighbor: IPv4Address | None) -> str:
    return f"neighbor {neighbor} " if neighbor is not None else ""


def cmd_announce(prefix: IPv4Network, next_hop: IPv4Address | None = None,
                 neighbor: IPv4Address | None = None) -> str:
    """``[neighbor N ]announce route P next-hop (A|self)``."""
    nh = "self" if next_hop is None else str(next_hop)
    return f"{_prefix_target(neighbor)}announce route {prefix} next-hop {nh}"


def _communities(communities: Iterable[str]) -> str:
    cs = list(communities)
    return f" community [ {' '.join(cs)} ]" if cs else ""


def cmd_announce_path(prefix: IPv4Network, attrs: PathAttrs, neighbor: IPv4Address,
                      originator_id: IPv4Address, cluster_list: Iterable[IPv4Address]) -> str:
    """A reflected route (RFC 4456 §8) to one neighbor: ``neighbor N announce route P
    next-hop NH origin O [local-preference L] [med M] [as-path [ .. ]] [community [ .. ]]
    originator-id I cluster-list [ C1 C2 .. ]``. The next hop is sent unchanged (iBGP)."""
    origin = {0: "igp", 1: "egp"}.get(attrs.origin, "incomplete")
    parts = [f"neighbor {neighbor} announce route {prefix} next-hop {attrs.next_hop}",
             f"origin {origin}"]
    if attrs.local_pref is not None:
        parts.append(f"local-preference {attrs.local_pref}")
    if attrs.med is not None:
        parts.append(f"med {attrs.med}")
    if attrs.as_path:
        parts.append(f"as-path [ {' '.join(str(a) for a in attrs.as_path)} ]")
    line = " ".join(parts) + _communities(attrs.communities)
    clusters = " ".join(str(c) for c in cluster_list)
    return f"{line} originator-id {originator_id} cluster-list [ {clusters} ]"


def cmd_withdraw(prefix: IPv4Network, neighbor: IPv4Address | None = None) -> str:
    """``[neighbor N ]withdraw route P`` (ExaBGP acks ``done`` even for an unknown prefix)."""
    return f"{_prefix_target(neighbor)}withdraw route {prefix}"


def cmds_bulk_announce(prefixes: Iterable[IPv4Network], next_hop: IPv4Address | None = None,
                       neighbor: IPv4Address | None = None,
                       chunk: int = BULK_CHUNK, communities: Iterable[str] = ()) -> list[str]:
    """``announce attributes next-hop A [community [ C .. ]] nlri P1 P2 ...`` lines of at most
    ``chunk`` prefixes (communities "ASN:VALUE", RFC 1997)."""
    ps = sorted(set(prefixes))
    nh = "self" if next_hop is None else str(next_hop)
    comm = _communities(communities)
    return [f"{_prefix_target(neighbor)}announce attributes next-hop {nh}{comm} nlri "
            + " ".join(str(p) for p in ps[i:i + chunk]) for i in range(0, len(ps), chunk)]


def cmds_bulk_withdraw(prefixes: Iterable[IPv4Network], neighbor: IPv4Address | None = None,
                       chunk: int = BULK_CHUNK) -> list[str]:
    """``withdraw attributes nlri P1 P2 ...`` lines of at most ``chunk`` prefixes."""
    ps = sorted(set(prefixes))
    return [f"{_prefix_target(neighbor)}withdraw attributes nlri "
            + " ".join(str(p) for p in ps[i:i + chunk]) for i in range(0, len(ps), chunk)]


def cmd_eor(neighbor: IPv4Address | None = None, afi: str = "ipv4", safi: str = "unicast") -> str:
    """``[neighbor N ]announce eor ipv4 unicast`` (End-of-RIB, RFC 4724 §2; needs manual-eor)."""
    return f"{_prefix_target(neighbor)}announce eor {afi} {safi}"


def cmd_teardown(neighbor: IPv4Address, subcode: int = 2) -> str:
    """``neighbor N teardown S``: Cease NOTIFICATION with subcode S (RFC 4486; 2 = shutdown)."""
    return f"neighbor {neighbor} teardown {subcode}"


class ApiSession:
    """One API session with ExaBGP (its helper's pipes, handed over by the relay: see
    bgp/handoff.py): reads ExaBGP lines, dispatches events, sends commands.

    ``on_event`` is called synchronously (in the reader task) for each parsed event, in
    order. :meth:`command` sends one line and returns when ExaBGP acks ``done``; raises
    CommandRejected on ``error``, ExaBGPExited if the session closes first, BGPError on
    ``timeout`` seconds without an ack.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[Event], None], *, ack_timeout: float = 30.0,
                 on_close: Callable[[], None] | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._on_close = on_close
        self._on_event = on_event
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[str] | None = None
        self._closed = False
        self.ack_timeout = ack_timeout
        self.unsolicited_acks = 0
        self._reply: NeighborsReply | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def read_loop(self) -> None:
        """Read until EOF; then fail any pending command with ExaBGPExited."""
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    log.warning("API session read failed: %s", exc)
                    break
                if not line:
                    break
                try:
                    item = parse_line(line)
                except BGPError as exc:
                    log.warning("%s", exc)
                    continue
                if item is None:
                    continue
                if isinstance(item, str):
                    self._ack(item)
                    continue
                if isinstance(item, NeighborsReply):
                    self._reply = item
                    continue
                try:
                    self._on_event(item)
                except Exception:  # a consumer bug must not kill the session
                    log.exception("event handler failed for %r", type(item).__name__)
        finally:
            self._closed = True
            if self._pending is not None and not self._pending.done():
                self._pending.set_exception(ExaBGPExited("API session closed before ack"))
            self.close()

    def _ack(self, word: str) -> None:
        if self._pending is None or self._pending.done():
            self.unsolicited_acks += 1
            log.debug("ack %r with no command outstanding", word)
            return
        self._pending.set_result(word)

    async def command(self, line: str) -> None:
        """Send ``line`` and await its ack (see class doc for errors)."""
        if "\n" in line:
            raise ValueError("a command is one line")
        async with self._lock:
            if self._closed:
                raise ExaBGPExited(f"API session closed; not sent: {line!r}")
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[str] = loop.create_future()
            self._pending = fut
            try:
                self._writer.write(line.encode() + b"\n")
                await self._writer.drain()
            except (OSError, ConnectionError) as exc:
                self._pending = None
                raise ExaBGPExited(f"API session write failed: {exc}") from exc
            try:
                word = await asyncio.wait_for(fut, self.ack_timeout)
            except asyncio.TimeoutError as exc:
                raise BGPError(f"no ack within {self.ack_timeout} s for {line!r}") from exc
            finally:
                self._pending = None
            if word == ACK_ERROR:
                raise CommandRejected(line)

    async def show_neighbors(self) -> dict[IPv4Address, tuple[int | None, str]]:
        """Send :data:`CMD_SHOW_NEIGHBORS` and return its answer (:class:`NeighborsReply`);
        errors as :meth:`command`, plus BGPError when ExaBGP acks without an answer."""
        self._reply = None
        await self.command(CMD_SHOW_NEIGHBORS)
        reply, self._reply = self._reply, None
        if reply is None:
            raise BGPError(f"ExaBGP acked {CMD_SHOW_NEIGHBORS!r} without an answer")
        return reply.neighbors

    async def commands(self, lines: Iterable[str]) -> None:
        """Send each line in order, stopping at the first rejection (raised)."""
        for line in lines:
            await self.command(line)

    def close(self) -> None:
        """Close the writer and run ``on_close`` (e.g. release the handed-over pipes)."""
        try:
            self._writer.close()
        except (OSError, RuntimeError):
            pass
        if self._on_close is not None:
            try:
                self._on_close()
            except (OSError, RuntimeError):
                pass
