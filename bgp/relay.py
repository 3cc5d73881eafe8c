"""ExaBGP API helper: hands ExaBGP's pipes to the speaker, then waits as ``cat``.

Run by ExaBGP as ``/usr/bin/python3 -I -S relay.py <unix socket path>`` (stdlib only, no
imports of ours, so it starts in tens of milliseconds). ExaBGP writes events (one JSON object
per line) to our stdin and reads commands (one per line) from our stdout.

Rather than copy bytes between those pipes and a socket for the life of the session (a
Python process of ~10 MB RSS and one more hop per event), the helper:

1. connects to the speaker's unix socket and sends :data:`HELLO` with its stdin and stdout
   attached as SCM_RIGHTS (unix(7)): the speaker then reads events from, and writes commands
   to, ExaBGP's own pipes;
2. replaces itself (same PID, so ExaBGP still sees its helper alive) with ``cat`` reading the
   socket, with stdout on /dev/null. Nothing is ever written to the socket, so ``cat`` exits
   0 when the speaker closes the session (or dies), and ExaBGP respawns the helper: a new
   session, as before. If ``cat`` cannot be run, this process waits for that EOF itself.

Exit codes: 0 after the session ends, 1 if the socket cannot be reached or the hand-off fails
(ExaBGP respawns the helper either way), 2 on bad usage.
"""
import os
import socket
import sys
import time

HELLO = b"podroute-relay 2\n"
CAT = "/bin/cat"


def _connect(path, attempts=50, delay=0.1):
    last = None
    for _ in range(attempts):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as exc:
            last = exc
            s.close()
            time.sleep(delay)
    sys.stderr.write("relay: cannot connect to %s: %s\n" % (path, last))
    return None


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: relay.py <unix socket path>\n")
        return 2
    sock = _connect(argv[1])
    if sock is None:
        return 1
    try:
        socket.send_fds(sock, [HELLO], [0, 1])
    except OSError as exc:
        sys.stderr.write("relay: hand-off failed: %s\n" % exc)
        return 1
    # Our copies of the pipes go: the speaker's are the only ones left besides ExaBGP's, so
    # the speaker closing its ends is seen by ExaBGP (POLLHUP) and vice versa.
    os.dup2(sock.fileno(), 0)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    sock.close()
    try:
        os.execv(CAT, [CAT])
    except OSError:
        pass
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
