"""podroute's etcd v3 layer: the primitives the etcd datastore is built on.

Client library: ``aetcd`` (1.0, asyncio gRPC). Chosen after trying each candidate against Debian's
etcd 3.4.23 with grpcio 1.85 / protobuf 7:

- ``etcd3`` 0.12 (2020) does not import with protobuf >= 4 ("Descriptors cannot be created directly").
- ``aetcd`` imports, runs every call on the event loop (gRPC aio, per-call deadlines), reports a
  compacted watch start as ``RevisionCompactedError`` (with the compact revision), fails fast with
  UNAVAILABLE while etcd is down, and its channel reconnects by itself after an etcd restart (put/get,
  Version==0 and ModRevision transactions, lease grant/keep-alive/expiry and watch-from-revision all
  behaved as etcd documents).
- ``etcd-sdk-python`` (imports as ``pyetcd``) works too (put/get, transactions, compaction reported)
  but is synchronous (thread-based watches; every call would need ``asyncio.to_thread``) and young.
- ``etcd3gw`` (v3 JSON gateway over ``requests``) is synchronous too, and a watch from a compacted
  revision neither yields nor raises: it cannot be told from a quiet one, so a relist would never run.
Only this package imports aetcd/grpc; their exceptions become podroute's (errors.py) in client.py.
Limits: aetcd dials one endpoint (use a local member or a load balancer for a multi-member cluster) and
has no ``WithRequireLeader`` watch option.

Modules: client.py (EtcdClient: get/get_prefix, create/update/delete as transactions, leases),
watch.py (watch_prefix: list-then-watch, reconnects), lease.py (LeaseKeeper), keys.py (KeyLayout),
types.py (KeyValue, Listing, WatchEvent, Lease), errors.py.

Key layout, under one prefix (default ``/podroute/``, configurable: ``KeyLayout(prefix)``); every value
is a JSON object written by the etcd datastore (podroute/datastore/codec.py). The relative keys are the
cluster model's (``podroute.datastore.model.key_of``: Calico's resource plurals, a block named as Calico
names IPAMBlock objects); keys.py only adds the prefix. Adapted from Calico's etcdv3 layout
(``/calico/resources/v3/projectcalico.org/<plural>/<name>``) and flannel's subnet leases
(``/coreos.com/network/subnets/10.5.67.0-24`` under a TTL lease):

==============================================  ==================================================  ================
key                                             holds                                               written as
==============================================  ==================================================  ================
``/podroute/nodes/<name>``                      a node: address, ASN, RR cluster ID, labels,        put under the
                                                tunnel/VTEP data                                    node's lease
``/podroute/ipamblocks/<cidr>``                 an IPAM block and the node it is affine to;         create
                                                ``<cidr>`` is ``198-19-1-0-26``                     (Version == 0)
``/podroute/ippools/<name>``                    an IP pool: CIDR, block size, encapsulation         create / update
``/podroute/bgppeers/<name>``                   a BGP peer and the nodes it applies to              create / update
``/podroute/bgpconfigurations/default``         cluster BGP configuration                           create / update
==============================================  ==================================================  ================

Writes that may race are transactions: a create compares ``Version(key) == 0`` (flannel's subnet
claim, Calico's etcdv3 Create); an update or a delete compares ``ModRevision(key)`` with the revision
the writer read (Calico's etcdv3 Update/Delete). A losing writer gets EtcdConflict naming the current
value, re-reads and decides again.
"""
from podroute.etcd.client import EtcdClient
from podroute.etcd.errors import (EtcdCompacted, EtcdConflict, EtcdError, EtcdLeaseNotFound,
                                  EtcdUnavailable)
from podroute.etcd.keys import DEFAULT_PREFIX, KeyLayout, block_name, parse_block_name
from podroute.etcd.lease import LeaseKeeper
from podroute.etcd.types import KeyValue, Lease, Listing, WatchEvent
from podroute.etcd.watch import Reconnect, watch_prefix

__all__ = [
    "DEFAULT_PREFIX", "EtcdClient", "EtcdCompacted", "EtcdConflict", "EtcdError", "EtcdLeaseNotFound",
    "EtcdUnavailable", "KeyLayout", "KeyValue", "Lease", "LeaseKeeper", "Listing", "Reconnect",
    "WatchEvent", "block_name", "parse_block_name", "watch_prefix",
]
