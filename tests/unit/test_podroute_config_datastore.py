"""The node config's ``datastore:`` and ``ipam:`` sections, and the datastore factory."""
from __future__ import annotations

import json
import sys
import types
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from podroute.config import DatastoreConfig, EtcdConfig, IpamConfig, NodeConfig, parse
from podroute.config_datastore import DEFAULT_LEASE_TTL_S, DEFAULT_MAX_BLOCKS_PER_HOST, DEFAULT_RELEASE_GRACE_S
from podroute.datastore.etcdstore import EtcdDatastore, parse_endpoint
from podroute.datastore.filestore import FileDatastore
from podroute.datastore.open import open_datastore
from podroute.schema import ConfigError

BASE = {"nodeName": "n1", "nodeIP": "198.18.0.11"}
STATIC = {"podCIDRs": ["198.19.1.0/26"], "ipPools": [{"cidr": "198.19.0.0/16"}]}
ETCD = {"type": "etcd", "etcd": {"endpoints": ["http://198.18.0.2:2379"]}}


def cfg(**kw) -> NodeConfig:
    return parse({**BASE, **kw}, "node.yaml")


def bad(match: str, **kw) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)


def test_defaults_are_the_file_datastore_and_calicos_ipam_defaults():
    c = cfg(**STATIC)
    assert c.datastore == DatastoreConfig("file", EtcdConfig(), DEFAULT_LEASE_TTL_S)
    assert not c.datastore.claims_blocks
    assert c.ipam == IpamConfig(DEFAULT_MAX_BLOCKS_PER_HOST, DEFAULT_RELEASE_GRACE_S)
    assert (DEFAULT_LEASE_TTL_S, DEFAULT_MAX_BLOCKS_PER_HOST, DEFAULT_RELEASE_GRACE_S) == (30.0, 0, 60.0)
    assert c.labels == () and c.rr_cluster_id is None


def test_etcd_node_needs_neither_pod_cidrs_nor_pools():
    c = cfg(datastore={**ETCD, "etcd": {"endpoints": ["http://198.18.0.2:2379/", "etcd.lab:2379"],
                                        "prefix": "/pr/"}, "leaseTTL": 10},
            ipam={"maxBlocksPerHost": 4, "releaseGracePeriod": 5},
            labels={"rack": "r1"}, routeReflectorClusterID="198.18.0.11")
    assert c.pod_cidrs == () and c.ip_pools == ()
    assert c.datastore == DatastoreConfig("etcd", EtcdConfig(("http://198.18.0.2:2379", "etcd.lab:2379"),
                                                             "/pr/"), 10.0)
    assert c.datastore.claims_blocks
    assert c.ipam == IpamConfig(4, 5.0)
    assert c.labels == (("rack", "r1"),) and c.rr_cluster_id == IPv4Address("198.18.0.11")


def test_etcd_node_with_static_blocks_and_no_pools_is_accepted():
    c = cfg(datastore=ETCD, podCIDRs=["198.19.1.0/26"])
    assert c.pod_cidrs == (IPv4Network("198.19.1.0/26"),) and c.ip_pools == ()


def test_the_file_datastore_still_requires_pod_cidrs_and_pools():
    bad("^node.yaml: ipPools: is required$")
    bad("^node.yaml: podCIDRs: is required$", ipPools=[{"cidr": "198.19.0.0/16"}])


@pytest.mark.parametrize("kw,match", [
    ({"datastore": ETCD, "clusterFile": "/etc/podroute/cluster.yaml"},
     r"^node.yaml: clusterFile: is for datastore type file; with type etcd the datastore holds"),
    ({"datastore": {"type": "kubernetes"}}, r"^node.yaml: datastore.type: 'kubernetes' is not one of file, etcd$"),
    ({"datastore": {"type": "etcd"}}, r"^node.yaml: datastore.etcd.endpoints: is required$"),
    ({"datastore": {"type": "etcd", "etcd": {"endpoints": []}}},
     r"^node.yaml: datastore.etcd.endpoints: needs at least 1 item"),
    ({"datastore": {"type": "etcd", "etcd": {"endpoints": ["https://198.18.0.2:2379"]}}},
     r"^node.yaml: datastore.etcd.endpoints\[0\]: etcd endpoint 'https://198.18.0.2:2379': only http:// is "
     r"supported \(no TLS yet\)$"),
    ({"datastore": {"type": "etcd", "etcd": {"endpoints": ["http://e:99999"]}}},
     r"^node.yaml: datastore.etcd.endpoints\[0\]: etcd endpoint 'http://e:99999': want http://<host>:<port>"),
    ({"datastore": {**ETCD, "etcd": {**ETCD["etcd"], "prefix": "podroute"}}},
     r"^node.yaml: datastore.etcd.prefix: bad etcd key prefix 'podroute': want an absolute path ending in '/'"),
    ({"datastore": {**ETCD, "etcd": {**ETCD["etcd"], "prefix": "/a//b/"}}},
     r"^node.yaml: datastore.etcd.prefix: bad etcd key prefix '/a//b/'"),
    ({"datastore": {**ETCD, "etcd": {**ETCD["etcd"], "user": "x"}}}, r"^node.yaml: datastore.etcd.user: unknown key$"),
    ({"datastore": {"etcd": {"endpoints": ["http://198.18.0.2:2379"]}}, **STATIC},
     r"^node.yaml: datastore.etcd: is set but datastore.type is file; set type: etcd or remove it$"),
    ({"datastore": {**ETCD, "leaseTTL": 1}}, r"^node.yaml: datastore.leaseTTL: 1 is out of range 2..86400$"),
    ({"datastore": {**ETCD, "leaseTtl": 5}}, r"^node.yaml: datastore.leaseTtl: unknown key$"),
    ({"datastore": ETCD, "ipam": {"maxBlocksPerHost": -1}},
     r"^node.yaml: ipam.maxBlocksPerHost: -1 is out of range 0..1048576$"),
    ({"datastore": ETCD, "ipam": {"releaseGracePeriod": "1m"}},
     r"^node.yaml: ipam.releaseGracePeriod: expected a number, got '1m'"),
    ({"datastore": ETCD, "ipam": {"strictAffinity": True}}, r"^node.yaml: ipam.strictAffinity: unknown key$"),
    ({"datastore": ETCD, "labels": {"rack": 1}}, r"^node.yaml: labels.rack: expected a string label value, got 1$"),
    ({"datastore": ETCD, "labels": ["rack"]}, r"^node.yaml: labels: expected a mapping of label names"),
    ({"datastore": ETCD, "routeReflectorClusterID": "x"}, r"^node.yaml: routeReflectorClusterID: 'x' is not an IPv4"),
])
def test_bad_datastore_and_ipam_keys_are_named(kw, match):
    bad(match, **kw)


