"""Runtime peer changes against a fake ExaBGP that loses SIGUSR1 the ways ExaBGP 5.0 does
(bgp/reload.py): a signal arriving while the previous one is being handled is ignored, and a
picked-up signal is dropped silently while updates are queued (``_pending_adjribout``).
The speaker must coalesce reloads, confirm them through ``show neighbor json``, reload again
until ExaBGP holds every configured neighbor, and replay our routes to a new neighbor before
its End-of-RIB."""
from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address as A, IPv4Network as N

from waiting import until

from bgp import api
from bgp.errors import CommandRejected
from bgp.exabgp_process import ExaBGPProcess
from bgp.model import PeerConfig, SpeakerConfig
from bgp.speaker import Speaker

NODE = A("198.18.0.2")
OWN = N("198.19.3.0/26")
PEERS = [A(f"198.18.0.{10 + i}") for i in range(6)]
HANDLING_S = 0.2   # how long the fake takes to handle one SIGUSR1


class FakeExaBGP:
    """The reactor's side: ``file`` is the config as last written (neighbor addresses),
    ``known`` the neighbors it holds. ``signal()`` is SIGUSR1; ``drop_next`` signals are
    picked up and dropped silently. Doubles as the API session the speaker talks to."""

    def __init__(self, sp: Speaker, known: set[A]) -> None:
        self.sp = sp
        self.file: set[A] = set(known)
        self.known: set[A] = set(known)
        self.handling = False
        self.ignored = 0           # "ignoring - still handling previous signal"
        self.drop_next = 0
        self.got: dict[A, list[str]] = {a: [] for a in PEERS}  # commands each neighbor got
        self.closed = False

    def signal(self) -> None:
        if self.handling:
            self.ignored += 1
            return
        self.handling = True
        # The file is read when the signal is picked up; handling it takes a while.
        asyncio.get_running_loop().call_later(HANDLING_S, self._handled, set(self.file))

    def _handled(self, file: set[A]) -> None:
        self.handling = False
        if self.drop_next:
            self.drop_next -= 1
            return
        added = file - self.known
        self.known = file
        for peer in sorted(added):  # the new sessions come up right after the reload
            asyncio.get_running_loop().call_later(
                0.05, self.sp._on_event, api.StateEvent(peer, "up"))

    async def command(self, line: str) -> None:
        await asyncio.sleep(0.001)
        if line.startswith("neighbor "):
            peer = A(line.split()[1])
            if peer not in self.known:
                raise CommandRejected(line)
            self.got[peer].append(line.split(" ", 2)[2])
        else:
            for peer in self.known:
                self.got[peer].append(line)

    async def show_neighbors(self) -> dict[A, tuple[int | None, str]]:
        await asyncio.sleep(0.01)
        return {a: (64512, "established") for a in self.known}


def got_routes_then_eor(fake: FakeExaBGP, peer: A) -> bool:
    """``peer`` got our block, then End-of-RIB after it."""
    cmds = fake.got[peer]
    eor = api.cmd_eor()
    ann = [i for i, c in enumerate(cmds) if c.startswith("announce attributes") and str(OWN) in c]
    eors = [i for i, c in enumerate(cmds) if c == eor]
    return bool(ann and eors and ann[0] < eors[0])


async def started(tmp_path, monkeypatch, peers: list[A]
                  ) -> tuple[Speaker, FakeExaBGP, asyncio.Task]:
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE,
                        peers=tuple(PeerConfig(p, 64512) for p in peers), announce=(OWN,),
                        import_pools=(N("198.19.0.0/16"),), own_blocks=(OWN,), node_ip=NODE,
                        state_dir=tmp_path)
    fakes: list[FakeExaBGP] = []
    monkeypatch.setattr(ExaBGPProcess, "signal_reload", lambda self: fakes[0].signal())
    sp = Speaker(cfg, lambda d: None, log=logging.getLogger("test.reload"))
    fake = FakeExaBGP(sp, set(peers))
    fakes.append(fake)
    sp._running = True  # as inside run(): set_peers() writes the file and reloads
    sp.process.write_config = lambda text: setattr(
        fake, "file", {p.address for p in sp.config.peers})
    task = asyncio.create_task(sp.rib_out.run(lambda: fake, lambda: False))
    return sp, fake, task


def add_peer(sp: Speaker, peer: A) -> None:
    sp.set_peers([*sp.config.peers, PeerConfig(peer, 64512)])


