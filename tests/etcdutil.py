"""A real single-member etcd on loopback for tests: free ports, a data dir in the test's tmp dir,
bounded start-up (waits for ``/health``), stop and restart by PID for outage tests.

etcd is Debian's ``etcd-server`` (installed by ``scripts/setup``); nothing here mocks it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def spawn(argv: list[str], log_path: Path, *, name: str, ready: Callable[[], bool], log_tail: Callable[[], str],
          timeout_s: float, step_s: float, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` with its output appended to ``log_path`` and poll ``ready()`` every
    ``step_s`` until it holds; RuntimeError with ``log_tail()`` if the process exits first or is
    not ready within ``timeout_s`` (then it is stopped by PID)."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} at start-up:\n{log_tail()}")
        if ready():
            return proc
        time.sleep(step_s)
    terminate(proc, STOP_TIMEOUT_S)
    raise RuntimeError(f"{name} not ready within {timeout_s} s:\n{log_tail()}")


def terminate(proc: subprocess.Popen | None, timeout_s: float) -> None:
    """SIGTERM ``proc`` (one we started) by PID, SIGKILL if it has not exited within
    ``timeout_s``, and reap it. Nothing for None or an exited process."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)

class EtcdServer:
    """One etcd process. ``start()`` blocks until it answers ``/health`` (at most START_TIMEOUT_S);
    ``stop()`` sends SIGTERM to its PID and SIGKILL after STOP_TIMEOUT_S; ``restart()`` keeps the data
    dir and the client port, so clients reconnect to the same endpoint with the same data."""

    def __init__(self, workdir: Path, name: str = "podroute-test") -> None:
        self.workdir = workdir
        self.name = name
        self.data_dir = workdir / "etcd-data"
        self.log_path = workdir / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            shutil.which("etcd") or "/usr/bin/etcd",
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--logger", "zap",
            "--log-outputs", "stderr",
            # Short raft timings make the minimum lease TTL 1 s (etcd: 1.5 x election timeout, rounded up),
            # so lease-expiry tests take a second or two instead of several.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--unsafe-no-fsync",
        ]

    def start(self) -> None:
        if self.running():
            raise RuntimeError(f"etcd already running as pid {self.proc.pid}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.proc = spawn(self.argv(), self.log_path, name="etcd", ready=self.healthy, log_tail=self.log_tail,
                          timeout_s=START_TIMEOUT_S, step_s=0.05, env=env)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1.0) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL if it has not exited within STOP_TIMEOUT_S. Idempotent."""
        terminate(self.proc, STOP_TIMEOUT_S)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def etcdctl(self, *args: str, timeout: float = 10.0) -> str:
        """Run Debian's ``etcdctl`` (API v3) against this server; stdout, or CalledProcessError."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        env["ETCDCTL_API"] = "3"
        cp = subprocess.run([shutil.which("etcdctl") or "/usr/bin/etcdctl", "--endpoints", self.endpoint,
                             "--dial-timeout=2s", "--command-timeout=5s", *args],
                            capture_output=True, text=True, timeout=timeout, env=env, check=True)
        return cp.stdout

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no etcd log)"
