"""Several ExaBGP reloads in quick succession against real ExaBGP 5 and BIRD 2 (each BIRD in
its own netns on a bridged fabric): each change adds a neighbor, as when nodes join a mesh
one after another. ExaBGP loses a SIGUSR1 that comes before the previous one is picked up,
and drops a picked-up one while any neighbor has updates queued (bgp/reload.py); a neighbor
that does not answer (``DEAD``: no host) keeps our routes queued. Every added neighbor must
still be loaded, reach Established and get our block."""
from __future__ import annotations

import json
import time

import pytest

from test_bgp_bird import Bird, Driver
from test_bgp_fabric import bird_conf, fabric, peer_of, procs, route_block, speaker_cfg, wait

pytestmark = pytest.mark.privileged
__all__ = ["fabric", "procs"]  # fixtures

SPK = "198.18.0.40"
DEAD = "198.18.0.59"   # on the fabric's subnet, no host: connects hang, updates stay queued
BIRDS = [f"198.18.0.{41 + i}" for i in range(4)]
OWN = "198.19.40.0/26"


def test_quick_successive_reloads_load_every_neighbor_and_replay_to_it(fabric, procs, tmp_path):
    t0 = time.monotonic()
    ns_s = fabric("rl", SPK)
    birds = []
    for i, ip in enumerate(BIRDS):
        b = Bird(fabric(f"rl{i}", ip), tmp_path / f"b{i}",
                 bird_conf(ip, [("nb", ip, SPK)], [f"198.19.{41 + i}.0/26"]))
        b.start()
        procs.append(b)
        birds.append(b)
    peer = {ip: {"address": ip, "asn": 64512, "hold_time": 9} for ip in [DEAD, *BIRDS]}
    d = Driver(ns_s, speaker_cfg(tmp_path / "s", SPK, [peer[DEAD], peer[BIRDS[0]]],
                                 announce=[OWN], own_blocks=[OWN]), tmp_path / "s")
    procs.append(d)
    d.poll_status(lambda s: peer_of(s, BIRDS[0])["state"] == "established", 30, "first BIRD up")
    wait(lambda: OWN in route_block(birds[0], OWN), 15, "the first BIRD learns our block")

    # Three changes back to back: each rewrites the config and asks for a reload.
    for n in range(2, len(BIRDS) + 1):
        d.send("peers " + json.dumps([peer[DEAD]] + [peer[ip] for ip in BIRDS[:n]]))
    st = d.poll_status(lambda s: all(peer_of(s, ip)["state"] == "established" for ip in BIRDS),
                       45, "every BIRD Established")
    for i, b in enumerate(birds):
        wait(lambda b=b: OWN in route_block(b, OWN), 15, f"BIRD {BIRDS[i]} learns our block")
    st = d.poll_status(lambda s: not s["reload_pending"], 15, "no reload pending")
    assert st["exabgp_restarts"] == 0
    log = d.log_path.read_text()
    assert "does not know neighbor" not in log
    print(f"reloads {st['reloads']}, re-sent {st['reload_retries']}; "
          f"{time.monotonic() - t0:.1f} s")