async def test_changes_during_a_reload_cause_one_more_reload_and_every_neighbor_is_loaded(
        tmp_path, monkeypatch):
    """Five nodes join 30 ms apart (each a set_peers): with one SIGUSR1 per change, those
    landing while the fake handles the previous one are ignored and their neighbors are
    never created. Coalesced, no signal is lost and every neighbor gets routes then EoR."""
    sp, fake, task = await started(tmp_path, monkeypatch, PEERS[:1])
    try:
        sp.rib_out.session_started()
        sp._on_event(api.StateEvent(PEERS[0], "up"))
        await until(lambda: got_routes_then_eor(fake, PEERS[0]), 5, "the first peer's EoR")
        for peer in PEERS[1:]:
            add_peer(sp, peer)
            await asyncio.sleep(0.03)
        await until(lambda: all(got_routes_then_eor(fake, p) for p in PEERS), 10,
                    f"routes then EoR to every neighbor; got {fake.got}")
        assert fake.known == set(PEERS)
        assert fake.ignored == 0, "a SIGUSR1 was sent while the previous one was handled"
        st = sp.status()
        assert st.reload_pending == () and st.reload_retries == 0
        # At most one reload in flight; the changes during it cost exactly one more.
        assert 2 <= st.reloads <= 3, st.reloads
    finally:
        task.cancel()


async def test_a_silently_dropped_reload_is_sent_again_until_the_neighbor_exists(tmp_path, monkeypatch):
    """ExaBGP drops a picked-up SIGUSR1 while updates are queued and tells no one: the
    neighbor stays unknown. The speaker must see that and reload again (with backoff), never
    give up, and report it in status meanwhile."""
    sp, fake, task = await started(tmp_path, monkeypatch, PEERS[:1])
    try:
        sp.rib_out.session_started()
        sp._on_event(api.StateEvent(PEERS[0], "up"))
        await until(lambda: got_routes_then_eor(fake, PEERS[0]), 5, "the first peer's EoR")
        fake.drop_next = 2
        add_peer(sp, PEERS[1])
        seen = []  # status while it waits
        await until(lambda: seen.append(sp.status()) or got_routes_then_eor(fake, PEERS[1]),
                    10, f"routes then EoR to the new neighbor; got {fake.got[PEERS[1]]}")
        assert (f"neighbor {PEERS[1]} not loaded",) in {s.reload_pending for s in seen}
        st = sp.status()
        assert st.reload_retries == 2 and st.reload_pending == ()
    finally:
        task.cancel()


async def test_new_api_session_during_a_reload_still_replays_to_the_new_neighbor(tmp_path, monkeypatch):
    """A new API session (full replay) and a peer added before the reload is done: the
    global replay reaches only the neighbors ExaBGP already holds, so the new neighbor
    keeps its own replay (it used to be cleared: the neighbor got End-of-RIB and no route)."""
    sp, fake, task = await started(tmp_path, monkeypatch, PEERS[:1])
    try:
        sp.rib_out.session_started()
        sp._on_event(api.StateEvent(PEERS[0], "up"))
        add_peer(sp, PEERS[1])
        await until(lambda: got_routes_then_eor(fake, PEERS[0]), 5, "the first peer's EoR")
        await until(lambda: any(c.startswith("announce eor") for c in fake.got[PEERS[1]]), 5,
                    "End-of-RIB to the new neighbor")
        assert got_routes_then_eor(fake, PEERS[1]), fake.got[PEERS[1]]
    finally:
        task.cancel()


def test_show_neighbor_json_answer_parses_apart_from_events():
    """ExaBGP 5.0 answers ``show neighbor json`` with one JSON array (NeighborTemplate
    .as_dict per neighbor) before ``done``; it must not be taken for a malformed event."""
    line = ('[{"state": "down", "duration": 0, "fsm": "active", "local": {"capabilities": {}, '
            '"families": {}, "add-path": {}, "address": "198.18.0.2", "as": 64512, "id": '
            '"198.18.0.2", "hold": 9}, "peer": {"capabilities": {}, "families": {}, '
            '"add-path": {}, "address": "198.18.0.11", "as": 64513, "id": null, "hold": null}, '
            '"messages": {"sent": {}, "received": {}}, "capabilities": [], "families": [], '
            '"add-path": {}}]\n')
    reply = api.parse_line(line)
    assert reply == api.NeighborsReply({A("198.18.0.11"): (64513, "active")})
    assert api.parse_line("[]") == api.NeighborsReply({})
