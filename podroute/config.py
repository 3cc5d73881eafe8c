"""The per-node config file: YAML in, a validated frozen :class:`NodeConfig` out.

Shape (every key but nodeName, nodeIP, podCIDRs and ipPools has a default; podCIDRs and
ipPools are optional too with a datastore the node registers in, ``datastore.type: etcd`` or
``kubernetes``, and on kubernetes nodeName and nodeIP too: a node's config can be the same
file on every node, as a DaemonSet's)::

    nodeName: node1                  # DNS-1123 label (kubernetes: optional, NODENAME or the host name)
    nodeIP: 198.18.0.11              # the node's underlay address, BGP next hop for its blocks
                                     # (kubernetes: optional, its Node's InternalIP / annotation)
    asn: 64512                       # local AS, 1..4294967295 (RFC 6793 4-byte ASNs)
    routerID: 198.18.0.11            # BGP identifier, defaults to nodeIP
    podCIDRs: [198.19.1.0/26]        # static IPAM block(s) affine to this node (Calico block
                                     # affinity); without them (etcd) the node claims its own
    ipPools:                         # cluster pools; podCIDRs must lie inside them. With etcd
      - {cidr: 198.19.0.0/16, blockSize: 26, ipipMode: Never, vxlanMode: Never}   # the
                                     # datastore's IPPools win; these are used when it has none
    labels: {rack: r1}               # node labels (BGPPeer nodeSelector), registered with the node
    routeReflectorClusterID: 198.18.0.11   # this node is a route reflector (RFC 4456)
    datastore:
      type: file                     # file (default: clusterFile, or none) | etcd | kubernetes
      etcd:                          # only with type etcd
        endpoints: [http://198.18.0.2:2379]   # http(s)://host:port, at least one
        prefix: /podroute/           # every key lives below it (starts and ends with /)
      kubernetes:                    # only with type kubernetes (labels: the Node's, not set here)
        kubeconfig: /etc/podroute/kubeconfig  # absent: the in-cluster service account
        usePodCIDR: false            # true: the node's block is its Node's spec.podCIDR (no
                                     # claims; podCIDRs refused)
      leaseTTL: 30                   # seconds, 2..86400: the node registration's lease (etcd)
    ipam:
      maxBlocksPerHost: 0            # blocks this node may claim, 0 = no limit (Calico's default)
      releaseGracePeriod: 60         # seconds an empty block / a departed node's blocks wait
                                     # before release, 0..86400
    mtu: auto                        # pod veth MTU 576..9000; auto = underlay MTU minus the
                                     # encapsulation overhead in use (IPIP 20, VXLAN 50)
    clusterFile: /etc/podroute/cluster.yaml   # optional file datastore: other nodes, mesh, RRs
                                     # (refused with datastore.type etcd: etcd holds them)
    peers:                           # BGP peers of this node
      - {address: 198.18.0.1, asn: 64512, holdTime: 90, passive: false,
         passwordFile: /etc/podroute/peer.md5,   # or password: "..."; a regular file, mode
                                                 # 0600, UTF-8, at most 4096 bytes
         sourceAddress: 198.18.0.11,             # local address of the session
         multihopTTL: 2,                         # for a non-adjacent peer (eBGP multihop)
         maxPrefixes: 2000, maxPrefixesAction: reject}   # or teardown (RFC 4486 cease 1)
    importExtraCIDRs: []             # accepted besides ipPools (e.g. another cluster's pools)
    acceptDefaultRoute: false        # a learned 0.0.0.0/0 is rejected unless true
    serviceCIDRs:                    # exported besides the node's blocks (ClusterIP/External/LB)
      - {cidr: 198.18.128.0/24, communities: ["64512:100"]}
    listen: {address: 198.18.0.11, port: 179}
    gracefulRestartTime: 120         # seconds, RFC 4724 restart time we advertise
    routeProtocol: 90                # rtnetlink protocol number stamped on our routes
    resyncInterval: 30               # seconds between full FIB resyncs (the safety net)
    paths: {stateDir: /var/lib/podroute, runDir: /run/podroute}
    metrics: {address: 198.18.0.11, port: 9091}   # optional: /metrics, /livez, /readyz (off if absent)

Errors: :func:`load` raises :class:`podroute.schema.ConfigError` whose ``str`` is
one line naming the file, the key path and what is wrong, whatever bytes the file holds
(encoding, size, duplicate keys, nesting: :mod:`podroute.configfile`).
"""
from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cni.shim import SUN_PATH_MAX
from nlcore.route import PODROUTE_PROTO
from podroute.config_datastore import (DatastoreConfig, EtcdConfig, IpamConfig,  # noqa: F401 (re-exports)
                                      KubernetesConfig, default_node_name, parse_datastore, parse_ipam,
                                      parse_labels)
