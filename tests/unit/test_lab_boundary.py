"""The lab stays in the product wheel only as ``podroute lab``: nothing the node runs
(the agent, the CLI's other commands, the CNI shim and plugin, felix, bgp, ipip) imports
podroute.lab, so a node never loads lab code."""
from __future__ import annotations

import subprocess
import sys

# Every module of these packages except podroute.lab itself (and __main__ entry points).
IMPORT_ALL = """
import importlib, pkgutil, sys
def walk(name):
    mod = importlib.import_module(name)
    for info in pkgutil.iter_modules(getattr(mod, "__path__", [])):
        sub = name + "." + info.name
        if sub != "podroute.lab" and info.name != "__main__":
            walk(sub)
for pkg in ("felix", "bgp", "cni", "ipip", "podroute"):
    walk(pkg)
print(sorted(m for m in sys.modules if m == "podroute.lab" or m.startswith("podroute.lab.")))
"""


def test_no_product_module_imports_the_lab() -> None:
    code = IMPORT_ALL
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_the_cli_parser_builds_without_the_lab() -> None:
    code = ("import sys\nfrom podroute.cli import build_parser\n"
            "build_parser().parse_args(['lab', 'up', '--nodes', '3'])\n"
            "print(any(m.startswith('podroute.lab') for m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
