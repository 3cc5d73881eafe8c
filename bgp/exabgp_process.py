"""The ExaBGP child process, its supervision and its API sessions, for
:class:`bgp.speaker.Speaker`.

``exabgp server <state_dir>/exabgp.conf`` (or bgp/exabgp_launch.py under
``SpeakerConfig.exabgp_python``) runs in the caller's network namespace, in its own session,
SIGKILLed when the agent dies. It is restarted with exponential backoff
(:class:`bgp.supervisor.Backoff`: 1 s doubling to 30 s, reset after 60 s of uptime), each exit
logged with its code and the tail of its output (md5 passwords redacted). The config file is
written atomically with mode 0600; SIGUSR1 asks ExaBGP 5 to reload it.

API sessions: :meth:`ExaBGPProcess.serve` serves a unix socket; ExaBGP runs bgp/relay.py as
its API helper, which connects to it and hands over its stdin/stdout pipes (bgp/handoff.py).
Each hand-off is one :class:`bgp.api.ApiSession`; a new one replaces (closes) the previous.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Coroutine

from . import api
from .errors import BGPError
from .exabgp_config import LAUNCH_PATH, exabgp_env, redact
from .handoff import PipeServer
from .model import SpeakerConfig
from .supervisor import Backoff, terminate


def _die_with_parent() -> None:
    """In the ExaBGP child: be SIGKILLed when the agent dies (prctl PR_SET_PDEATHSIG).

    A crashed agent must not leave an orphan ExaBGP holding its sessions (the next agent's
    ExaBGP would collide with it). SIGKILL rather than SIGTERM: no NOTIFICATION is sent, so
    peers see a transport failure and keep our routes as stale (RFC 4724 §4.2) until the
    restarted agent replays them and sends End-of-RIB.
    """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


class ExaBGPProcess:
    """One supervised ExaBGP child (module doc).

    ``config()`` gives the current SpeakerConfig (peers change at run time); ``speed`` is
    ``exabgp.reactor.speed`` (s); ``kill_timeout`` (s) bounds each of SIGTERM and SIGKILL;
    ``on_start()`` runs after each spawn and ``on_exit(reason)`` after each exit.
    """

    def __init__(self, config: Callable[[], SpeakerConfig], config_path: Path, *,
                 speed: float, kill_timeout: float, backoff: Backoff, secrets: list[str],
                 on_start: Callable[[], None], on_exit: Callable[[str], None],
                 log: logging.Logger) -> None:
        self._config = config
        self.config_path = config_path
        self.speed = speed
        self.kill_timeout = kill_timeout
        self._backoff = backoff
        self.secrets = secrets
        self._on_start = on_start
        self._on_exit = on_exit
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.session: api.ApiSession | None = None
        self.sessions = 0  # API sessions so far
        self._session_tasks: set[asyncio.Task] = set()
        self.starts = 0
        self.last_exit: str | None = None
        self._output_tail: collections.deque[str] = collections.deque(maxlen=20)

    @property
    def pid(self) -> int | None:
        """The running child's PID, None when none runs."""
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

    def argv(self) -> list[str]:
        cfg = self._config()
        if cfg.exabgp_python:
            return [cfg.exabgp_python, str(LAUNCH_PATH), "server", str(self.config_path)]
        exe = cfg.exabgp_bin
        if os.sep not in exe:
            found = shutil.which(exe)
            if found is None:
                beside = Path(sys.executable).parent / exe
                found = str(beside) if beside.exists() else exe
            exe = found
        return [exe, "server", str(self.config_path)]

    def write_config(self, text: str) -> None:
        """Write the rendered config atomically, mode 0600 (it may hold md5 passwords).
        Raises BGPError when the state dir cannot be written."""
        state_dir = self._config().state_dir
        tmp = self.config_path.with_suffix(".tmp")
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.config_path)
        except OSError as exc:
            raise BGPError(f"cannot prepare state dir {state_dir}: {exc}") from exc
        self.log.debug("rendered ExaBGP config %s:\n%s", self.config_path, redact(text))

    def signal_reload(self) -> None:
        """SIGUSR1 to the running child (ExaBGP 5: reload the configuration,
        reactor/interrupt.py); nothing when none runs. ExaBGP may lose it without a word:
        bgp/reload.py decides when to send it and checks that it took."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGUSR1)
            self.log.info("asked ExaBGP pid %d to reload its configuration", proc.pid)
        except ProcessLookupError:
            pass

    async def terminate(self) -> None:
        """SIGTERM the running child by PID, SIGKILL after ``kill_timeout``."""
        if self.proc is not None and self.proc.returncode is None:
            await terminate(self.proc, self.kill_timeout)

    async def serve(self, socket_path: Path, on_event: Callable[[api.Event], None],
                    on_session: Callable[[], None], ack_timeout: float, stop: asyncio.Event,
                    peers_set: asyncio.Event, alongside: Coroutine) -> None:
        """Serve ``socket_path`` for API sessions and :meth:`supervise` until ``stop``, with
        ``alongside`` (the sync loop) as a task for as long. ``on_event`` gets every event of
        the current session, ``on_session()`` runs when one starts; ``ack_timeout`` (s)
        bounds each command's ack. Raises BGPError when the socket cannot be served."""
        try:
            socket_path.unlink(missing_ok=True)
        except OSError as exc:
            raise BGPError(f"cannot prepare {socket_path}: {exc}") from exc

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                close: Callable[[], None]) -> None:
            if self.session is not None:
                self.session.close()
            session = self.session = api.ApiSession(reader, writer, on_event,
                                                    ack_timeout=ack_timeout, on_close=close)
            self.sessions += 1
            self.log.info("ExaBGP API session %d connected", self.sessions)
            on_session()
            task = asyncio.current_task()
            if task is not None:
                self._session_tasks.add(task)
            try:
                await session.read_loop()
            finally:
                if task is not None:
                    self._session_tasks.discard(task)
                if self.session is session:
                    self.session = None
                self.log.info("ExaBGP API session closed")

        server = PipeServer(socket_path, on_connection)
        try:
            await server.start()
        except OSError as exc:
            alongside.close()
            raise BGPError(f"cannot serve {socket_path}: {exc}") from exc
        task = asyncio.create_task(alongside, name="bgp-sync")
        try:
            await self.supervise(stop, peers_set)
        finally:
            task.cancel()
            server.close()
            for t in list(self._session_tasks):
                t.cancel()
            if self.session is not None:
                self.session.close()
            await asyncio.gather(task, *self._session_tasks, return_exceptions=True)
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
            try:
                socket_path.unlink()
            except FileNotFoundError:
                pass
            await self.terminate()

    async def supervise(self, stop: asyncio.Event, peers_set: asyncio.Event) -> None:
        """Run ExaBGP, restarting it with backoff, until ``stop`` is set. With no peer
        configured, wait for ``peers_set`` (or ``stop``) instead of starting one."""
        while not stop.is_set():
            if not self._config().peers:
                # No neighbor (say, the first node of a mesh): no ExaBGP until set_peers().
                peers_set.clear()
                waits = {asyncio.ensure_future(stop.wait()),
                         asyncio.ensure_future(peers_set.wait())}
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                continue
            started = time.monotonic()
            try:
                await self._run_once(stop)
            except OSError as exc:
                self.last_exit = f"failed to start {self._config().exabgp_bin}: {exc}"
                self.log.error("%s", self.last_exit)
            if stop.is_set():
                break
            delay = self._backoff.next_delay(time.monotonic() - started)
            self.log.warning("restarting ExaBGP in %.1f s (restarts so far: %d)",
                             delay, self.restarts)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _run_once(self, stop: asyncio.Event) -> None:
        cfg = self._config()
        env = dict(os.environ)
        env.update(exabgp_env(cfg, self.speed))
        self._output_tail.clear()
        self._on_start()
        proc = await asyncio.create_subprocess_exec(
            *self.argv(), env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=str(cfg.state_dir), start_new_session=True, preexec_fn=_die_with_parent)
        self.proc = proc
        self.starts += 1
        self.log.info("started ExaBGP pid %d (start #%d)", proc.pid, self.starts)
        if stop.is_set():  # stop() ran while we were spawning
            await terminate(proc, self.kill_timeout)
        assert proc.stdout is not None
        reader = asyncio.create_task(self._drain_output(proc.stdout))
        code = await proc.wait()
        try:
            await asyncio.wait_for(reader, 2)
        except asyncio.TimeoutError:
            reader.cancel()
        tail = "\n".join(self._output_tail)
        self.last_exit = f"exit code {code}" + (f"; output tail:\n{tail}" if tail else "")
        log = self.log.info if stop.is_set() else self.log.error
        log("ExaBGP pid %d exited with code %s; last output:\n%s", proc.pid, code, tail)
        self._on_exit(f"exabgp exited ({code})")

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
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
