"""The guest tests' C clients of /dev/mem_notify (clients/*.c), cross-built
static for the armhf guest and cached by a hash of their sources.

rig.py ships what :func:`build_clients` returns as /rig/bin/<name> in every
payload.  By hand::

    python3 board/qemu-arm/rigclients.py OUTDIR            # armhf, static
    python3 board/qemu-arm/rigclients.py --host OUTDIR     # this machine's gcc
"""

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE / "clients"
CLIENTS = ("mem_notify_wait", "alloc_test")   # clients/<name>.c -> /rig/bin/<name>
CROSS_CC = "arm-linux-gnueabihf-gcc"
CROSS_PACKAGE = "gcc-arm-linux-gnueabihf"      # with libc6-dev-armhf-cross
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"]
CROSS_FLAGS = ["-static", "-s"]                # the guest has glibc, but no need to match it
KEEP = 3                                       # cached builds kept (concurrent runs)


class ClientsError(Exception):
    """A client does not build, or the cross compiler is missing in CI."""


def in_ci() -> bool:
    """Return: True when CI=true, where every prerequisite must be installed."""
    return os.environ.get("CI", "").lower() == "true"


def sources() -> List[Path]:
    """Return: the C source of every client, in CLIENTS order."""
    return [SOURCE_DIR / (name + ".c") for name in CLIENTS]


def compile_client(cc: str, source: Path, out: Path, flags: Sequence[str] = CROSS_FLAGS) -> None:
    """Compile ``source`` into the executable ``out`` with ``cc``, CFLAGS
    and ``flags``.  Raises: ClientsError with the compiler's messages."""
    cmd = [cc, *CFLAGS, *flags, "-o", str(out), str(source)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise ClientsError("cannot run %s: %s" % (cc, e))
    if proc.returncode != 0:
        raise ClientsError("%s failed (%d):\n%s" % (" ".join(cmd), proc.returncode,
                                                    (proc.stderr or proc.stdout).strip()))


def build_key(cc: str) -> str:
    """Return: 16 hex digits naming a build: the compiler's version, the
    flags and the sources.  Raises: ClientsError if ``cc`` cannot run."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()[:1]
    except (OSError, subprocess.CalledProcessError) as e:
        raise ClientsError("cannot run %s --version: %s" % (cc, e))
    h = hashlib.sha256()
    for part in [cc, *version, *CFLAGS, *CROSS_FLAGS]:
        h.update(part.encode() + b"\0")
    for src in sources():
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _lock(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _prune(cache: Path, keep: Path) -> None:
    """Delete all but the KEEP newest finished builds (never ``keep``)."""
    builds = [d for d in cache.iterdir() if (d / "done").exists()]
    builds.sort(key=lambda d: (d / "done").stat().st_mtime, reverse=True)
    for old in builds[KEEP:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def build_clients(cache: Path, log: Callable[[str], None],
                  cc: Optional[str] = None) -> Dict[str, bytes]:
    """Cross-build the clients into ``cache``/<key>/ (reused while the
    sources, flags and compiler stay the same).  Without the cross compiler
    (``cc``: default CROSS_CC on PATH) it logs one line and ships nothing.
    Returns: {client name: its static armhf executable}, or {} without the
    compiler.  Raises: ClientsError when a client does not compile, or when
    the compiler is missing under CI=true."""
    exe = shutil.which(cc or CROSS_CC)
    if exe is None:
        if in_ci():
            raise ClientsError("%s is missing (apt-get install %s libc6-dev-armhf-cross): the "
                               "guest tests need the /dev/mem_notify clients" % (
                                   cc or CROSS_CC, CROSS_PACKAGE))
        log("no %s (apt-get install %s): the guest gets no /rig/bin clients"
            % (cc or CROSS_CC, CROSS_PACKAGE))
        return {}
    key = build_key(exe)
    out = cache / key
    with _lock(cache):
        if not (out / "done").exists():
            t0 = time.monotonic()
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            for name, src in zip(CLIENTS, sources()):
                compile_client(exe, src, out / name)
            (out / "done").write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
            log("built the guest's clients %s in %.1f s" % (key, time.monotonic() - t0))
            _prune(cache, out)
    return {name: (out / name).read_bytes() for name in CLIENTS}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the clients into a directory.  Returns: the exit status (0, or
    1 when a client does not build or the compiler is missing)."""
    ap = argparse.ArgumentParser(description="build the guest's /dev/mem_notify clients")
    ap.add_argument("--host", action="store_true",
                    help="build for this machine with gcc (dynamic), not the armhf guest")
    ap.add_argument("outdir", type=Path)
    args = ap.parse_args(argv)
    cc = "gcc" if args.host else CROSS_CC
    if shutil.which(cc) is None:
        print("no %s on PATH" % cc, file=sys.stderr)
        return 1
    args.outdir.mkdir(parents=True, exist_ok=True)
    try:
        for name, src in zip(CLIENTS, sources()):
            compile_client(cc, src, args.outdir / name, [] if args.host else CROSS_FLAGS)
            print(args.outdir / name)
    except ClientsError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
