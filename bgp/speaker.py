"""The node's BGP speaker: supervises ExaBGP 5 and turns its line API into a Loc-RIB.

Process layout: ``Speaker.run()`` serves a unix socket in ``state_dir`` and runs
``exabgp server <state_dir>/exabgp.conf`` as a child (in the caller's network namespace).
ExaBGP runs bgp/relay.py as its API helper, which connects to that socket; each connection is
one API session (:class:`bgp.api.ApiSession`).

Graceful restart on our side (RFC 4724, FACTS pitfall 1): neighbors use ``manual-eor``; on
each new API session we replay the full announced set, and after every session "up" we send
``neighbor <peer> announce eor ipv4 unicast`` once the replay is acked, so a peer that kept
our routes as stale never sees End-of-RIB before them.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Callable, Iterable, Mapping

from . import api
from .errors import BGPError, CommandRejected, ConfigError, ExaBGPExited
from .exabgp_config import exabgp_env, redact, render_config
from .model import BestRoute, PeerStatus, SpeakerConfig, SpeakerStatus
from .policy import ImportPolicy, RejectionCounter
from .rib import Rib
from .supervisor import Backoff, terminate

_STATE_NAMES = {"connected": "connect", "up": "established", "down": "down"}
_UNIX_PATH_MAX = 107


def _chunks(items: list, size: int = api.BULK_CHUNK) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class _Peer:
    __slots__ = ("address", "asn", "state", "since", "last_error", "eor_received")

    def __init__(self, address: IPv4Address, asn: int) -> None:
        self.address = address
        self.asn = asn
        self.state = "idle"
        self.since = time.time()
        self.last_error: str | None = None
        self.eor_received = False

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()
            # End-of-RIB (RFC 4724 §2) marks the end of one session's initial update burst.
            self.eor_received = False


class Speaker:
    """Runs and supervises ExaBGP for one node; see module doc.

    ``on_routes(loc_rib)`` receives the full Loc-RIB (prefix → BestRoute) after each change,
    coalesced to at most one call per event-loop pass. It runs in the event loop and must not
    block. Timing knobs (seconds) are keyword-only; ``exabgp_speed`` is
    ``exabgp.reactor.speed``.
    """

    def __init__(self, config: SpeakerConfig,
                 on_routes: Callable[[Mapping[IPv4Network, BestRoute]], None], *,
                 log: logging.Logger = logging.getLogger("bgp.speaker"),
                 exabgp_speed: float = 0.1, ack_timeout: float = 30.0,
                 kill_timeout: float = 5.0, backoff: Backoff | None = None,
                 relay_python: str | None = None) -> None:
        self.config = config
        self._on_routes = on_routes
        self.log = log
        self._speed = exabgp_speed
        self._ack_timeout = ack_timeout
        self._kill_timeout = kill_timeout
        self._backoff = backoff or Backoff()
        self._relay_python = relay_python or ("/usr/bin/python3" if os.path.exists(
            "/usr/bin/python3") else sys.executable)
        self._secrets = [p.password for p in config.peers if p.password]
        self._desired: set[IPv4Network] = set(config.announce)
        # Prefixes the current ExaBGP process may hold in its Adj-RIB-Out.
        self._in_exabgp: set[IPv4Network] = set()
        self._synced: set[IPv4Network] = set()
        self._peers = {p.address: _Peer(p.address, p.asn) for p in config.peers}
        self._policy = ImportPolicy(tuple(config.import_pools), tuple(config.own_blocks),
                                    config.node_ip)
        self._rejections = RejectionCounter()
        self._rib = Rib(config.local_as)
        for p in config.peers:
            self._rib.set_peer(p.address, p.asn)
        self._session: api.ApiSession | None = None
        self._session_tasks: set[asyncio.Task] = set()
        self._needs_replay = False
        self._pending_eor: set[IPv4Address] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._starts = 0
        self._last_exit: str | None = None
        self._routes_scheduled = False
        self._output_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.sessions = 0
        self._running = False
        self.socket_path = Path(config.state_dir) / "api.sock"
        self.config_path = Path(config.state_dir) / "exabgp.conf"
        if len(str(self.socket_path)) > _UNIX_PATH_MAX:
            raise ConfigError(f"state_dir too long for a unix socket path: {self.socket_path}")

    # ---------------- public API ----------------

    def set_announcements(self, prefixes: Iterable[IPv4Network]) -> None:
        """Replace the desired announced set; sent (diffed) when an API session is up."""
        self._desired = set(prefixes)
        self._wake.set()

    def status(self) -> SpeakerStatus:
        """A snapshot: per-peer state and counters, ExaBGP pid/restarts/last exit."""
        peers = []
        for addr, p in self._peers.items():
            accepted = len(self._rib.adj_rib_in(addr))
            rejected = self._rejections.count(addr)
            peers.append(PeerStatus(
                address=addr, asn=p.asn, state=p.state, since=p.since,
                prefixes_received=accepted + rejected, prefixes_accepted=accepted,
                prefixes_rejected=rejected, last_error=p.last_error,
                rejected_by_reason=tuple(sorted(self._rejections.by_reason(addr).items())),
                eor_received=p.eor_received))
        proc = self._proc
        return SpeakerStatus(
            peers=tuple(peers),
            exabgp_pid=proc.pid if proc is not None and proc.returncode is None else None,
            exabgp_restarts=max(0, self._starts - 1), last_exit=self._last_exit,
            announced=tuple(sorted(self._desired)))

    def best_routes(self) -> Mapping[IPv4Network, BestRoute]:
        """The current Loc-RIB (a copy)."""
        return self._rib.loc_rib()

    async def run(self) -> None:
        """Serve the relay socket and keep ExaBGP running until :meth:`stop`.

        Restarts ExaBGP with exponential backoff (1 s doubling to 30 s, reset after 60 s of
        uptime), logging each exit with its code and output tail. Raises ConfigError if the
        config cannot be rendered, BGPError if the socket cannot be served.
        """
        if self._running:
            raise BGPError("Speaker.run() is already running")
        text = render_config(self.config, self.socket_path, self._relay_python)
        try:
            Path(self.config.state_dir).mkdir(parents=True, exist_ok=True)
            # 0600: the file may hold md5 passwords.
            fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self.socket_path.unlink(missing_ok=True)
        except OSError as exc:
            raise BGPError(f"cannot prepare state dir {self.config.state_dir}: {exc}") from exc
        self.log.debug("rendered ExaBGP config %s:\n%s", self.config_path, redact(text))
        try:
            server = await asyncio.start_unix_server(self._on_connection, path=str(self.socket_path),
                                                     limit=4 * 1024 * 1024)
        except OSError as exc:
            raise BGPError(f"cannot serve {self.socket_path}: {exc}") from exc
        os.chmod(self.socket_path, 0o600)
        self._running = True
        sync_task = asyncio.create_task(self._sync_loop(), name="bgp-sync")
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    await self._run_once()
                except OSError as exc:
                    self._last_exit = f"failed to start {self.config.exabgp_bin}: {exc}"
                    self.log.error("%s", self._last_exit)
                if self._stop.is_set():
                    break
                delay = self._backoff.next_delay(time.monotonic() - started)
                self.log.warning("restarting ExaBGP in %.1f s (restarts so far: %d)",
                                 delay, max(0, self._starts - 1))
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            sync_task.cancel()
            server.close()
            for t in list(self._session_tasks):
                t.cancel()
            if self._session is not None:
                self._session.close()
            await asyncio.gather(sync_task, *self._session_tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
            try:
                self.socket_path.unlink()
            except FileNotFoundError:
                pass
            if self._proc is not None and self._proc.returncode is None:
                await terminate(self._proc, self._kill_timeout)
            self._running = False
            self._stopped.set()

    async def stop(self, timeout: float = 10.0) -> None:
        """Withdraw our routes (bounded by ``timeout`` s), SIGTERM ExaBGP by PID (SIGKILL after
        ``kill_timeout``), close the socket, and wait for :meth:`run` to return."""
        if self._stop.is_set():
            return
        if not self._running:
            self._stop.set()
            return
        session = self._session
        if session is not None and not session.closed and self._in_exabgp:
            try:
                await asyncio.wait_for(
                    session.commands(api.cmds_bulk_withdraw(self._in_exabgp)), timeout)
                self._in_exabgp.clear()
                # Give the reactor a beat to put the UPDATE on the wire before SIGTERM.
                await asyncio.sleep(min(0.5, 5 * self._speed))
            except (BGPError, asyncio.TimeoutError) as exc:
                self.log.warning("withdraw on stop failed: %s", exc)
        self._stop.set()
        self._wake.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            await terminate(proc, self._kill_timeout)
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout + 2 * self._kill_timeout)
        except asyncio.TimeoutError:
            self.log.error("speaker run() did not finish within the stop timeout")

    # ---------------- ExaBGP child ----------------

    def _exabgp_argv(self) -> list[str]:
        exe = self.config.exabgp_bin
        if os.sep not in exe:
            found = shutil.which(exe)
            if found is None:
                beside = Path(sys.executable).parent / exe
                found = str(beside) if beside.exists() else exe
            exe = found
        return [exe, "server", str(self.config_path)]

    async def _run_once(self) -> None:
        env = dict(os.environ)
        env.update(exabgp_env(self.config, self._speed))
        self._output_tail.clear()
        self._in_exabgp.clear()
        self._synced.clear()
        proc = await asyncio.create_subprocess_exec(
            *self._exabgp_argv(), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=str(self.config.state_dir), start_new_session=True)
        self._proc = proc
        self._starts += 1
        self.log.info("started ExaBGP pid %d (start #%d)", proc.pid, self._starts)
        if self._stop.is_set():  # stop() ran while we were spawning
            await terminate(proc, self._kill_timeout)
        assert proc.stdout is not None
        reader = asyncio.create_task(self._drain_output(proc.stdout))
        code = await proc.wait()
        try:
            await asyncio.wait_for(reader, 2)
        except asyncio.TimeoutError:
            reader.cancel()
        tail = "\n".join(self._output_tail)
        self._last_exit = f"exit code {code}" + (f"; output tail:\n{tail}" if tail else "")
        log = self.log.info if self._stop.is_set() else self.log.error
        log("ExaBGP pid %d exited with code %s; last output:\n%s", proc.pid, code, tail)
        self._on_exabgp_gone(f"exabgp exited ({code})")

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    async def _drain_output(self, stream: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await stream.readline()
            except (ValueError, OSError):
                continue
            if not line:
                return
            text = self._redact(line.decode("utf-8", "replace").rstrip())
            self._output_tail.append(text)
            self.log.debug("exabgp: %s", text)

    def _on_exabgp_gone(self, reason: str) -> None:
        self._in_exabgp.clear()
        self._synced.clear()
        self._pending_eor.clear()
        for addr, p in self._peers.items():
            if p.state != "idle":
                p.set_state("down")
                p.last_error = reason
            self._flush_peer(addr)

    # ---------------- API sessions ----------------

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        old = self._session
        if old is not None:
            old.close()
        session = api.ApiSession(reader, writer, self._on_event, ack_timeout=self._ack_timeout)
        self._session = session
        self.sessions += 1
        self._needs_replay = True
        self.log.info("ExaBGP API session %d connected", self.sessions)
        self._wake.set()
        task = asyncio.current_task()
        if task is not None:
            self._session_tasks.add(task)
        try:
            await session.read_loop()
        finally:
            if task is not None:
                self._session_tasks.discard(task)
            if self._session is session:
                self._session = None
            self.log.info("ExaBGP API session closed")

    async def _sync_loop(self) -> None:
        """Single writer: replays/diffs announcements and sends pending End-of-RIBs."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            session = self._session
            if session is None or session.closed or self._stop.is_set():
                continue
            try:
                await self._sync(session)
            except ExaBGPExited as exc:
                self.log.warning("announcement sync interrupted: %s", exc)
            except BGPError as exc:
                self.log.error("announcement sync failed: %s", exc)
                if not session.closed:
                    # Retry later rather than spin on a rejected command.
                    await asyncio.sleep(1.0)
                    self._wake.set()

    async def _sync(self, session: api.ApiSession) -> None:
        if self._needs_replay:
            self._needs_replay = False
            self._synced.clear()
        desired = set(self._desired)
        gone = sorted((self._in_exabgp | self._synced) - desired)
        new = sorted(desired - self._synced)
        rejected = False
        for line, chunk in zip(api.cmds_bulk_withdraw(gone), _chunks(gone)):
            await session.command(line)
            self._in_exabgp.difference_update(chunk)
            self._synced.difference_update(chunk)
        for line, chunk in zip(api.cmds_bulk_announce(new), _chunks(new)):
            self._in_exabgp.update(chunk)
            try:
                await session.command(line)
            except CommandRejected as exc:
                # Keep going: a bad prefix must not hold back End-of-RIB for the rest.
                self.log.error("%s", exc)
                rejected = True
                continue
            self._synced.update(chunk)
        if new and not rejected:
            self.log.info("announced %d prefixes", len(new))
        for peer in sorted(self._pending_eor):
            if self._peers.get(peer) is not None and self._peers[peer].state != "established":
                self._pending_eor.discard(peer)
                continue
            await session.command(api.cmd_eor(peer))
            self._pending_eor.discard(peer)
            self.log.info("sent End-of-RIB to %s", peer)

    # ---------------- events ----------------

    def _on_event(self, ev: api.Event) -> None:
        if isinstance(ev, api.UpdateEvent):
            self._on_update(ev)
        elif isinstance(ev, api.StateEvent):
            p = self._peer(ev.peer)
            new = _STATE_NAMES.get(ev.state, ev.state)
            self.log.info("peer %s %s%s", ev.peer, new, f" ({ev.reason})" if ev.reason else "")
            p.set_state(new)
            if ev.state == "up":
                self._pending_eor.add(ev.peer)
                self._wake.set()
            elif ev.state == "down":
                p.last_error = ev.reason
                self._pending_eor.discard(ev.peer)
                self._flush_peer(ev.peer)
        elif isinstance(ev, api.OpenEvent):
            self._rib.set_peer(ev.peer, self._peer(ev.peer).asn, ev.router_id)
        elif isinstance(ev, api.NotificationEvent):
            if ev.shutdown:
                self.log.info("ExaBGP announced shutdown")
            elif ev.peer is not None:
                self._peer(ev.peer).last_error = (
                    f"notification {ev.code}/{ev.subcode} {ev.message}".rstrip())
        elif isinstance(ev, api.EorEvent):
            self.log.info("End-of-RIB from %s (%s %s)", ev.peer, ev.afi, ev.safi)
            self._peer(ev.peer).eor_received = True
            # Consumers waiting for initial convergence (graceful restart) re-check now.
            self._schedule_routes()

    def _peer(self, addr: IPv4Address) -> _Peer:
        p = self._peers.get(addr)
        if p is None:
            p = self._peers[addr] = _Peer(addr, self.config.local_as)
        return p

    def _on_update(self, ev: api.UpdateEvent) -> None:
        accepted = []
        withdrawn = list(ev.withdrawn)
        self._rejections.clear(ev.peer, ev.withdrawn)
        for prefix, nh, attrs in ev.announced:
            reason = self._policy.check(prefix, nh)
            if reason is None:
                self._rejections.clear(ev.peer, (prefix,))
                accepted.append((prefix, attrs))
            else:
                self.log.debug("rejected %s via %s from %s: %s", prefix, nh, ev.peer, reason)
                self._rejections.reject(ev.peer, prefix, reason)
                withdrawn.append(prefix)  # implicit withdraw of an earlier accepted path
        if self._rib.update(ev.peer, accepted, withdrawn):
            self._schedule_routes()

    def _flush_peer(self, peer: IPv4Address) -> None:
        self._rejections.flush_peer(peer)
        if self._rib.flush_peer(peer):
            self._schedule_routes()

    def _schedule_routes(self) -> None:
        if self._routes_scheduled:
            return
        self._routes_scheduled = True
        asyncio.get_running_loop().call_soon(self._deliver_routes)

    def _deliver_routes(self) -> None:
        self._routes_scheduled = False
        try:
            self._on_routes(self._rib.loc_rib())
        except Exception:
            self.log.exception("on_routes callback failed")
