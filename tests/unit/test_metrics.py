"""The agent's metrics and health endpoints, on fakes, over real HTTP on loopback: what
/metrics says about BGP, the FIB, CNI and IPAM, promtool's verdict on it, /readyz and /livez
(also while the event loop is blocked on purpose), and the config section."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from ipaddress import IPv4Address, IPv4Network

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_podroute_agent import PEER, cni, make, short_dir  # noqa: F401 - short_dir is a fixture
from waiting import wait_until

from bgp.model import BestRoute
from felix.routes import Route, dst_key
from podroute.config import MetricsConfig, parse
from podroute.metrics.names import DOC
from podroute.schema import ConfigError

LOOPBACK = IPv4Address("127.0.0.1")


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    code, body = await asyncio.to_thread(get, port, "/metrics")
    assert code == 200
    return samples(body)


async def start(d, **kw):
    agent, dp, wiring = make(d, metrics=MetricsConfig(LOOPBACK, 0), **kw)
    run = asyncio.create_task(agent.run(signals=False))
    await wait_until(lambda: agent.metrics.port is not None and agent.felix.synced_at is not None)
    return agent, dp, run


async def stop(agent, run):
    agent._stop.set()
    assert await asyncio.wait_for(run, 20) == 0


async def test_metrics_show_bgp_fib_cni_ipam_and_pass_promtool(short_dir):
    agent, dp, run = await start(short_dir)
    try:
        port = agent.metrics.port
        m = await scrape(port)
        assert m[("podroute_bgp_session_up", (("peer", str(PEER)),))] == 0.0   # FakeSpeaker: connect
        assert m[("podroute_ready", ())] == 0.0
        agent.speaker.converged = True
        await wait_until(lambda: agent.health.served().ok, timeout=5)

        result = await agent.cni_handler.handle(cni("ADD"))           # through the instrumented handler
        remote = IPv4Network("198.19.2.0/26")
        conflict = IPv4Network("198.19.3.0/26")
        dp.add_foreign(Route.via(conflict, "198.18.0.12"))                # another protocol holds it
        agent.bgp.apply({dst_key(n): BestRoute(n, (PEER,), (PEER,)) for n in (remote, conflict)})
        await wait_until(lambda: remote in dp.ours() and agent.felix.failures.failing == 1)

        want = {"remote": 1, "blackhole": 1, "workload": 1, "tunnel": 0}

        async def kinds_now() -> dict:
            m = await scrape(port)
            return {k: m[("podroute_fib_routes", (("kind", k),))] for k in want}
        deadline = time.monotonic() + 5   # the gauge may lag a busy felix by a scrape (collector doc)
        while (kinds := await kinds_now()) != want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        m = await scrape(port)
        assert m[("podroute_bgp_session_up", (("peer", str(PEER)),))] == 1.0
        assert m[("podroute_bgp_session_state", (("peer", str(PEER)), ("state", "established")))] == 1.0
        assert m[("podroute_ready", ())] == 1.0
        assert kinds == want
        assert sum(kinds.values()) == len(dp.ours())                       # what `ip route show proto 90` counts
        assert m[("podroute_fib_write_errors_total", (("errno", "EEXIST"),))] >= 1
        assert m[("podroute_fib_conflict_routes", ())] == 1
        assert m[("podroute_fib_apply_duration_seconds_count", ())] >= 3
        assert m[("podroute_fib_full_resync_duration_seconds_count", ())] >= 1  # the first apply reads the kernel
        assert m[("podroute_fib_route_writes_total", (("action", "add"),))] >= 3
        assert m[("podroute_cni_requests_total", (("code", "0"), ("command", "ADD")))] == 1
        assert m[("podroute_cni_request_duration_seconds_count", (("command", "ADD"),))] == 1
        assert m[("podroute_cni_pods", ())] == 1
        block = (("block", "198.19.1.0/26"),)
        # the pod and the node's tunnel address (reserved) are in use
        assert m[("podroute_ipam_block_addresses", block + (("state", "used"),))] == 2
        assert m[("podroute_ipam_block_addresses", block + (("state", "free"),))] == 62
        assert m[("podroute_ipam_blocks", ())] == 1
        assert m[("process_resident_memory_bytes", ())] > 0
        assert m[("podroute_event_loop_lag_seconds", ())] < 1.0
        code, body = await asyncio.to_thread(get, port, "/metrics")
        exported = {fam.name for fam in text_string_to_metric_families(body.decode())}
        # every documented family is exported (the datastore's need a cluster file)
        assert {n.removesuffix("_total") for n in DOC if not n.startswith("podroute_datastore")} <= exported
        if shutil.which("promtool") is None:
            pytest.skip("promtool (Debian package prometheus) is not installed")
        p = await asyncio.to_thread(subprocess.run, ["promtool", "check", "metrics"], input=body,
                                    capture_output=True, timeout=30)
        assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), (p.stdout, p.stderr)

        await agent.cni_handler.handle(cni("DEL"))
        assert result["ips"]
    finally:
        await stop(agent, run)


async def test_readyz_and_livez_answer_json_with_a_reason_per_check(short_dir):
    agent, _dp, run = await start(short_dir)
    try:
        port = agent.metrics.port
        await wait_until(lambda: agent.health.latest is not None and agent.health.latest.checks["fib"].ok)
        code, body = await asyncio.to_thread(get, port, "/readyz")
        rep = json.loads(body)
        assert code == 503 and rep["ok"] is False and set(rep["checks"]) == {"fib", "bgp", "agent"}
        assert rep["checks"]["bgp"]["ok"] is False and str(PEER) in rep["checks"]["bgp"]["reason"]
        assert rep["checks"]["fib"] == {"ok": True, "reason": "routes programmed"}
        agent.speaker.converged = True
        await wait_until(lambda: agent.health.served().ok, timeout=5)
        code, body = await asyncio.to_thread(get, port, "/readyz")
        assert code == 200 and json.loads(body)["ok"] is True
        code, body = await asyncio.to_thread(get, port, "/livez")
        assert code == 200 and json.loads(body)["checks"]["loop"]["ok"] is True
        assert (await asyncio.to_thread(get, port, "/nope"))[0] == 404
        st = agent.status()  # `podroute status --json` carries the same checks
        assert st["health"]["ready"]["ok"] is True and set(st["health"]["ready"]["checks"]) == {"fib", "bgp", "agent"}
    finally:
        await stop(agent, run)


async def test_a_blocked_loop_fails_livez_readyz_and_drops_loop_families(short_dir):
    agent, _dp, run = await start(short_dir)
    try:
        port = agent.metrics.port
        agent.speaker.converged = True
        await wait_until(lambda: agent.health.served().ok, timeout=5)
        agent.health.live_limit_s, agent.health.stale_s = 0.5, 1.0
        agent.metrics.collector.loop_answer_s = 0.2
        got: dict[str, tuple[int, bytes]] = {}

        def probe() -> None:  # runs while the loop sleeps
            time.sleep(1.5)
            for path in ("/livez", "/readyz", "/metrics"):
                got[path] = get(port, path)
        t = asyncio.get_running_loop().run_in_executor(None, probe)
        time.sleep(2.5)  # noqa: ASYNC251 - blocking the event loop is the point
        await t
        code, body = got["/livez"]
        assert code == 503 and "has not turned" in json.loads(body)["checks"]["loop"]["reason"]
        code, body = got["/readyz"]
        assert code == 503 and json.loads(body)["checks"]["loop"]["ok"] is False
        code, body = got["/metrics"]
        m = samples(body)
        assert m[("podroute_event_loop_lag_seconds", ())] >= 1.0 and m[("podroute_ready", ())] == 0.0
        assert not any(n == "podroute_bgp_session_up" for n, _ in m)  # not served stale
        # and it recovers once the loop turns
        await wait_until(lambda: agent.health.served().ok and agent.health.liveness().ok, timeout=5)
        assert (await asyncio.to_thread(get, port, "/livez"))[0] == 200
    finally:
        await stop(agent, run)


async def test_two_agents_in_one_process_have_their_own_registries(short_dir):
    a1, _, r1 = await start(short_dir / "a")
    a2, _, r2 = await start(short_dir / "b")
    try:
        assert a1.metrics.registry is not a2.metrics.registry and a1.metrics.port != a2.metrics.port
        await a1.cni_handler.handle(cni("ADD"))
        m1, m2 = await scrape(a1.metrics.port), await scrape(a2.metrics.port)
        assert m1[("podroute_cni_pods", ())] == 1 and m2[("podroute_cni_pods", ())] == 0
        await a1.cni_handler.handle(cni("DEL"))
    finally:
        await stop(a1, r1)
        await stop(a2, r2)


def test_agent_without_the_section_has_no_metrics(short_dir):
    agent, _dp, _w = make(short_dir)
    assert agent.metrics is None and agent.cni_handler is agent.cni and agent.felix.on_apply is None


BASE = {"nodeName": "n1", "nodeIP": "198.18.0.11", "podCIDRs": ["198.19.1.0/26"],
        "ipPools": [{"cidr": "198.19.0.0/16"}]}


def test_config_metrics_section():
    assert parse(BASE).metrics is None
    assert parse({**BASE, "metrics": None}).metrics is None
    assert parse({**BASE, "metrics": {}}).metrics == MetricsConfig(IPv4Address("198.18.0.11"), 9091)
    assert parse({**BASE, "metrics": {"address": "198.18.0.20", "port": 9100}}).metrics == \
        MetricsConfig(IPv4Address("198.18.0.20"), 9100)
    with pytest.raises(ConfigError, match=r"metrics\.port.*out of range"):
        parse({**BASE, "metrics": {"port": 70000}})
    with pytest.raises(ConfigError, match=r"metrics\.adress.*unknown key"):
        parse({**BASE, "metrics": {"adress": "198.18.0.20"}})
    with pytest.raises(ConfigError, match=r"metrics\.address"):
        parse({**BASE, "metrics": {"address": "not-an-ip"}})


def test_the_commented_example_in_configs_node_yaml_enables_the_listener():
    import yaml
    from pathlib import Path
    text = (Path(__file__).resolve().parents[2] / "configs" / "node.yaml").read_text()
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("# metrics:"))
    example = [lines[i][2:]] + [line[2:] for line in lines[i + 1:] if line.startswith("#   ")]
    raw = yaml.safe_load(text)
    raw.update(yaml.safe_load("\n".join(example)))
    assert parse(raw).metrics == MetricsConfig(IPv4Address("198.18.0.11"), 9091)


async def test_datastore_families_follow_the_cluster_watch(short_dir):
    f = short_dir / "cluster.yaml"
    f.write_text("nodes:\n  - {name: n1, ip: 198.18.0.11, podCIDRs: [198.19.1.0/26]}\n")
    agent, _dp, run = await start(short_dir, cluster_file=f)
    try:
        agent.cluster.datastore.poll_s = 0.01
        m = await scrape(agent.metrics.port)
        assert m[("podroute_datastore_connected", ())] == 1.0 and m[("podroute_datastore_errors_total", ())] == 0
        before = m[("podroute_datastore_watch_events_total", ())]
        f.write_text(f.read_text() + "  - {name: n2, ip: 198.18.0.12, podCIDRs: [198.19.2.0/26]}\n")
        await wait_until(lambda: agent.cluster.status()["watch_events"] > before)
        m = await scrape(agent.metrics.port)
        assert m[("podroute_datastore_watch_events_total", ())] > before
        assert m[("podroute_datastore_revision", ())] == agent.cluster.status()["revision"]
    finally:
        await stop(agent, run)


async def test_a_listener_that_cannot_bind_stops_the_agent_with_a_failure(short_dir):
    a1, _, r1 = await start(short_dir / "a")
    try:
        a2, _dp, _w = make(short_dir / "b", metrics=MetricsConfig(LOOPBACK, a1.metrics.port))
        code = await asyncio.wait_for(a2.run(signals=False), 20)
        assert code == 1 and [f.name for f in a2.guard.failures] == ["metrics"]
        assert "Address already in use" in a2.guard.failures[0].error
    finally:
        await stop(a1, r1)
