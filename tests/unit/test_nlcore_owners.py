"""One owner per netlink constant, device name and key, and the import layering around nlcore.

Read from the product packages' source (the ones the wheel ships): nlcore imports none of
them; felix, cni, bgp and ipip may import nlcore, never podroute or each other (felix may
import ipip, docs/CONVENTIONS.md); the names below are bound to a literal in exactly one
module; and nobody outside bgp reads ``Prefix._key`` (the public name is ``key``,
nlcore.prefixkey.CARRIED).
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("nlcore", "felix", "cni", "bgp", "ipip", "podroute")
COMPONENTS = ("felix", "cni", "bgp", "ipip")
OWNERS = {
    "PODROUTE_PROTO": "nlcore/route.py", "CLONE_NEWNET": "nlcore/netns.py",
    "NETNS_RUN_DIR": "nlcore/netns.py", "TUNL0": "ipip/devices.py",
    "VXLAN_IFNAME": "ipip/devices.py", "VXLAN_DEV": "ipip/devices.py",  # VXLAN_DEV: podroute's alias
    **{name: "nlcore/wire.py" for name in (
        "NLMSGHDR", "RTMSG", "IFINFOMSG", "IFADDRMSG", "RTATTR", "RTNEXTHOP", "NETLINK_ROUTE",
        "SOL_NETLINK", "NETLINK_CAP_ACK", "NETLINK_EXT_ACK", "NETLINK_GET_STRICT_CHK",
        "NLM_F_REQUEST", "NLM_F_ACK", "NLM_F_ACK_TLVS", "NLM_F_CAPPED", "NLMSG_ERROR",
        "NLMSGERR_ATTR_MSG", "RTM_NEWROUTE", "RTM_DELROUTE", "RTM_NEWLINK", "RTA_DST", "RTA_OIF",
        "RTA_TABLE", "RT_TABLE_MAIN", "RT_SCOPE_LINK", "IFLA_IFNAME")},
}


@lru_cache(maxsize=1)
def modules() -> tuple[tuple[str, ast.AST], ...]:
    return tuple((path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path)))
                 for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py")))


def imported_packages(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_nlcore_is_a_leaf_and_components_import_no_sibling():
    wrong = []
    for rel, tree in modules():
        pkg = rel.split("/")[0]
        if pkg == "podroute":
            continue
        allowed = {pkg, "nlcore"} | ({"ipip"} if pkg == "felix" else set())  # docs/CONVENTIONS.md
        forbidden = set(PACKAGES) - (allowed if pkg != "nlcore" else {"nlcore"})
        bad = imported_packages(tree) & forbidden
        if bad:
            wrong.append((rel, sorted(bad)))
    assert wrong == []


@pytest.mark.parametrize("name", sorted(OWNERS))
def test_bound_to_a_literal_in_its_owner_only(name):
    where = []
    for rel, tree in modules():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else []
            names = [t.id for t in targets if isinstance(t, ast.Name)] + [
                e.id for t in targets if isinstance(t, ast.Tuple) for e in t.elts
                if isinstance(e, ast.Name)]
            if any(n.lstrip("_") == name for n in names) and \
                    not isinstance(node.value, (ast.Name, ast.Attribute)):  # an alias is fine
                where.append(rel)
    assert where == ([OWNERS[name]] if name != "VXLAN_DEV" else [])  # an alias is no literal


def test_nobody_outside_bgp_reads_the_private_key():
    readers = []
    for rel, tree in modules():
        if rel.startswith("bgp/"):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "_key") or \
                    (isinstance(node, ast.Constant) and node.value == "_key"):
                readers.append(rel)
    assert readers == []


def test_the_wheel_ships_nlcore():
    import tomllib
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = conf["tool"]["setuptools"]["packages"]["find"]
    assert "nlcore*" in find["include"]
    assert not any(p.startswith("nlcore") for p in find.get("exclude", ()))
