"""Run one command inside a throwaway qemu VM whose kernel has the IPIP module.

This host's kernel has no ``ipip`` module, so tests that need tunl0 boot Debian's
``linux-image-6.1.0-*-amd64`` under qemu (TCG: KVM hangs at boot on these
machines, see /work/shared/FACTS-kernel.md) with:

* the host root filesystem shared read-only over virtio-9p (``hostroot``), so the
  guest runs the host's own python, venv, iproute2 and tcpdump after a chroot;
* a second, writable 9p export (``work``): a fresh temporary directory holding
  the command script and receiving its stdout, stderr and exit status;
* a busybox-static initramfs that ``insmod``\\s the modules listed in
  :data:`WANTED_MODULES` plus their ``modules.dep`` closure, mounts everything,
  chroots, runs the command and powers off.

Everything is built from this machine's apt registries once and cached under
:data:`CACHE_DIR` (``$PODROUTE_VM_CACHE``, default ``/var/cache/podroute-vm``),
keyed by the kernel package name and version; the build takes a file lock so
concurrent test processes build it once.

Public API: :func:`run_in_vm`, :func:`ensure_image`, :class:`VMResult`,
:class:`VMImage`, :class:`VMError`. CLI: ``python -m tests.kernel.vm run -- <cmd...>``
(or ``scripts/vm-kernel run -- <cmd...>``), ``python -m tests.kernel.vm build``.
"""
from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import lzma
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

CACHE_DIR = Path(os.environ.get("PODROUTE_VM_CACHE", "/var/cache/podroute-vm"))
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "cpio", "kmod")
META_PACKAGE = "linux-image-amd64"
# Loaded in the guest together with everything modules.dep says they need.
# Entries already built into the kernel (modules.builtin) are skipped.
WANTED_MODULES = (
    "virtio_pci", "9pnet", "9pnet_virtio", "9p",
    "tunnel4", "ip_tunnel", "ipip",
    "veth", "vxlan", "dummy", "bridge", "af_packet",
)
OPTIONAL_MODULES = frozenset({"bridge", "af_packet", "virtio_pci"})
# vCPUs for the guest: 2 lets qemu run MTTCG (one host thread per vCPU), which roughly
# halves the wall time of multi-process guests such as the lab (agents, ExaBGP, BIRD).
DEFAULT_CPUS = int(os.environ.get("PODROUTE_VM_CPUS", "2"))
DEFAULT_MEMORY_MB = int(os.environ.get("PODROUTE_VM_MEMORY_MB", "1536"))
GUEST_WORK = "/tmp/podroute-vm-work"  # where the writable export appears after chroot
DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PODROUTE_IN_VM": "1",
}


class VMError(RuntimeError):
    """The VM could not be built, booted, or did not report the command's result."""


@dataclass(frozen=True)
class VMImage:
    """A built, cached kernel + initramfs. ``key`` is ``<kernel package>_<version>``."""

    key: str
    kernel_version: str  # uname -r inside the guest, e.g. "6.1.0-56-amd64"
    vmlinuz: Path
    initramfs: Path
    modules: tuple[str, ...]  # insmod order inside the guest


@dataclass
class VMResult:
    """Outcome of :func:`run_in_vm`, shaped like ``subprocess.CompletedProcess``.

    ``boot_seconds``: host wall time from qemu start until the guest began the
    command; ``command_seconds``: guest-measured command duration; ``wall_seconds``:
    qemu start to exit. ``console`` is the kernel/init serial log.
    """

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    boot_seconds: float
    command_seconds: float
    wall_seconds: float
    console: str = field(repr=False, default="")

    def check_returncode(self) -> None:
        if self.returncode != 0:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.stdout, self.stderr)


def _log(msg: str) -> None:
    print(f"[vm] {msg}", file=sys.stderr, flush=True)


