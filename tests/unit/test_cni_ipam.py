from __future__ import annotations

import json
import multiprocessing as mp
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from cni import ipam as ipam_mod
from cni.errors import IPAMError, IPAMExhausted, TRY_AGAIN_LATER
from cni.ipam import IPAM

BLOCK = IPv4Network("198.19.3.0/29")


def test_allocates_every_address_of_block_except_reserved(tmp_path):
    ipam = IPAM(tmp_path, [BLOCK], reserved=[IPv4Address("198.19.3.1")])
    got = [ipam.allocate(f"net.c{i}.eth0", {}) for i in range(7)]
    assert len(set(got)) == 7
    assert IPv4Address("198.19.3.0") in got and IPv4Address("198.19.3.7") in got  # Calico: all usable
    assert IPv4Address("198.19.3.1") not in got
    with pytest.raises(IPAMExhausted) as ei:
        ipam.allocate("net.c99.eth0", {})
    assert ei.value.code == TRY_AGAIN_LATER and "198.19.3.0/29" in ei.value.msg


def test_idempotent_per_handle(tmp_path):
    ipam = IPAM(tmp_path, [BLOCK])
    a = ipam.allocate("net.c1.eth0", {"x": 1})
    b = ipam.allocate("net.c1.eth0", {"x": 2})
    assert a == b
    assert len(ipam.allocations()) == 1
    assert ipam.get("net.c1.eth0").attrs == {"x": 1}


def test_release_unknown_is_none_and_release_frees(tmp_path):
    ipam = IPAM(tmp_path, [BLOCK])
    assert ipam.release("nope") is None
    ip = ipam.allocate("h1", {})
    assert ipam.release("h1") == ip
    assert ipam.get("h1") is None and ipam.release("h1") is None


def test_round_robin_does_not_reuse_just_released(tmp_path):
    ipam = IPAM(tmp_path, [BLOCK])
    a = ipam.allocate("h1", {})
    ipam.release("h1")
    assert ipam.allocate("h2", {}) != a


def test_persistence_across_instances(tmp_path):
    a = IPAM(tmp_path, [BLOCK])
    ip1 = a.allocate("h1", {"netns": "/var/run/netns/p1"})
    ip2 = a.allocate("h2", {})
    b = IPAM(tmp_path, [BLOCK])
    assert b.get("h1").ip == ip1 and b.get("h1").attrs == {"netns": "/var/run/netns/p1"}
    assert b.allocate("h3", {}) not in (ip1, ip2)
    assert {x.ip for x in a.allocations().values()} == {x.ip for x in b.allocations().values()}


def test_spills_into_second_block(tmp_path):
    blocks = [IPv4Network("198.19.4.0/31"), IPv4Network("198.19.4.64/30")]
    ipam = IPAM(tmp_path, blocks)
    ips = [ipam.allocate(f"h{i}", {}) for i in range(6)]
    assert sorted(ips) == sorted([*blocks[0], *blocks[1]])
    assert len(list(tmp_path.glob("block-*.json"))) == 2


def test_atomic_write_failure_keeps_old_state(tmp_path, monkeypatch):
    ipam = IPAM(tmp_path, [BLOCK])
    ipam.allocate("h1", {})
    path = next(tmp_path.glob("block-*.json"))
    before = path.read_text()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ipam_mod.os, "replace", boom)
    with pytest.raises(IPAMError) as ei:
        ipam.allocate("h2", {})
    assert ei.value.code == 5
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert set(IPAM(tmp_path, [BLOCK]).allocations()) == {"h1"}


def test_state_file_is_valid_json_with_documented_shape(tmp_path):
    ipam = IPAM(tmp_path, [BLOCK])
    ip = ipam.allocate("h1", {"k": "v"})
    doc = json.loads((tmp_path / "block-198.19.3.0-29.json").read_text())
    assert doc["cidr"] == "198.19.3.0/29"
    assert doc["allocations"] == {str(ip): {"handle": "h1", "attrs": {"k": "v"}}}


def test_corrupt_state_is_an_error(tmp_path):
    (tmp_path / "block-198.19.3.0-29.json").write_text("{garbage")
    with pytest.raises(IPAMError):
        IPAM(tmp_path, [BLOCK])


def test_reserve_excludes(tmp_path):
    ipam = IPAM(tmp_path, [IPv4Network("198.19.5.0/31")])
    ipam.reserve(IPv4Address("198.19.5.0"))
    assert ipam.allocate("h", {}) == IPv4Address("198.19.5.1")
    with pytest.raises(IPAMExhausted):
        ipam.allocate("h2", {})


def _worker(state_dir: str, prefix: str, n: int, q) -> None:
    ipam = IPAM(Path(state_dir), [IPv4Network("198.19.6.0/25")])
    q.put([str(ipam.allocate(f"{prefix}.{i}", {})) for i in range(n)])


def test_two_processes_never_share_an_ip(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), f"p{k}", 40, q)) for k in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    all_ips = results[0] + results[1]
    assert len(all_ips) == 80 and len(set(all_ips)) == 80
    assert len(IPAM(tmp_path, [IPv4Network("198.19.6.0/25")]).allocations()) == 80


def test_cached_parse_sees_every_other_writer(tmp_path):
    """Each instance re-parses a block file only when its bytes changed: interleaved writers
    and a same-size hand edit are still seen."""
    blk = IPv4Network("198.19.3.0/30")
    a, b = IPAM(tmp_path, [blk]), IPAM(tmp_path, [blk])
    ips = [a.allocate("h0"), b.allocate("h1"), a.allocate("h2"), b.allocate("h3")]
    assert len(set(ips)) == 4
    assert set(a.allocations()) == set(b.allocations()) == {"h0", "h1", "h2", "h3"}
    path = next(tmp_path.glob("block-*.json"))
    path.write_text(path.read_text().replace('"h3"', '"hX"'))  # same size, in place
    assert "hX" in a.allocations() and "h3" not in b.allocations()
    a.allocations()["hX"].attrs["mutated"] = True  # callers get copies
    assert "mutated" not in a.allocations()["hX"].attrs