from podroute.configfile import load_yaml
from podroute.schema import (ConfigError, Section, boolean, choice, integer, ipv4_address,
                             clip, ipv4_network, join, list_of, no_overlaps, number, show, string)

DEFAULT_ASN = 64512
ASN_RANGE = (1, 4294967295)
ENCAP_MODES = ("Always", "CrossSubnet", "Never")
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_CONFIG_BYTES = 1 << 20   # a node config is a few KiB; larger is not one
MAX_SECRET_BYTES = 4096      # a TCP MD5 key is at most 80 bytes (Linux TCP_MD5SIG_MAXKEYLEN)
NODE_IP_FROM_NODE = ipaddress.IPv4Address("0.0.0.0")   # never a node's address: "not known yet"


@dataclass(frozen=True)
class IPPool:
    """A cluster IP pool (Calico IPPool): blocks of ``/block_size`` are carved from ``cidr``."""
    cidr: ipaddress.IPv4Network
    block_size: int = 26
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"


@dataclass(frozen=True)
class Peer:
    """A BGP peer of this node. ``password`` is the TCP MD5 key (RFC 2385); never logged."""
    address: ipaddress.IPv4Address
    asn: int
    hold_time: int = 90
    passive: bool = False
    port: int = 179
    password: str | None = field(default=None, repr=False)
    source_address: ipaddress.IPv4Address | None = None
    multihop_ttl: int | None = None
    max_prefixes: int | None = None
    max_prefixes_action: str = "reject"


@dataclass(frozen=True)
class ServiceCIDR:
    """A service range announced with the node's blocks, tagged with BGP communities (RFC 1997)."""
    cidr: ipaddress.IPv4Network
    communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Paths:
    state_dir: Path = Path("/var/lib/podroute")
    run_dir: Path = Path("/run/podroute")

    @property
    def cni_socket(self) -> Path:
        return self.run_dir / "cni.sock"

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"


@dataclass(frozen=True)
class MetricsConfig:
    """The metrics and health listener (``metrics:``; its presence enables it): ``/metrics``,
    ``/livez`` and ``/readyz`` on ``address``:``port`` (:mod:`podroute.metrics.server`)."""
    address: ipaddress.IPv4Address
    port: int = 9091   # Calico Felix's metrics port