def _run(argv: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 600)
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise VMError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def ensure_host_packages(packages: Sequence[str] = HOST_PACKAGES) -> None:
    """Install the Debian packages the build and boot need, if dpkg does not list them installed."""
    missing = []
    for pkg in packages:
        q = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if q.returncode != 0 or "install ok installed" not in q.stdout:
            missing.append(pkg)
    if not missing:
        return
    if os.geteuid() != 0:
        raise VMError(f"packages {missing} are missing and installing them needs root")
    _log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, timeout=1200)


def resolve_kernel_package() -> tuple[str, str]:
    """``(package, version)`` of the real kernel image ``linux-image-amd64`` depends on."""
    out = _run(["apt-cache", "depends", META_PACKAGE]).stdout
    pkg = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            pkg = line.split(":", 1)[1].strip()
            break
    if not pkg:
        raise VMError(f"apt-cache depends {META_PACKAGE} names no linux-image package:\n{out}")
    pol = _run(["apt-cache", "policy", pkg]).stdout
    version = next((l.split(":", 1)[1].strip() for l in pol.splitlines()
                    if l.strip().startswith("Candidate:")), "")
    if not version or version == "(none)":
        raise VMError(f"no candidate version for {pkg}")
    return pkg, version


def _read_modules_dep(root: Path, kver: str) -> tuple[dict[str, tuple[str, list[str]]], set[str]]:
    """name -> (relative path, [dependency names]); plus the set of built-in module names."""
    moddir = root / "lib/modules" / kver

    def name_of(rel: str) -> str:
        base = rel.rsplit("/", 1)[-1]
        return base.split(".ko", 1)[0].replace("-", "_")

    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[name_of(path)] = (path, [name_of(d) for d in rest.split()])
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        builtin = {name_of(l) for l in bfile.read_text().split()}
    return deps, builtin


def module_load_order(deps: Mapping[str, tuple[str, list[str]]], builtin: set[str],
                      wanted: Sequence[str], optional: frozenset[str] = OPTIONAL_MODULES) -> list[str]:
    """Names in an order where every module comes after what it depends on."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name not in deps:
            if name in optional:
                return
            raise VMError(f"module {name} (needed by {' -> '.join(chain) or 'the VM'}) "
                          f"is neither in modules.dep nor built in")
        seen.add(name)
        for d in deps[name][1]:
            visit(d, chain + (name,))
        order.append(name)

    for w in wanted:
        visit(w.replace("-", "_"), ())
    return order


def _decompress_module(src: Path) -> bytes:
    data = src.read_bytes()
    if src.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if src.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if src.name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(src)], capture_output=True, check=True).stdout
    return data


INIT_SCRIPT = r"""#!/bin/busybox sh
# podroute VM init: mount, load modules, chroot into the host root, run /work/cmd.sh, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
  insmod /lib/modules/$m.ko || echo "podroute-init: insmod $m failed"
done
o=trans=virtio,version=9p2000.L,msize=512000,cache=none
# The host root is read-only for the guest and does not change during a run: let the
# guest cache it (cache=loose), which cuts python's import-time stat/open round trips.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro hostroot /newroot || { echo "podroute-init: cannot mount hostroot"; poweroff -f; }
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
# A non-recursive bind of the host root before the tmpfs mounts below hide parts of it.
mkdir -p /hostro && mount -o bind /newroot /hostro
for d in /tmp /run /var/tmp /var/lib/dhcp /root; do
  [ -d /newroot$d ] && [ ! -L /newroot$d ] && mount -t tmpfs -o mode=1777 tmpfs /newroot$d
done
[ -L /newroot/var/run ] || mount -t tmpfs tmpfs /newroot/var/run
mkdir -p /newroot/run/netns /newroot/var/run/netns /newroot/run/lock
mkdir -p /newroot@GUEST_WORK@
mount -t 9p -o $o work /newroot@GUEST_WORK@ || { echo "podroute-init: cannot mount work"; poweroff -f; }
# Host directories the run needs that a tmpfs above hides (a repo cloned under /tmp): bind back.
if [ -f /newroot@GUEST_WORK@/binds ]; then
  while read -r p; do
    [ -n "$p" ] && [ ! -d "/newroot$p" ] && [ -d "/hostro$p" ] && mkdir -p "/newroot$p" && mount -o bind "/hostro$p" "/newroot$p"
  done < /newroot@GUEST_WORK@/binds
