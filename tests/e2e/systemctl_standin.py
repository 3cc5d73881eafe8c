"""A stand-in for ``systemctl enable --now <unit>`` where systemd is not PID 1.

This machine runs no systemd (``systemctl is-system-running``: offline), so the README test
puts this script first in PATH as ``systemctl``. It does what systemd does for podroute's
unit and nothing more, and refuses anything else:

- ``systemd-analyze verify`` of the installed unit must pass (the real tool);
- enable: the ``[Install] WantedBy=`` symlinks under /etc/systemd/system/<target>.wants/;
- ``StateDirectory=``/``RuntimeDirectory=``: /var/lib/<name> and /run/<name> (mode 0755);
- ``ExecStartPre=`` lines run in order and must exit 0 (a leading '-' lets one fail);
- ``ExecStart=`` is started in a new session with ``LimitNOFILE=`` (capped at the hard
  limit this process may not raise), its output appended to
  ``$STANDIN_LOG_DIR/<unit>.log`` and its PID written to ``$STANDIN_LOG_DIR/<unit>.pid``;
  like ``Type=exec``, this returns once the program has been executed; with ``Type=notify``
  it passes ``NOTIFY_SOCKET`` (a datagram socket of its own) and returns once ``READY=1``
  arrives, failing if the program exits first or ``TimeoutStartSec=`` passes. What the
  program sends after that goes nowhere (the stand-in has exited), and ``WatchdogSec=`` is
  not enforced (no ``WATCHDOG_USEC``).

Stdlib only; run by /usr/bin/python3. Exit 0 on success, 1 with the reason otherwise.
"""
from __future__ import annotations

import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), ...]}`` in file order (systemd allows repeated keys)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif current is not None and "=" in line:
            k, v = line.split("=", 1)
            current.append((k.strip(), v.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def fail(msg: str) -> int:
    print(f"systemctl (stand-in): {msg}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[:2] != ["enable", "--now"]:
        return fail(f"only 'enable --now <unit>' is supported, not {' '.join(argv)!r}")
    name = argv[2] if argv[2].endswith(".service") else argv[2] + ".service"
    path = UNIT_DIR / name
    if not path.is_file():
        return fail(f"Unit file {name} does not exist.")
    v = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    if v.returncode != 0 or v.stderr.strip():
        return fail(f"systemd-analyze verify {path}: {v.stderr.strip()}")
    unit = parse_unit(path.read_text())
    service, install = unit.get("Service", []), unit.get("Install", [])
    for target in " ".join(values(install, "WantedBy")).split():
        wants = UNIT_DIR / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / name
        if not link.is_symlink():
            link.symlink_to(path)
    for key, base in (("StateDirectory", "/var/lib"), ("RuntimeDirectory", "/run")):
        for d in " ".join(values(service, key)).split():
            os.makedirs(os.path.join(base, d), mode=0o755, exist_ok=True)
    for cmd in values(service, "ExecStartPre"):
        may_fail = cmd.startswith("-")
        p = subprocess.run(shlex.split(cmd.lstrip("-+!@:")), timeout=300)
        if p.returncode != 0 and not may_fail:
            return fail(f"ExecStartPre {cmd!r} exited {p.returncode}")
    start = values(service, "ExecStart")
    if len(start) != 1:
        return fail(f"{name} needs exactly one ExecStart=, has {len(start)}")
    log_dir = Path(os.environ.get("STANDIN_LOG_DIR", "/run"))
    nofile = values(service, "LimitNOFILE")

    def limits() -> None:
        # systemd (with CAP_SYS_RESOURCE) sets the limit as asked; this sandbox may not raise
        # the hard limit, so the stand-in goes as far as it is allowed
        if nofile:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            n = int(nofile[-1]) if hard == resource.RLIM_INFINITY else min(int(nofile[-1]), hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    notify = (values(service, "Type") or ["simple"])[-1] == "notify"
    env = dict(os.environ)
    if notify:
        sock_dir = tempfile.mkdtemp(prefix="standin-")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.path.join(sock_dir, "notify"))
        env["NOTIFY_SOCKET"] = os.path.join(sock_dir, "notify")
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(shlex.split(start[0].lstrip("-+!@:")), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limits, env=env)
    (log_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    if not notify:
        return 0
    try:
        deadline = time.monotonic() + float((values(service, "TimeoutStartSec") or ["90"])[-1])
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return fail(f"{name}: the program exited ({proc.returncode}) before READY=1")
            try:
                if "READY=1" in sock.recv(4096).decode(errors="replace").split("\n"):
                    return 0
            except socket.timeout:
                pass
        return fail(f"{name}: no READY=1 within TimeoutStartSec")
    finally:
        sock.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