def test_open_datastore_file_none_and_etcd_lazily(tmp_path, monkeypatch):
    assert open_datastore(cfg(**STATIC)) is None
    f = tmp_path / "cluster.yaml"
    store = open_datastore(cfg(**STATIC, clusterFile=str(f)))
    assert isinstance(store, FileDatastore) and store.path == Path(f)
    e = open_datastore(cfg(datastore={**ETCD, "etcd": {**ETCD["etcd"], "prefix": "/x/"}}))
    assert isinstance(e, EtcdDatastore)  # the constructor does no I/O: nothing is dialled here
    assert (e.endpoints, e.layout.prefix, e.location) == (("http://198.18.0.2:2379",), "/x/", "http://198.18.0.2:2379")


# -- the etcd branch's callers, on a stand-in EtcdDatastore over the fake server ----------------

def stand_in(monkeypatch, server):
    """Install an EtcdDatastore stand-in (a FakeDatastore of ``server`` that records closes) as
    podroute.datastore.etcdstore, for the callers of open_datastore."""
    from podroute.datastore.fake import FakeDatastore
    closed = []

    class EtcdDatastore(FakeDatastore):
        def __init__(self, endpoints, *, prefix="/podroute/", timeout_s=5.0):
            super().__init__(server)

        async def close(self):
            closed.append(self)
            await super().close()

    monkeypatch.setitem(sys.modules, "podroute.datastore.etcdstore",  # the config still checks endpoints
                        types.SimpleNamespace(EtcdDatastore=EtcdDatastore, parse_endpoint=parse_endpoint))
    return closed


async def test_prepare_claims_on_its_own_client_and_closes_it(tmp_path, monkeypatch):
    from podroute.blocks_wiring import prepare
    from podroute.datastore import IPPool as StorePool
    from podroute.datastore.fake import FakeServer
    server = FakeServer()
    server.put(StorePool("p", IPv4Network("198.19.0.0/24"), 26))
    closed = stand_in(monkeypatch, server)
    start = await prepare(cfg(datastore=ETCD, paths={"stateDir": str(tmp_path / "s"), "runDir": "/run/x"}))
    assert len(start.blocks) == 1 and start.blocks[0].prefixlen == 26 and len(closed) == 1
    with pytest.raises(ValueError, match="claims blocks"):
        await prepare(cfg(**STATIC))


def test_ipam_show_reads_the_claiming_store_once(tmp_path, monkeypatch, capsys):
    from podroute import cli
    from podroute.datastore import IPAMBlock, IPPool as StorePool, Node
    from podroute.datastore.fake import FakeServer
    server = FakeServer()
    server.put(StorePool("p", IPv4Network("198.19.0.0/24"), 26), Node("n2", IPv4Address("198.18.0.12")),
               IPAMBlock(IPv4Network("198.19.0.64/26"), "n2"))
    closed = stand_in(monkeypatch, server)
    conf = tmp_path / "node.yaml"
    conf.write_text("nodeName: n1\nnodeIP: 198.18.0.11\ndatastore: {type: etcd, etcd: {endpoints: "
                    f"[http://127.0.0.1:2379]}}}}\npaths: {{stateDir: {tmp_path / 's'}, runDir: /run/x}}\n")
    assert cli.main(["ipam", "show", "--json", "--config", str(conf)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(b["cidr"], b["node"]) for b in data["blocks"]] == [("198.19.0.64/26", "n2")]
    assert data["pools"][0]["cidr"] == "198.19.0.0/24" and len(closed) == 1
    server.down()
    assert cli.main(["ipam", "show", "--config", str(conf)]) == 1
    assert "podroute ipam show: datastore: fake datastore is down" in capsys.readouterr().err
