"""bgp/exabgp_launch.py: the pure-withdrawal fast path inside ExaBGP, against ExaBGP's own
decoder and JSON encoder as the oracle (in process), and bgp.prefix.unpack_nlri."""
import json
import struct
from ipaddress import IPv4Network

import pytest
from hypothesis import given, settings, strategies as st

from bgp import api, exabgp_launch
from bgp.prefix import from_key, key_of, unpack_keys, unpack_nlri

exabgp = pytest.importorskip("exabgp")
from exabgp.bgp.message.direction import Direction  # noqa: E402
from exabgp.bgp.message.notification import Notify  # noqa: E402
from exabgp.bgp.message.open.capability.negotiated import Negotiated  # noqa: E402
from exabgp.bgp.message.update import EOR, Update  # noqa: E402
from exabgp.bgp.neighbor import Neighbor  # noqa: E402
from exabgp.environment import getenv  # noqa: E402
from exabgp.logger import log  # noqa: E402
from exabgp.reactor.api.response.json import JSON  # noqa: E402
from exabgp.version import json as json_version  # noqa: E402

log.init(getenv())

prefixes = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda t: IPv4Network(t, strict=False)), min_size=1, max_size=60)


def field(nets) -> bytes:
    """RFC 4271 §4.3 encoding of ``nets`` (length octet, then the fewest octets)."""
    out = b""
    for n in nets:
        k = (n.prefixlen + 7) // 8
        out += bytes([n.prefixlen]) + n.network_address.packed[:k]
    return out


def withdraw_body(raw: bytes) -> bytes:
    return struct.pack("!H", len(raw)) + raw + b"\x00\x00"


def negotiated(adj_rib_in: bool = False) -> Negotiated:
    nb = Neighbor()
    nb["adj-rib-in"] = adj_rib_in
    return Negotiated(nb)


def as_line(update) -> str:
    """The API line the speaker would read for ``update`` (envelope trimmed to what
    bgp.api reads)."""
    message = JSON(json_version)._update(update)["message"]
    return ('{"exabgp": "5.0.0", "type": "update", "neighbor": {"address": '
            '{"local": "198.18.0.2", "peer": "198.18.0.1"}, "direction": "receive", '
            f'"message": {message}}}}}')


def decode(body: bytes, neg: Negotiated):
    return Update.unpack_message(body, Direction.IN, neg)


def decoded_both_ways(body: bytes):
    """(the patched decode of ``body``, its API event, the unpatched decode's API event)."""
    reference = api.parse_line(as_line(decode(body, negotiated())))
    assert exabgp_launch.install() is None
    try:
        update = decode(body, negotiated())
        fast = api.parse_line(as_line(update))
    finally:
        exabgp_launch.uninstall()
    return update, fast, reference


@pytest.fixture
def patched():
    assert exabgp_launch.install() is None
    yield
    exabgp_launch.uninstall()


def test_install_is_idempotent_and_uninstall_restores():
    before = (Update.__dict__["unpack_message"], JSON.__dict__["_update"])
    assert exabgp_launch.install() is None and exabgp_launch.install() is None
    assert Update.__dict__["unpack_message"] is not before[0]
    exabgp_launch.uninstall()
    assert (Update.__dict__["unpack_message"], JSON.__dict__["_update"]) == before
    exabgp_launch.uninstall()  # not installed: no-op


@settings(max_examples=150, deadline=None)
@given(prefixes)
def test_raw_withdrawal_parses_to_what_exabgps_decoder_gives(nets):
    update, fast, reference = decoded_both_ways(withdraw_body(field(nets)))
    assert type(update).__name__ == "RawWithdraw" and update.nlris == []
    assert isinstance(fast, api.UpdateEvent) and fast.undecoded and not reference.undecoded
    assert fast.withdrawn == [] and reference.withdrawn == nets
    assert fast.withdrawn_keys == [key_of(p) for p in reference.withdrawn]
    assert [str(from_key(k)) for k in fast.withdrawn_keys] == [str(n) for n in nets]
    assert fast.announced == reference.announced == []


