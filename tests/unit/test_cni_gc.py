"""CNI 1.1 GC end to end on the agent side: the shim subprocess (CNI_COMMAND=GC) talking to
a live CNIServer + CNIPlugin on FakeWiring."""
from __future__ import annotations

import asyncio
import json
import tempfile
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from cni.fake_wiring import FakeWiring
from cni.ipam import IPAM
from cni.plugin import CNIPlugin
from cni.server import CNIServer

SHIM = Path(__file__).resolve().parents[2] / "cni" / "shim.py"
CONF = {"name": "podnet", "type": "podroute"}


async def shim(command: str, env: dict, conf: dict) -> tuple[int, dict | None]:
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-I", "-S", str(SHIM), env={"CNI_COMMAND": command,
                                                      "CNI_PATH": "/opt/cni/bin", **env},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), 20)
    return proc.returncode, (json.loads(out) if out.strip() else None)


@pytest.fixture
async def live(tmp_path):
    wiring = FakeWiring()
    ipam = IPAM(tmp_path / "ipam", [IPv4Network("198.19.7.0/26")])
    plugin = CNIPlugin(ipam=ipam, wiring=wiring, mtu=1450, reap_delay=0.0)
    with tempfile.TemporaryDirectory(prefix="cnigc-", dir="/tmp") as d:
        path = Path(d) / "cni.sock"
        server = CNIServer(path, plugin)
        task = asyncio.create_task(server.run())
        await asyncio.wait_for(server.ready.wait(), 5)
        yield plugin, wiring, ipam, path
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_gc_through_the_shim_releases_what_the_runtime_no_longer_lists(live):
    plugin, wiring, ipam, path = live
    conf = {**CONF, "cniVersion": "1.0.0", "agentSocket": str(path)}
    for cid in ("keep", "stale"):
        ns = wiring.add_netns(f"/var/run/netns/{cid}")
        rc, out = await shim("ADD", {"CNI_CONTAINERID": cid, "CNI_NETNS": ns,
                                     "CNI_IFNAME": "eth0"}, conf)
        assert rc == 0, out
    stale_host = ipam.get("podnet.stale.eth0").attrs["host_ifname"]

    # A 1.0.0 config does not get GC (CNI spec 1.1.0): code 1, nothing touched.
    rc, out = await shim("GC", {}, {**conf, "cni.dev/valid-attachments": []})
    assert (rc, out["code"]) == (1, 1) and len(ipam.allocations()) == 2

    gc_conf = {**conf, "cniVersion": "1.1.0",
               "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    rc, out = await shim("GC", {}, gc_conf)
    assert (rc, out) == (0, None)  # GC prints nothing on success
    assert set(ipam.allocations()) == {"podnet.keep.eth0"}
    assert not any(r[1] == stale_host for r in wiring.routes)
    await plugin.reap()
    assert stale_host not in wiring.host_links
    keep = ipam.get("podnet.keep.eth0")
    assert (keep.ip, keep.attrs["host_ifname"], 90) in wiring.routes

    rc, out = await shim("GC", {}, {**gc_conf, "cni.dev/valid-attachments": "keep"})
    assert (rc, out["code"]) == (1, 7) and "valid-attachments" in out["msg"]