@dataclass(frozen=True)
class NodeConfig:
    node_name: str
    node_ip: ipaddress.IPv4Address
    pod_cidrs: tuple[ipaddress.IPv4Network, ...]
    ip_pools: tuple[IPPool, ...]
    asn: int = DEFAULT_ASN
    router_id: ipaddress.IPv4Address | None = None
    mtu: int | None = None            # None: auto (underlay MTU minus encapsulation overhead)
    peers: tuple[Peer, ...] = ()
    listen_address: ipaddress.IPv4Address | None = None
    listen_port: int = 179
    graceful_restart_time: int = 120
    route_protocol: int = PODROUTE_PROTO
    resync_interval: float = 30.0
    paths: Paths = Paths()
    cluster_file: Path | None = None
    import_extra: tuple[ipaddress.IPv4Network, ...] = ()
    accept_default: bool = False
    service_cidrs: tuple[ServiceCIDR, ...] = ()
    source: str = "<memory>"
    datastore: DatastoreConfig = DatastoreConfig()
    ipam: IpamConfig = IpamConfig()
    labels: tuple[tuple[str, str], ...] = ()     # sorted (name, value) pairs
    rr_cluster_id: ipaddress.IPv4Address | None = None
    metrics: "MetricsConfig | None" = None   # None: no metrics/health listener (the default)
    # kubernetes without nodeIP: node_ip (and a defaulted metrics address) is NODE_IP_FROM_NODE
    # until the node's start reads its Node object (with_node_ip)
    node_ip_from_node: bool = False

    def with_node_ip(self, ip: ipaddress.IPv4Address) -> "NodeConfig":
        """This config with the node IP its Node object gave (a defaulted metrics address too)."""
        if not self.node_ip_from_node:
            return self
        metrics = self.metrics
        if metrics is not None and metrics.address == NODE_IP_FROM_NODE:
            metrics = MetricsConfig(ip, metrics.port)
        return replace(self, node_ip=ip, metrics=metrics, node_ip_from_node=False)

    @property
    def bgp_router_id(self) -> ipaddress.IPv4Address:
        return self.router_id or self.node_ip


def _node_name(value: Any, path: str) -> str:
    name = string(value, path)
    if not _DNS_LABEL.match(name):
        raise ConfigError(path, f"{show(name)} is not a DNS-1123 label (lowercase letters, digits, '-', at most 63)")
    return name


def _mtu(value: Any, path: str) -> int | None:
    if value == "auto":
        return None
    if isinstance(value, str):
        raise ConfigError(path, f"{show(value)} is neither 'auto' nor an integer")
    return integer(576, 9000)(value, path)


def _pool(value: Any, path: str) -> IPPool:
    s = Section(value, path)
    cidr = s.get("cidr", ipv4_network)
    block = s.get("blockSize", integer(cidr.prefixlen, 32), 26)
    ipip = s.get("ipipMode", choice(*ENCAP_MODES), "Never")
    vxlan = s.get("vxlanMode", choice(*ENCAP_MODES), "Never")
    s.finish()
    if ipip != "Never" and vxlan != "Never":
        # Calico rejects an IPPool with both encapsulations on: a route can take only one.
        raise ConfigError(path, f"ipipMode {ipip} and vxlanMode {vxlan} are mutually exclusive; set one to Never")
    return IPPool(cidr, block, ipip, vxlan)


def _file_path(value: Any, path: str) -> Path:
    text = string(value, path)
    if "\0" in text:
        raise ConfigError(path, f"{show(text)} is not a usable path (NUL character)")
    return Path(text)


def _run_dir(value: Any, path: str) -> Path:
    run_dir = _file_path(value, path)
    if not run_dir.is_absolute():
        # The CNI conflist names the agent socket under it; the runtime runs the plugin from any cwd.
        raise ConfigError(path, f"{show(str(run_dir))} is not an absolute path")
    longest = Paths(run_dir=run_dir).agent_socket
    if len(os.fsencode(longest)) > SUN_PATH_MAX:
        raise ConfigError(path, f"{clip(str(run_dir))} is too long: the socket {clip(str(longest))} would not fit "
                                f"the {SUN_PATH_MAX}-byte unix socket path limit (unix(7) sun_path)")
    return run_dir