def test_eor_and_mixed_updates_take_exabgps_path(patched):
    neg = negotiated()
    assert isinstance(decode(b"\x00\x00\x00\x00", neg), EOR)
    # withdraw 10.0.0.0/26 and announce 10.0.1.0/26 (ORIGIN IGP, NEXT_HOP 198.18.0.1)
    attrs = bytes([0x40, 1, 1, 0, 0x40, 3, 4, 198, 18, 0, 1])
    w = field([IPv4Network("10.0.0.0/26")])
    body = struct.pack("!H", len(w)) + w + struct.pack("!H", len(attrs)) + attrs + \
        field([IPv4Network("10.0.1.0/26")])
    mixed = decode(body, neg)
    assert type(mixed) is Update
    ev = api.parse_line(as_line(mixed))
    assert [str(p) for p in ev.withdrawn] == ["10.0.0.0/26"] and not ev.undecoded
    assert [(str(p), str(nh)) for p, nh, _a in ev.announced] == [("10.0.1.0/26", "198.18.0.1")]


def test_adj_rib_in_on_keeps_exabgps_decoder(patched):
    body = withdraw_body(field([IPv4Network("10.0.0.0/26")]))
    assert type(decode(body, negotiated(adj_rib_in=True))) is Update
    body = announce_body(path_attrs(0, (65001,), "198.18.0.1"), field([IPv4Network("10.0.0.0/26")]))
    assert type(decode(body, negotiated(adj_rib_in=True))) is Update


def path_attrs(origin, as_path, next_hop, med=None, local_pref=None, communities=()) -> bytes:
    """ORIGIN, AS_PATH (one AS_SEQUENCE of 2-octet ASNs), NEXT_HOP and the optional MED,
    LOCAL_PREF and COMMUNITIES, encoded as RFC 4271 §4.3 / RFC 1997 give them."""
    seg = bytes([2, len(as_path)]) + b"".join(struct.pack("!H", a) for a in as_path) if as_path else b""
    out = bytes([0x40, 1, 1, origin]) + bytes([0x40, 2, len(seg)]) + seg
    out += bytes([0x40, 3, 4]) + IPv4Network(next_hop).network_address.packed
    if med is not None:
        out += bytes([0x80, 4, 4]) + struct.pack("!I", med)
    if local_pref is not None:
        out += bytes([0x40, 5, 4]) + struct.pack("!I", local_pref)
    if communities:
        out += bytes([0xC0, 8, 4 * len(communities)]) + b"".join(struct.pack("!I", c) for c in communities)
    return out


def announce_body(attrs: bytes, nlri: bytes) -> bytes:
    return b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + nlri


attribute_sets = st.builds(
    path_attrs, st.integers(0, 2), st.lists(st.integers(1, 65535), max_size=4).map(tuple),
    st.sampled_from(["198.18.0.1", "198.18.7.200", "10.1.2.3"]),
    st.none() | st.integers(0, 2**32 - 1), st.none() | st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple))


@settings(max_examples=150, deadline=None)
@given(attribute_sets, prefixes)
def test_raw_announcement_parses_to_what_exabgps_decoder_gives(attrs, nets):
    update, fast, reference = decoded_both_ways(announce_body(attrs, field(nets)))
    assert type(update).__name__ == "RawAnnounce" and update.nlris == []
    assert fast.announced_raw and fast.undecoded and not reference.undecoded
    assert [(str(p), nh, a) for p, nh, a in fast.announced] == \
        [(str(p), nh, a) for p, nh, a in reference.announced]
    assert [p.key for p, _nh, _a in fast.announced] == unpack_keys(field(nets))
    assert fast.withdrawn == reference.withdrawn == [] and fast.withdrawn_keys is None


@pytest.mark.parametrize("attrs", [
    bytes([0x40, 1, 1, 0, 0x40, 2, 0]),                                 # no NEXT_HOP
    bytes([0x80, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 198, 18, 0, 1]),      # ORIGIN flags: RFC 7606
    bytes([0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 198, 18, 0, 1,        # MED length 3: RFC 7606
           0x80, 4, 3, 0, 0, 1]),
    bytes([0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 198, 18, 0, 1,        # + MP_UNREACH IPv6
           0x80, 15, 3, 0, 2, 1]),
])
def test_announcements_exabgp_would_not_pass_as_is_take_its_path(attrs):
    """Treat-as-withdraw, a missing NEXT_HOP, MP attributes: ExaBGP's decoder and JSON decide,
    patched or not (the same Update, or the same NOTIFICATION)."""
    body = announce_body(attrs, field([IPv4Network("10.0.0.0/26")]))

    def outcome():
        try:
            update = decode(body, negotiated())
        except Notify as exc:
            return ("notify", exc.code, exc.subcode)
        return (type(update).__name__, as_line(update))
    reference = outcome()
    assert exabgp_launch.install() is None
    try:
        fast = outcome()
    finally:
        exabgp_launch.uninstall()
    assert fast == reference and fast[0] != "RawAnnounce"


