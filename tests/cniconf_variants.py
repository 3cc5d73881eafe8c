"""The node config variants whose rendered conflist the tests run: configs/node.yaml as
shipped, with its ``mtu`` and its pool's encapsulation changed (shared by the unit tests
of podroute.cniconf and the privileged ADD/CHECK/DEL test)."""
from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# name -> (ipipMode, vxlanMode)
ENCAPS = {"none": ("Never", "Never"), "ipip": ("Always", "Never"), "vxlan": ("Never", "Always"),
          "ipip-crosssubnet": ("CrossSubnet", "Never"), "vxlan-crosssubnet": ("Never", "CrossSubnet")}
FIXED_MTU = 1400
MTUS = {"auto": "auto", "fixed": FIXED_MTU}
VARIANTS = [(m, e) for m in MTUS for e in ENCAPS]
OVERHEAD = {"none": 0, "ipip": 20, "vxlan": 50}  # bytes of outer headers per encapsulation


def node_yaml(tmp_path: Path, mtu: str, encap: str) -> Path:
    """Write the variant's node.yaml into ``tmp_path`` (state and run dirs under it too)."""
    raw = yaml.safe_load((REPO / "configs" / "node.yaml").read_text())
    raw["mtu"] = MTUS[mtu]
    raw["ipPools"][0]["ipipMode"], raw["ipPools"][0]["vxlanMode"] = ENCAPS[encap]
    raw["paths"] = {"stateDir": str(tmp_path / "state"), "runDir": str(tmp_path / "run")}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def expected_pod_mtu(mtu: str, encap: str, underlay_mtu: int) -> int:
    return FIXED_MTU if mtu == "fixed" else underlay_mtu - OVERHEAD[encap.split("-")[0]]
