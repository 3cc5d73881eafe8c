"""bgp.speaker against a fake ExaBGP (no root): relay wiring, replay + End-of-RIB ordering,
announcement diffs, restart with backoff after a kill by PID, the two ways to stop (graceful:
nothing withdrawn; drain: everything withdrawn, then stop)."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address as A, IPv4Network as N
from pathlib import Path

import pytest

from bgp_mirror import LocRibMirror
from bgp.handoff import PipeServer
from bgp.model import PeerConfig, SpeakerConfig
from bgp.relay import HELLO
from bgp.speaker import Speaker
from bgp.supervisor import Backoff

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "exabgp"
BIRD, NODE = A("198.18.0.1"), A("198.18.0.2")
RELAY = Path(__file__).resolve().parents[2] / "bgp" / "relay.py"

# Starts the API helper named in the config's `run` line like ExaBGP does, feeds it recorded
# events, logs each command it gets to $FAKE_LOG and answers done (error for "bogus ...").
FAKE = r'''#!/usr/bin/env python3
import os, re, subprocess, sys, threading
conf = open(sys.argv[2]).read()
cmd = re.search(r"run (.*);", conf).group(1).split()
helper = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
log = open(os.environ["FAKE_LOG"], "a")
log.write("#start %d\n" % os.getpid()); log.flush()
def feed():
    for line in open(os.environ["FAKE_EVENTS"]):
        helper.stdin.write(line.encode()); helper.stdin.flush()
threading.Thread(target=feed, daemon=True).start()
for line in helper.stdout:
    text = line.decode().strip()
    log.write(text + "\n"); log.flush()
    helper.stdin.write(b"error\n" if text.startswith("bogus") else b"done\n")
    helper.stdin.flush()
'''


def commands(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


async def wait_until(pred, timeout: float, what: str):
    for _ in range(int(timeout / 0.02)):
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    fake = tmp_path / "fake-exabgp"
    fake.write_text(FAKE.replace("/usr/bin/env python3", sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "commands.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_EVENTS", str(FIX / "session_up.jsonl"))
    return fake, log


async def test_replay_eor_diff_restart_and_stop(tmp_path, fake_env):
    fake, log = fake_env
    own, extra = N("198.19.3.0/26"), N("198.19.5.0/26")
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE,
                        peers=(PeerConfig(BIRD, 64512),), announce=(own,),
                        import_pools=(N("198.19.0.0/16"),), own_blocks=(own,), node_ip=NODE,
                        state_dir=tmp_path / "st", exabgp_bin=str(fake))
    ribs = LocRibMirror()
    sp = Speaker(cfg, ribs, backoff=Backoff(initial=0.1, maximum=0.2))
    run = asyncio.create_task(sp.run())
    eor = f"neighbor {BIRD} announce eor ipv4 unicast"
    announce_own = f"announce attributes next-hop self nlri {own}"
    try:
        await wait_until(lambda: eor in commands(log), 10, "End-of-RIB")
        cmds = [c for c in commands(log) if not c.startswith("#")]
        assert cmds == [announce_own, eor]  # replay strictly before EOR (pitfall 1)
        await wait_until(lambda: ribs and len(ribs[-1]) == 2, 5, "routes")
        assert set(ribs[-1]) == {N("198.19.1.0/26"), N("198.19.2.0/26")}

        sp.set_announcements([own, extra])
        await wait_until(lambda: f"announce attributes next-hop self nlri {extra}"
                         in commands(log), 5, "diff announce")
        sp.set_announcements([extra])
        await wait_until(lambda: f"withdraw attributes nlri {own}" in commands(log), 5,
                         "diff withdraw")
        assert sp.status().announced == (extra,)

        pid = sp.status().exabgp_pid
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: ribs[-1] == {}, 5, "flush on ExaBGP death")
        await wait_until(lambda: sp.status().exabgp_restarts == 1 and commands(log).count(eor) == 2,
                         10, "restart + second EOR")
        after = commands(log)
        second = after[max(i for i, c in enumerate(after) if c.startswith("#start")) + 1:]
        assert second == [f"announce attributes next-hop self nlri {extra}", eor]
        st = sp.status()
        assert st.exabgp_pid not in (None, pid) and "-9" in st.last_exit
        await wait_until(lambda: ribs and len(ribs[-1]) == 2, 5, "routes back")
    finally:
        await asyncio.wait_for(sp.stop(), 20)
        await asyncio.wait_for(run, 5)
    # A stop is graceful (RFC 4724): nothing withdrawn, peers keep our routes as stale.
    assert not [c for c in commands(log) if c.startswith("withdraw") and str(extra) in c]
    assert sp.status().exabgp_pid is None
    assert not (tmp_path / "st" / "api.sock").exists()


def test_backoff_doubles_caps_and_resets():
    b = Backoff(initial=1, maximum=30, stable_after=60)
    assert [b.next_delay(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.next_delay(61) == 1


@pytest.fixture
def relay(tmp_path):
    """The real relay (stdlib, as ExaBGP runs it) connected to a listening socket: (server, proc)."""
    path = str(tmp_path / "r.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(10)
    proc = subprocess.Popen(["/usr/bin/python3", "-I", "-S", str(RELAY), path],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        yield srv, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        srv.close()


def test_relay_hands_over_its_pipes_then_waits_as_cat_until_the_socket_closes(relay):
    srv, proc = relay
    conn, _ = srv.accept()
    conn.settimeout(10)
    msg, fds, _f, _a = socket.recv_fds(conn, 64, 4)
    assert msg == HELLO and len(fds) == 2
    events, commands_ = os.fdopen(fds[0], "rb", buffering=0), os.fdopen(fds[1], "wb", buffering=0)
    try:
        # ExaBGP -> helper stdin arrives on the handed-over read end, and back the other way.
        proc.stdin.write(b'{"type": "update"}\n')
        proc.stdin.flush()
        assert events.read(64) == b'{"type": "update"}\n'
        commands_.write(b"announce eor ipv4 unicast\n")
        assert proc.stdout.readline() == b"announce eor ipv4 unicast\n"
        cat = os.path.realpath("/bin/cat")
        for _ in range(200):  # the helper becomes cat (same PID) once the pipes are handed over
            if os.path.realpath(f"/proc/{proc.pid}/exe") == cat:
                break
            time.sleep(0.01)
        assert os.path.realpath(f"/proc/{proc.pid}/exe") == cat
        assert proc.poll() is None
        conn.close()  # the speaker ends the session: ExaBGP must see its helper exit
        assert proc.wait(10) == 0
    finally:
        events.close()
        commands_.close()


def test_relay_exits_1_when_the_hand_off_fails(relay):
    srv, proc = relay
    conn, _ = srv.accept()
    conn.shutdown(socket.SHUT_RDWR)
    conn.close()
    assert proc.wait(10) in (0, 1)  # sent into a closing socket (0) or refused (1): never hangs


async def test_pipe_server_rejects_a_connection_without_pipes_and_keeps_serving(tmp_path, caplog):
    got = []

    async def on_session(reader, writer, close):
        got.append(await reader.readline())
        close()
    server = PipeServer(tmp_path / "s.sock", on_session)
    await server.start()
    try:
        assert os.stat(tmp_path / "s.sock").st_mode & 0o777 == 0o600
        r, w = await asyncio.open_unix_connection(str(tmp_path / "s.sock"))
        w.write(HELLO)  # the right words but no SCM_RIGHTS
        await w.drain()
        assert await asyncio.wait_for(r.read(), 5) == b""  # closed by the server
        assert "hand-off failed" in caplog.text
        a, b = os.pipe()
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(tmp_path / "s.sock"))
        socket.send_fds(c, [HELLO], [a, b])
        os.write(b, b"hello\n")  # written to the pipe the server now reads
        await wait_until(lambda: got == [b"hello\n"], 5, "session read")
        c.close()
        w.close()
    finally:
        for fd in (a, b):
            os.close(fd)
        server.close()
        await server.wait_closed()


async def test_stop_without_run_returns_at_once(tmp_path):
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE,
                        peers=(PeerConfig(BIRD, 64512),), announce=(), import_pools=(),
                        own_blocks=(), node_ip=NODE, state_dir=tmp_path)
    sp = Speaker(cfg, lambda r: None)
    await asyncio.wait_for(sp.stop(), 1)
    st = sp.status()
    assert st.exabgp_pid is None and st.exabgp_restarts == 0
    assert [p.state for p in st.peers] == ["idle"]


async def test_missing_exabgp_binary_keeps_retrying_and_reports(tmp_path):
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE,
                        peers=(PeerConfig(BIRD, 64512),), announce=(), import_pools=(),
                        own_blocks=(), node_ip=NODE, state_dir=tmp_path,
                        exabgp_bin=str(tmp_path / "no-such-exabgp"))
    sp = Speaker(cfg, lambda r: None, backoff=Backoff(initial=0.02, maximum=0.05))
    run = asyncio.create_task(sp.run())
    await wait_until(lambda: sp.status().last_exit is not None, 5, "a failed start")
    await asyncio.sleep(0.2)
    assert not run.done()  # never returns silently
    assert "failed to start" in sp.status().last_exit
    await asyncio.wait_for(sp.stop(), 5)
    await asyncio.wait_for(run, 5)


def test_exabgp_python_runs_the_launcher(tmp_path):
    from bgp.exabgp_config import LAUNCH_PATH
    base = dict(router_id=NODE, local_as=64512, local_address=NODE,
                peers=(PeerConfig(BIRD, 64512),), announce=(), import_pools=(),
                own_blocks=(), node_ip=NODE, state_dir=tmp_path)
    sp = Speaker(SpeakerConfig(**base, exabgp_python=sys.executable), lambda r: None)
    assert sp.process.argv() == [sys.executable, str(LAUNCH_PATH), "server", str(sp.config_path)]
    assert Speaker(SpeakerConfig(**base, exabgp_bin="/x/exabgp"),
                   lambda r: None).process.argv()[0] == "/x/exabgp"
    # The launcher starts ExaBGP with the fast path installed (no "fast path off" line),
    # from any working directory, with bgp/ off sys.path.
    out = subprocess.run([sys.executable, str(LAUNCH_PATH), "version"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ExaBGP : 5.0." in out.stdout
    assert "fast path off" not in out.stdout + out.stderr


async def test_run_without_peers_creates_its_state_dir(tmp_path):
    # The first node of a mesh has no peer yet: no config is rendered, and the relay socket
    # still needs its directory (it used to crash the agent at start).
    state = tmp_path / "state" / "bgp"
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE, peers=(), announce=(),
                        import_pools=(), own_blocks=(), node_ip=NODE, state_dir=state)
    sp = Speaker(cfg, lambda r: None)
    run = asyncio.create_task(sp.run())
    await wait_until(lambda: sp.socket_path.exists() or run.done(), 5, "the relay socket")
    assert not run.done(), run.exception()
    await asyncio.wait_for(sp.stop(), 5)
    await asyncio.wait_for(run, 5)
def _speaker(tmp_path, fake, announce, exports=()):
    from bgp.model import ExportRoute
    cfg = SpeakerConfig(router_id=NODE, local_as=64512, local_address=NODE,
                        peers=(PeerConfig(BIRD, 64512),), announce=tuple(announce),
                        import_pools=(N("198.19.0.0/16"),), own_blocks=tuple(announce), node_ip=NODE,
                        state_dir=tmp_path / "st", exabgp_bin=str(fake),
                        export_extra=tuple(ExportRoute(e, ("64512:100",)) for e in exports))
    return Speaker(cfg, lambda r: None, backoff=Backoff(initial=0.1, maximum=0.2))


async def test_graceful_stop_withdraws_nothing_and_stops_exabgp(tmp_path, fake_env):
    """SIGTERM's path (Agent.run -> Speaker.stop): no withdraw reaches ExaBGP, so its
    shutdown ends the sessions with our routes still announced (peers keep them as stale)."""
    fake, log = fake_env
    own, svc = N("198.19.3.0/26"), N("198.18.128.0/24")
    sp = _speaker(tmp_path, fake, [own], [svc])
    run = asyncio.create_task(sp.run())
    eor = f"neighbor {BIRD} announce eor ipv4 unicast"
    try:
        await wait_until(lambda: eor in commands(log), 10, "End-of-RIB")
        pid = sp.status().exabgp_pid
        assert pid is not None
    finally:
        await asyncio.wait_for(sp.stop(), 20)
        await asyncio.wait_for(run, 5)
    cmds = [c for c in commands(log) if not c.startswith("#")]
    assert not [c for c in cmds if "withdraw" in c or "teardown" in c], cmds
    assert cmds[-1] == eor
    assert sp.status().exabgp_pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_drain_withdraws_everything_then_stop(tmp_path, fake_env):
    """`podroute node drain`'s path: every announced prefix (blocks and service CIDRs) is
    withdrawn and acked before drain() returns; nothing is re-announced after, even when the
    announcements change; stop() then ends ExaBGP."""
    fake, log = fake_env
    own, svc = N("198.19.3.0/26"), N("198.18.128.0/24")
    sp = _speaker(tmp_path, fake, [own], [svc])
    run = asyncio.create_task(sp.run())
    eor = f"neighbor {BIRD} announce eor ipv4 unicast"
    try:
        await wait_until(lambda: eor in commands(log), 10, "End-of-RIB")
        before = len(commands(log))
        report = await asyncio.wait_for(sp.drain(settle_s=0.0, timeout=5.0), 10)
        after = [c for c in commands(log)[before:] if not c.startswith("#")]
        assert after == [f"withdraw attributes nlri {svc} {own}"], after
        assert report.withdrawn == (svc, own) and report.acked
        # The fake ExaBGP holds no TCP session to the peer: nothing confirms delivery.
        assert report.undelivered == (BIRD,) and not report.complete
        assert sp.status().announced == ()
        sp.set_announcements([own, N("198.19.4.0/26")])
        await asyncio.sleep(0.3)
        assert not [c for c in commands(log)[before:] if "announce attributes" in c]
        pid = sp.status().exabgp_pid
    finally:
        await asyncio.wait_for(sp.stop(), 20)
        await asyncio.wait_for(run, 5)
    assert commands(log)[-1] == f"withdraw attributes nlri {svc} {own}"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_send_queues_parse_proc_net_tcp():
    from bgp.drain import parse_send_queues
    # /proc/net/tcp as a little-endian host prints it: 198.18.0.1 is 010012C6, port 179 is 00B3.
    text = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0B0012C6:B3A4 010012C6:00B3 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1
   1: 0B0012C6:00B3 020012C6:9C40 01 0000002A:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0B0012C6:00B3 030012C6:9C41 06 00000010:00000000 00:00000000 00000000     0        0 0 3 0 20 4 30 10 -1
   3: 0B0012C6:B3A5 010012C6:00B3 01 00000013:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
"""
    import sys as _sys
    if _sys.byteorder != "little":
        pytest.skip("sample text is a little-endian host's")
    got = parse_send_queues(text, [BIRD, A("198.18.0.2"), A("198.18.0.3"), A("198.18.0.9")])
    # BIRD: two established sockets (collision), the larger queue counts; .3 is TIME_WAIT.
    assert got == {BIRD: 0x13, A("198.18.0.2"): 0x2A}