@pytest.mark.parametrize("nlri", [bytes([33, 10, 0, 0, 0, 0]), bytes([26, 10, 0, 0]),
                                  bytes([26, 10, 0, 0, 0, 24])])
def test_malformed_announcement_gets_exabgps_notification(patched, nlri):
    body = announce_body(path_attrs(0, (65001,), "198.18.0.1"), nlri)
    with pytest.raises(Notify) as fast:
        decode(body, negotiated())
    exabgp_launch.uninstall()
    with pytest.raises(Notify) as ref:
        decode(body, negotiated())
    assert (fast.value.code, fast.value.subcode) == (ref.value.code, ref.value.subcode)


@pytest.mark.parametrize("raw", [bytes([33, 10, 0, 0, 0, 0]),      # length over 32
                                 bytes([26, 10, 0, 0]),             # prefix cut short
                                 bytes([26, 10, 0, 0, 0, 24])])     # a trailing length octet
def test_malformed_withdrawal_gets_exabgps_notification(patched, raw):
    with pytest.raises(Notify) as fast:
        decode(withdraw_body(raw), negotiated())
    exabgp_launch.uninstall()
    with pytest.raises(Notify) as ref:
        decode(withdraw_body(raw), negotiated())
    assert (fast.value.code, fast.value.subcode) == (ref.value.code, ref.value.subcode)


@given(prefixes)
def test_unpack_nlri_round_trip(nets):
    assert unpack_nlri(field(nets)) == nets
    keys = unpack_keys(field(nets))
    assert keys == [1 << n.prefixlen | int(n.network_address) >> (32 - n.prefixlen) for n in nets]
    assert [from_key(k) for k in keys] == nets


def test_unpack_nlri_ignores_trailing_bits_and_names_bad_offsets():
    # 10.0.0.77/26 on the wire: the bits past /26 are irrelevant (RFC 4271 §4.3)
    assert [str(p) for p in unpack_nlri(bytes([26, 10, 0, 0, 77, 0]))] == ["10.0.0.64/26",
                                                                           "0.0.0.0/0"]
    with pytest.raises(ValueError, match="octet 5: prefix length 33"):
        unpack_nlri(bytes([24, 10, 0, 0, 0, 33, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="octet 0: prefix length 26, 2 octets left"):
        unpack_nlri(bytes([26, 10, 0]))


def test_parse_line_rejects_bad_raw_field():
    line = json.dumps({"type": "update", "neighbor": {"address": {"peer": "198.18.0.1"},
                       "message": {"update": {api.WITHDRAW_RAW: {"ipv4 unicast": "1a0a00"}}}}})
    with pytest.raises(api.BGPError, match="malformed NLRI"):
        api.parse_line(line)


def test_api_teardown_drops_gr_from_the_sessions_sent_open_only():
    """install_cease_teardown: ExaBGP's silent-close check reads the session's sent OPEN, so an
    API teardown removes GR from it (the Cease goes out). The NOTIFICATION on the wire is
    tests/privileged/test_bgp_wire.py's; that a stop still closes silently is
    tests/privileged/test_bgp_bird.py's."""
    from types import SimpleNamespace

    from exabgp.bgp.message.open.capability import Capability
    from exabgp.reactor.peer import Peer
    gr = Capability.CODE.GRACEFUL_RESTART
    original = Peer.__dict__["teardown"]

    def peer():
        p = Peer.__new__(Peer)
        p._delay = SimpleNamespace(reset=lambda: None)
        p._teardown = None
        p.proto = SimpleNamespace(negotiated=SimpleNamespace(
            sent_open=SimpleNamespace(capabilities={gr: object(), 2: object()})))
        return p

    assert exabgp_launch.install_cease_teardown() is None
    try:
        assert exabgp_launch.install_cease_teardown() is None   # idempotent
        p = peer()
        p.teardown(1)
        assert p._teardown == 1 and list(p.proto.negotiated.sent_open.capabilities) == [2]
        p = peer()
        p.proto = None                  # no session: nothing to change, still scheduled
        p.teardown(1)
        assert p._teardown == 1
    finally:
        exabgp_launch.uninstall_cease_teardown()
    assert Peer.__dict__["teardown"] is original
    p = peer()
    p.teardown(1)
    assert gr in p.proto.negotiated.sent_open.capabilities