def _password_file(value: Any, path: str) -> str:
    p = _file_path(value, path)
    try:
        # O_NONBLOCK: a FIFO named here must not hang the loader waiting for a writer.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(path, f"cannot read {p}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise ConfigError(path, f"{p} is {kind}; it must be a file holding the TCP MD5 key")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(path, f"{p} has mode {stat.S_IMODE(st.st_mode):04o}; it holds a secret and must be 0600")
        data = b""
        while len(data) <= MAX_SECRET_BYTES:
            chunk = os.read(fd, MAX_SECRET_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise ConfigError(path, f"cannot read {p}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(path, f"{p} is larger than {MAX_SECRET_BYTES} bytes; it must hold only the TCP MD5 key")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        # The message must not quote the secret, not even the offending byte.
        raise ConfigError(path, f"{p} is not UTF-8 text (invalid byte at offset {e.start})") from None
    if not secret:
        raise ConfigError(path, f"{p} is empty")
    return secret


def _peer(value: Any, path: str) -> Peer:
    s = Section(value, path)
    address = s.get("address", ipv4_address)
    asn = s.get("asn", integer(*ASN_RANGE))
    # RFC 4271 §4.2: hold time is 0 (no keepalives) or at least 3 seconds.
    hold = s.get("holdTime", integer(0, 65535), 90)
    if 0 < hold < 3:
        raise ConfigError(join(path, "holdTime"), f"{hold} is invalid: must be 0 or 3..65535 (RFC 4271 §4.2)")
    passive = s.get("passive", boolean, False)
    port = s.get("port", integer(1, 65535), 179)
    password = s.get("password", string, None)
    password_file = s.get("passwordFile", _password_file, None)
    source_address = s.get("sourceAddress", ipv4_address, None)
    ttl = s.get("multihopTTL", integer(1, 255), None)
    max_prefixes = s.get("maxPrefixes", integer(1, 10_000_000), None)
    action = s.get("maxPrefixesAction", choice("reject", "teardown"), "reject")
    s.finish()
    if password is not None and password_file is not None:
        raise ConfigError(path, "set password or passwordFile, not both")
    return Peer(address, asn, hold, passive, port, password if password is not None else password_file,
                source_address, ttl, max_prefixes, action)


_COMMUNITY = re.compile(r"^(\d{1,10}):(\d{1,10})$")


def _community(value: Any, path: str) -> str:
    text = string(value, path)
    m = _COMMUNITY.match(text)
    if not m or int(m.group(1)) > 65535 or int(m.group(2)) > 65535:
        raise ConfigError(path, f"{show(text)} is not a standard community ASN:VALUE with both parts 0..65535 (RFC 1997)")
    return text


def _service(value: Any, path: str) -> ServiceCIDR:
    s = Section(value, path)
    cidr = s.get("cidr", ipv4_network)
    communities = s.get("communities", list_of(_community), ())
    s.finish()
    return ServiceCIDR(cidr, communities)


def parse(raw: Any, source: str = "<memory>") -> NodeConfig:
    """Validate a parsed YAML tree. Raises ConfigError (with ``file`` = ``source``)."""
    try:
        return _parse(raw, source)
    except ConfigError as e:
        raise e.with_file(source) from None


def _parse(raw: Any, source: str) -> NodeConfig:
    s = Section(raw, "")
    d = s.raw.get("datastore")
    on_kube = isinstance(d, dict) and d.get("type") == "kubernetes"   # the Node object knows who we are
    name = s.get("nodeName", _node_name, default_node_name(_node_name) if on_kube and s.raw.get("nodeName") is None
                 else ...)
    node_ip = s.get("nodeIP", ipv4_address, NODE_IP_FROM_NODE if on_kube else ...)
    from_node = node_ip == NODE_IP_FROM_NODE
    asn = s.get("asn", integer(*ASN_RANGE), DEFAULT_ASN)
    router_id = s.get("routerID", ipv4_address, None)
    datastore = parse_datastore(s)
    # A registering store hands out blocks and holds the pools: the node needs neither.
    optional = () if datastore.from_datastore else ...
    pools = s.get("ipPools", list_of(_pool, min_items=1), optional)
    no_overlaps((p.cidr for p in pools), "ipPools")
    if datastore.from_datastore and not datastore.claims_blocks and s.raw.get("podCIDRs") is not None:
        raise ConfigError("podCIDRs", "is set but datastore.kubernetes.usePodCIDR is true: the node's block "
                                      "is its Node's spec.podCIDR; remove podCIDRs")
    cidrs = s.get("podCIDRs", list_of(ipv4_network, min_items=1), optional)
    no_overlaps(cidrs, "podCIDRs")
    for i, cidr in enumerate(cidrs):
        if pools and not any(cidr.subnet_of(p.cidr) for p in pools):
            raise ConfigError(join("podCIDRs", i), f"{cidr} is not inside any of ipPools ({', '.join(str(p.cidr) for p in pools)})")
    if not from_node and any(node_ip in c for c in cidrs):
        raise ConfigError("nodeIP", f"{node_ip} lies inside podCIDRs")
    mtu = s.get("mtu", _mtu, None)
    peers = s.get("peers", list_of(_peer), ())
    for i, peer in enumerate(peers):
        if peer.address == node_ip and not from_node:
            raise ConfigError(join(join("peers", i), "address"), f"{peer.address} is this node's own nodeIP")
        for j in range(i):
            if peers[j].address == peer.address:
                raise ConfigError(join(join("peers", i), "address"), f"{peer.address} is listed twice (also peers[{j}])")
    listen = s.section("listen")
    listen_address = listen.get("address", ipv4_address, None)
    listen_port = listen.get("port", integer(1, 65535), 179)
    listen.finish()
    gr = s.get("gracefulRestartTime", integer(1, 4095), 120)  # RFC 4724 §3: 12-bit restart time
    # 0..4 are the kernel's own (rtnetlink.h)
    proto = s.get("routeProtocol", integer(5, 255), PODROUTE_PROTO)
    resync = s.get("resyncInterval", number(1, 3600), 30.0)
    p = s.section("paths")
    paths = Paths(p.get("stateDir", _file_path, Paths.state_dir), p.get("runDir", _run_dir, Paths.run_dir))
    p.finish()
    cluster_file = s.get("clusterFile", _file_path, None)
    if cluster_file is not None and datastore.type != "file":
        raise ConfigError("clusterFile", f"is for datastore type file; with type {datastore.type} the "
                                         "datastore holds the nodes, peers and pools: remove clusterFile")
    if datastore.type == "kubernetes" and s.raw.get("labels") is not None:
        raise ConfigError("labels", "is not used with datastore type kubernetes: the Node's labels are "
                                    "(kubelet --node-labels, kubectl label node); remove labels")
    labels = s.get("labels", parse_labels, ())
    rr_cluster_id = s.get("routeReflectorClusterID", ipv4_address, None)
    ipam = parse_ipam(s)
    import_extra = s.get("importExtraCIDRs", list_of(ipv4_network), ())
    accept_default = s.get("acceptDefaultRoute", boolean, False)
    services = s.get("serviceCIDRs", list_of(_service), ())
    for i, svc in enumerate(services):
        for c in cidrs:
            if svc.cidr.overlaps(c):
                raise ConfigError(join(join("serviceCIDRs", i), "cidr"), f"{svc.cidr} overlaps podCIDRs {c}")
    metrics = _metrics(s, node_ip)
    s.finish()
    return NodeConfig(name, node_ip, cidrs, pools, asn, router_id, mtu, peers, listen_address,
                      listen_port, gr, proto, resync, paths, cluster_file, import_extra, accept_default,
                      services, source, datastore, ipam, labels, rr_cluster_id, metrics=metrics,
                      node_ip_from_node=from_node)


def _metrics(s: Section, node_ip: ipaddress.IPv4Address) -> MetricsConfig | None:
    """``metrics: {address, port}``: absent (or null) leaves the listener off; ``address``
    defaults to nodeIP, ``port`` to 9091."""
    if s.raw.get("metrics") is None:
        s.get("metrics", lambda v, p: v, None)  # consumed: an explicit null is "off" too
        return None
    m = s.section("metrics")
    out = MetricsConfig(m.get("address", ipv4_address, node_ip), m.get("port", integer(1, 65535), 9091))
    m.finish()
    return out


def load(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and validate a node config file (at most :data:`MAX_CONFIG_BYTES`, UTF-8 YAML,
    see :mod:`podroute.configfile`). Raises ConfigError (one-line ``str``) for any content."""
    return parse(load_yaml(path, MAX_CONFIG_BYTES), str(path))
