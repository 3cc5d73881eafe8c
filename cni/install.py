"""Install the shim as a CNI plugin executable.

The runtime finds plugins by the conflist ``type`` in its CNI bin dir (CNI spec 1.0.0,
"Section 2: Execution Protocol", CNI_PATH), so the file name is ``podroute``.
"""
from __future__ import annotations

from pathlib import Path

from .atomicfile import atomic_write

SHEBANG = "#!/usr/bin/python3 -IS\n"


def install_shim(bin_dir: Path, name: str = "podroute") -> Path:
    """Write ``bin_dir/name``: this package's ``shim.py`` with its first line replaced by
    ``#!/usr/bin/python3 -IS``, mode 0755, atomically (temp file in ``bin_dir`` + fsync +
    ``os.replace`` + directory fsync), so a runtime never execs a half-written plugin.

    Returns the installed path. Raises OSError if ``bin_dir`` is not writable.
    """
    if not name or "/" in name:
        raise ValueError(f"invalid plugin name {name!r}")
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    source = (Path(__file__).with_name("shim.py")).read_text()
    if source.startswith("#!"):
        source = source.split("\n", 1)[1]
    data = (SHEBANG + source).encode()
    target = bin_dir / name
    atomic_write(target, data, 0o755)
    return target
