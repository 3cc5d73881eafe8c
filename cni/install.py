"""Install the shim as a CNI plugin executable.

The runtime finds plugins by the conflist ``type`` in its CNI bin dir (CNI spec 1.0.0,
"Section 2: Execution Protocol", CNI_PATH), so the file name is ``podroute``.

The installed file carries ``cni/shim.py`` as a code object compiled by the plugin's own
interpreter (``marshal``): a script is otherwise re-parsed and compiled at every exec (~1.5 ms
of a ~9 ms start here; scripts get no ``__pycache__``). If that interpreter is later replaced
by another version, the file compiles the source it also carries.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from .atomicfile import atomic_write

INTERPRETER = "/usr/bin/python3"
SHEBANG = f"#!{INTERPRETER} -IS\n"
_FILENAME = "podroute-cni-shim"
_COMPILE = ("import marshal, sys; src = sys.stdin.buffer.read(); "
            "sys.stdout.buffer.write(sys.implementation.cache_tag.encode() + b'\\n' + "
            f"marshal.dumps(compile(src, {_FILENAME!r}, 'exec', dont_inherit=True)))")


def _compiled(source: str) -> tuple[str, bytes] | None:
    """``(cache tag, marshalled code)`` produced by :data:`INTERPRETER` itself (the marshal
    format is version-specific); None if it cannot run here."""
    try:
        p = subprocess.run([INTERPRETER, "-IS", "-c", _COMPILE], input=source.encode(),
                           capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    tag, sep, blob = p.stdout.partition(b"\n")
    return (tag.decode(), blob) if sep and blob else None


def render_shim(source: str) -> str:
    """The plugin file for ``source`` (the text of ``cni/shim.py``): shebang, then either the
    pre-compiled loader with the source as fallback, or the plain source."""
    if source.startswith("#!"):
        source = source.split("\n", 1)[1]
    compiled = _compiled(source)
    if compiled is None:
        return SHEBANG + source
    tag, blob = compiled
    return (SHEBANG
            + "# podroute CNI plugin: cni/shim.py pre-compiled at install (cni.install); do not edit.\n"
            + "import sys\n"
            + f"if sys.implementation.cache_tag == {tag!r}:\n"
            + f"    exec(__import__('marshal').loads({blob!r}))\n"
            + "else:  # the interpreter changed since install\n"
            + f"    exec(compile({source!r}, {_FILENAME!r}, 'exec'))\n")


def install_shim(bin_dir: Path, name: str = "podroute") -> Path:
    """Write ``bin_dir/name`` (see :func:`render_shim`), first line ``#!/usr/bin/python3 -IS``,
    mode 0755, atomically (temp file in ``bin_dir`` + fsync + ``os.replace`` + directory
    fsync), so a runtime never execs a half-written plugin.

    Returns the installed path. Raises OSError if ``bin_dir`` is not writable.
    """
    if not name or "/" in name:
        raise ValueError(f"invalid plugin name {name!r}")
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = (Path(__file__).with_name("shim.py")).read_text()
    target = bin_dir / name
    atomic_write(target, render_shim(source).encode(), 0o755)
    return target
