"""`podroute status --wait SECONDS`: retries while the agent's socket is not there yet."""
from __future__ import annotations

import json
import socket
import threading
import time

from podroute import cli

REPLY = {"node": "n1", "bgp": {"peers": []}}


def serve_later(path, started: threading.Event) -> threading.Thread:
    """Bind ``path`` only once ``started`` is set and a moment has passed, answer one query."""
    def run() -> None:
        started.wait(10)
        time.sleep(0.5)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
            srv.bind(str(path))
            srv.listen(1)
            srv.settimeout(10)
            conn, _ = srv.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(json.dumps(REPLY).encode() + b"\n")
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_status_without_wait_fails_at_once_when_no_agent(tmp_path, capsys):
    assert cli.main(["status", "--socket", str(tmp_path / "agent.sock")]) == 1
    assert "not running" in capsys.readouterr().err


def test_status_wait_answers_once_the_agent_listens(tmp_path, capsys):
    sock = tmp_path / "agent.sock"
    started = threading.Event()
    t = serve_later(sock, started)
    started.set()
    assert cli.main(["status", "--socket", str(sock), "--json", "--wait", "30"]) == 0
    assert json.loads(capsys.readouterr().out) == REPLY
    t.join(10)


def test_status_wait_gives_up_after_its_deadline(tmp_path, capsys):
    assert cli.main(["status", "--socket", str(tmp_path / "agent.sock"), "--wait", "0.3"]) == 1
    assert "not running" in capsys.readouterr().err
