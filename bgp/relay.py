"""ExaBGP API helper: relay between ExaBGP's pipes and the speaker's unix socket.

Run by ExaBGP as ``/usr/bin/python3 -I -S relay.py <unix socket path>`` (stdlib only, no
imports of ours, so it starts in tens of milliseconds). ExaBGP writes events (one JSON object
per line) to our stdin and reads commands (one per line) from our stdout.

- stdin lines are forwarded to the socket; stdin is drained continuously even when the socket
  is slow, because ExaBGP's writes to this pipe block its reactor (FACTS pitfall 4);
- socket lines are written to stdout and flushed at once;
- the relay exits when either side closes (exit 0 on ExaBGP closing stdin, 1 on socket loss or
  connect failure) so ExaBGP respawns it and the speaker sees a new API session.
"""
import os
import socket
import sys
import threading
import time


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
    sys.exit(1)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: relay.py <unix socket path>\n")
        return 2
    sock = _connect(argv[1])
    done = threading.Event()
    code = [0]

    def stdin_to_socket():
        # Reads stdin as fast as ExaBGP writes; sendall may block on a slow speaker but the
        # kernel socket buffer plus the speaker's reader keep this short.
        fd = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
        try:
            while True:
                chunk = os.read(fd.fileno(), 65536)
                if not chunk:
                    code[0] = 0
                    break
                sock.sendall(chunk)
        except OSError:
            code[0] = 1
        done.set()

    def socket_to_stdout():
        out = sys.stdout.buffer
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    code[0] = 1
                    break
                out.write(chunk)
                out.flush()
        except OSError:
            code[0] = 1
        done.set()

    for target in (stdin_to_socket, socket_to_stdout):
        threading.Thread(target=target, daemon=True).start()
    done.wait()
    try:
        sock.close()
    except OSError:
        pass
    return code[0]


if __name__ == "__main__":
    # os._exit: daemon threads may still sit in blocking reads; nothing else needs cleanup.
    os._exit(main(sys.argv))
