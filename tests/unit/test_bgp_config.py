"""bgp.exabgp_config: the rendered config passes ``exabgp validate``; secrets stay out of logs."""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from ipaddress import IPv4Address as A, IPv4Network as N
from pathlib import Path

import pytest

from bgp.errors import ConfigError
from bgp.exabgp_config import exabgp_env, render_config
from bgp.model import PeerConfig, SpeakerConfig
from bgp.speaker import Speaker
from bgp.supervisor import Backoff

EXABGP = str(Path(sys.executable).parent / "exabgp")
SECRET = "s3cr3t-Pa55"


def config(tmp_path: Path, **kw) -> SpeakerConfig:
    base = dict(
        router_id=A("198.18.0.2"), local_as=64512, local_address=A("198.18.0.2"),
        peers=(PeerConfig(A("198.18.0.1"), 64512, password=SECRET, hold_time=9, name="rr 1"),
               PeerConfig(A("198.18.0.3"), 65001, passive=True, multihop_ttl=4, port=1179,
                          local_address=A("198.18.0.4"))),
        announce=(N("198.19.3.0/26"),), import_pools=(N("198.19.0.0/16"),),
        own_blocks=(N("198.19.3.0/26"),), node_ip=A("198.18.0.2"), state_dir=tmp_path)
    base.update(kw)
    return SpeakerConfig(**base)


def validate(cfg: SpeakerConfig, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "exabgp.conf"
    path.write_text(render_config(cfg, tmp_path / "api.sock"))
    env = {**os.environ, **exabgp_env(cfg)}
    return subprocess.run([EXABGP, "validate", str(path)], capture_output=True, text=True,
                          env=env, timeout=60)


def test_rendered_config_validates(tmp_path):
    cfg = config(tmp_path)
    text = render_config(cfg, tmp_path / "api.sock")
    for needle in ("process podroute", "encoder json;", "neighbor 198.18.0.1 {",
                   "router-id 198.18.0.2;", "local-as 64512;", "peer-as 65001;",
                   "hold-time 9;", "ipv4 unicast;", "graceful-restart 120;", "route-refresh;",
                   "manual-eor true;", "passive true;", "listen 179;", "connect 1179;",
                   "outgoing-ttl 4;", "local-address 198.18.0.4;", "processes [ podroute ];",
                   "neighbor-changes;", "parsed;", "notification;", "open;",
                   f"md5-password '{SECRET}';", "bgp/relay.py"):
        assert needle in text, needle
    proc = validate(cfg, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validate_catches_a_broken_config(tmp_path):
    """Guards the test above: exabgp validate really fails on a bad file."""
    path = tmp_path / "bad.conf"
    path.write_text(render_config(config(tmp_path), tmp_path / "s").replace("hold-time 9;",
                                                                             "hold-time x;"))
    proc = subprocess.run([EXABGP, "validate", str(path)], capture_output=True, text=True,
                          env={**os.environ, **exabgp_env(config(tmp_path))}, timeout=60)
    assert proc.returncode != 0


@pytest.mark.parametrize("change", [
    dict(peers=()),
    dict(local_as=0),
    dict(graceful_restart_time=5000),
    dict(peers=(PeerConfig(A("198.18.0.1"), 64512, hold_time=2),)),
    dict(peers=(PeerConfig(A("198.18.0.1"), 64512, password="has space"),)),
    dict(peers=(PeerConfig(A("198.18.0.1"), 64512), PeerConfig(A("198.18.0.1"), 64512))),
])
def test_invalid_configs_raise(tmp_path, change):
    with pytest.raises(ConfigError) as exc:
        render_config(config(tmp_path, **change), tmp_path / "s")
    assert "has space" not in str(exc.value)


def test_password_not_in_repr():
    assert SECRET not in repr(PeerConfig(A("198.18.0.1"), 1, password=SECRET))


async def test_password_never_logged(tmp_path, caplog):
    """A fake ExaBGP that prints its whole config (password included) and dies: the speaker
    logs its output tail and the rendered config, both redacted."""
    fake = tmp_path / "fake-exabgp"
    fake.write_text("#!/bin/sh\ncat \"$2\"\necho \"md5 is $exabgp_x\" >&2\nexit 3\n")
    fake.chmod(0o755)
    cfg = config(tmp_path, exabgp_bin=str(fake), state_dir=tmp_path / "st")
    caplog.set_level(logging.DEBUG)
    sp = Speaker(cfg, lambda r: None, backoff=Backoff(initial=0.05, maximum=0.1))
    task = asyncio.create_task(sp.run())
    for _ in range(200):
        if sp.status().exabgp_restarts >= 2:
            break
        await asyncio.sleep(0.02)
    st = sp.status()
    await sp.stop()
    await asyncio.wait_for(task, 5)
    assert st.exabgp_restarts >= 2 and st.last_exit and "exit code 3" in st.last_exit
    assert "md5-password" in caplog.text  # the config really was logged...
    assert SECRET not in caplog.text      # ...without the secret
    assert SECRET not in st.last_exit
    assert (tmp_path / "st" / "exabgp.conf").stat().st_mode & 0o077 == 0