fi
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
ip link set lo up 2>/dev/null
cat /proc/uptime > /newroot@GUEST_WORK@/started
chroot /newroot /bin/sh @GUEST_WORK@/cmd.sh
cat /proc/uptime > /newroot@GUEST_WORK@/finished
sync
umount /newroot@GUEST_WORK@ 2>/dev/null
echo o > /proc/sysrq-trigger
poweroff -f
""".replace("@GUEST_WORK@", GUEST_WORK)


def _build_initramfs(root: Path, kver: str, out: Path) -> list[str]:
    deps, builtin = _read_modules_dep(root, kver)
    order = module_load_order(deps, builtin, WANTED_MODULES)
    with tempfile.TemporaryDirectory(prefix="podroute-initramfs-") as tmp:
        t = Path(tmp)
        for d in ("bin", "lib/modules", "proc", "sys", "dev", "newroot"):
            (t / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2("/bin/busybox", t / "bin/busybox")
        for name in order:
            src = root / "lib/modules" / kver / deps[name][0]
            (t / "lib/modules" / f"{name}.ko").write_bytes(_decompress_module(src))
        (t / "modules.order").write_text("\n".join(order) + "\n")
        init = t / "init"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        files = subprocess.run(["find", ".", "-print0"], cwd=t, capture_output=True, check=True).stdout
        cpio = subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=t, input=files,
                              capture_output=True, check=True).stdout
        tmp_out = out.with_suffix(".tmp")
        tmp_out.write_bytes(gzip.compress(cpio, compresslevel=6))
        tmp_out.replace(out)
    return order


def ensure_image(cache_dir: Path = CACHE_DIR) -> VMImage:
    """Build (once) and return the cached kernel + initramfs.

    Steps: install host packages if missing; resolve ``linux-image-amd64``'s real
    kernel package; ``apt-get download`` it; ``dpkg-deb -x``; ``depmod -b``; build the
    initramfs. Held under ``<cache_dir>/.lock`` (flock) so parallel callers build once.
    Raises :class:`VMError` on any failure.
    """
    ensure_host_packages()
    pkg, version = resolve_kernel_package()
    key = f"{pkg}_{version}".replace(":", "%")
    dest = cache_dir / key
    meta_file = dest / "image.json"
    if _fresh(meta_file):
        return _load_meta(dest, meta_file)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _fresh(meta_file):
            return _load_meta(dest, meta_file)
        if meta_file.exists() and (dest / "root").is_dir():
            # Same kernel, changed init script or module list: rebuild only the initramfs.
            m = json.loads(meta_file.read_text())
            order = _build_initramfs(dest / "root", m["kernel_version"], dest / m["initramfs"])
            m.update(modules=order, init_hash=_init_hash())
            tmp = meta_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(m, indent=1))
            tmp.replace(meta_file)
            _log(f"rebuilt the initramfs of {key} (init {m['init_hash']})")
            return _load_meta(dest, meta_file)
        t0 = time.monotonic()
        _log(f"building VM image {key} in {dest}")
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        dl = dest / "deb"
        dl.mkdir()
        _run(["apt-get", "download", f"{pkg}={version}"], cwd=dl, timeout=1200)
        debs = list(dl.glob("*.deb"))
        if len(debs) != 1:
            raise VMError(f"apt-get download left {debs} in {dl}")
        root = dest / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
        kvers = sorted(p.name for p in (root / "lib/modules").iterdir())
        if len(kvers) != 1:
            raise VMError(f"expected one kernel in {root}/lib/modules, found {kvers}")
        kver = kvers[0]
        _run(["depmod", "-b", str(root), kver])
        vmlinuz = root / "boot" / f"vmlinuz-{kver}"
        if not vmlinuz.exists():
            raise VMError(f"{vmlinuz} missing from {debs[0].name}")
        initramfs = dest / "initramfs.cpio.gz"
        order = _build_initramfs(root, kver, initramfs)
        debs[0].unlink()
        meta = {"key": key, "kernel_version": kver, "vmlinuz": str(vmlinuz.relative_to(dest)),
                "initramfs": initramfs.name, "modules": order,
                "built_seconds": round(time.monotonic() - t0, 2), "init_hash": _init_hash()}
        tmp = meta_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(meta_file)  # the marker: written last, atomically
        _log(f"built {key} in {meta['built_seconds']} s; modules: {' '.join(order)}")
        return _load_meta(dest, meta_file)


def _init_hash() -> str:
    """Identifies the initramfs contents we generate (init script + wanted modules)."""
    import hashlib
    return hashlib.sha256((INIT_SCRIPT + " ".join(WANTED_MODULES)).encode()).hexdigest()[:12]


def _fresh(meta_file: Path) -> bool:
    try:
        return json.loads(meta_file.read_text()).get("init_hash") == _init_hash()
    except (OSError, ValueError):
        return False


def _load_meta(dest: Path, meta_file: Path) -> VMImage:
    m = json.loads(meta_file.read_text())
    return VMImage(key=m["key"], kernel_version=m["kernel_version"], vmlinuz=dest / m["vmlinuz"],
                   initramfs=dest / m["initramfs"], modules=tuple(m["modules"]))


def _cmd_script(argv: Sequence[str], cwd: str, env: Mapping[str, str]) -> str:
    lines = ["# generated by tests/kernel/vm.py", f"W={GUEST_WORK}"]
    for k, v in env.items():
        lines.append(f"export {k}={shlex.quote(v)}")
    lines += [
        f"cd {shlex.quote(cwd)} || {{ echo 'vm: cannot cd {cwd}' >> $W/stderr; echo 126 > $W/rc; exit; }}",
        f"{' '.join(shlex.quote(a) for a in argv)} > $W/stdout 2> $W/stderr < /dev/null",
        "echo $? > $W/rc",
    ]
    return "\n".join(lines) + "\n"


def run_in_vm(argv: Sequence[str], *, cwd: str = "/", env: Mapping[str, str] | None = None,
              timeout: float = 300, memory_mb: int = DEFAULT_MEMORY_MB, cpus: int = DEFAULT_CPUS,
              inherit_path: bool = True,
              console_log: str | os.PathLike | None = None) -> VMResult:
    """Boot the IPIP-capable kernel, run ``argv`` (as root, in ``cwd``) in the VM, power off.

    ``env`` is added to :data:`DEFAULT_ENV` (which sets ``PODROUTE_IN_VM=1``,
    ``PYTHONDONTWRITEBYTECODE=1``, ``HOME=/tmp``). The host root is read-only in the
    guest; /tmp, /run, /var/tmp are fresh tmpfs. ``timeout`` (seconds, wall) bounds the
    whole boot-run-poweroff; on expiry qemu (our own child, by PID) is killed and
    :class:`VMError` raised with the console tail. ``cpus`` vCPUs (``-smp``, MTTCG when
    above 1) and ``memory_mb`` MiB of guest RAM default to ``$PODROUTE_VM_CPUS`` (2) and
    ``$PODROUTE_VM_MEMORY_MB`` (1536). The console is also copied to
    ``console_log`` if given. Returns the command's real exit status and output.
    """
    image = ensure_image()
    full_env = dict(DEFAULT_ENV)
    if env:
        full_env.update(env)
    with tempfile.TemporaryDirectory(prefix="podroute-vm-") as work:
        w = Path(work)
        os.chmod(w, 0o777)
        (w / "cmd.sh").write_text(_cmd_script(argv, cwd, full_env))
        # The guest's /tmp, /run, /var/tmp and /root are fresh tmpfs: a cwd below them (a CI
        # clone in /tmp) is bound back from the read-only host root by the init script.
        (w / "binds").write_text(os.path.abspath(cwd) + "\n")
        console = w / "console.log"
        qemu = [
            "qemu-system-x86_64", "-accel", "tcg" + (",thread=multi" if cpus > 1 else ""), "-m", str(memory_mb), "-smp", str(cpus),
            "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none",
            "-serial", f"file:{console}",
            "-kernel", str(image.vmlinuz), "-initrd", str(image.initramfs),
            "-append", "console=ttyS0 quiet panic=-1 mitigations=off loglevel=4 rdinit=/init",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={w},mount_tag=work,security_model=none,multidevs=remap",
        ]
        t0 = time.monotonic()
        boot_seconds = -1.0
        proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = t0 + timeout
            while proc.poll() is None:
                if boot_seconds < 0 and (w / "started").exists():
                    boot_seconds = time.monotonic() - t0
                if time.monotonic() > deadline:
                    raise VMError(f"VM did not finish within {timeout} s; console tail:\n"
                                  + _tail(console))
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                _kill(proc)
            qemu_out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            if proc.stdout:
                proc.stdout.close()
            if console_log:
                shutil.copyfile(console, console_log) if console.exists() else None
        wall = time.monotonic() - t0
        console_text = console.read_text(errors="replace") if console.exists() else ""
        rc_file = w / "rc"
        if not rc_file.exists():
            raise VMError(f"the VM exited ({proc.returncode}) without the command's exit status; "
                          f"qemu said: {qemu_out.strip()[-1000:]}\nconsole tail:\n{_tail(console)}")
        if boot_seconds < 0:
            boot_seconds = wall
        cmd_seconds = 0.0
        try:
            started = float((w / "started").read_text().split()[0])
            finished = float((w / "finished").read_text().split()[0])
            cmd_seconds = finished - started
        except (OSError, ValueError, IndexError):
            pass
        return VMResult(
            args=list(argv), returncode=int(rc_file.read_text().strip() or 255),
            stdout=_read(w / "stdout"), stderr=_read(w / "stderr"),
            boot_seconds=round(boot_seconds, 2), command_seconds=round(cmd_seconds, 2),
            wall_seconds=round(wall, 2), console=console_text)


def _read(p: Path) -> str:
    return p.read_text(errors="replace") if p.exists() else ""


def _tail(p: Path, n: int = 40) -> str:
    return "\n".join(_read(p).splitlines()[-n:])


def _kill(proc: subprocess.Popen) -> None:
    """Terminate our own qemu child by PID, then SIGKILL after 5 s."""
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.kernel.vm",
                                 description="Run a command in a qemu VM whose kernel has IPIP.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or show) the cached kernel + initramfs")
    r = sub.add_parser("run", help="run a command in the VM: run [--cwd DIR] [-e K=V] -- cmd...")
    r.add_argument("--cwd", default=os.environ.get("PODROUTE_VM_CWD") or os.getcwd())
    r.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    r.add_argument("--timeout", type=float, default=300)
    r.add_argument("--console-log", default=None)
    r.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "build":
            img = ensure_image()
            print(json.dumps({"key": img.key, "kernel": img.kernel_version, "vmlinuz": str(img.vmlinuz),
                              "initramfs": str(img.initramfs), "modules": img.modules}, indent=1))
            return 0
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not cmd:
            ap.error("no command given")
        env = dict(kv.split("=", 1) for kv in a.env)
        res = run_in_vm(cmd, cwd=a.cwd, env=env, timeout=a.timeout, console_log=a.console_log)
    except VMError as e:
        print(f"vm: {e}", file=sys.stderr)
        return 125
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    print(f"[vm] exit {res.returncode}; boot-to-command {res.boot_seconds} s, command "
          f"{res.command_seconds} s, wall {res.wall_seconds} s", file=sys.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
