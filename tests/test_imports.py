"""Only the shim memagent.aio imports asyncio (the MicroPython subset rule),
and only the shim asks which interpreter it runs on (issue 11)."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def asyncio_importers() -> "list[str]":
    found = []
    for path in glob.glob(os.path.join(ROOT, "agent", "**", "*.py"), recursive=True) + \
            glob.glob(os.path.join(ROOT, "plugins", "**", "*.py"), recursive=True):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "asyncio" or n.startswith("asyncio.") for n in names):
                found.append(os.path.relpath(path, ROOT))
    return sorted(set(found))


def test_only_the_shim_imports_asyncio() -> None:
    assert asyncio_importers() == ["agent/aio/__init__.py", "agent/aio/_mpstream.py"]


def interpreter_tests() -> "list[str]":
    """Return: file:line of every place outside the shim that asks which
    interpreter runs it (sys.implementation, the shim's MICROPYTHON flag)."""
    found = []
    for path in glob.glob(os.path.join(ROOT, "agent", "**", "*.py"), recursive=True) + \
            glob.glob(os.path.join(ROOT, "plugins", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)
        if rel.startswith("agent/aio/"):
            continue
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if "sys.implementation" in line or "MICROPYTHON" in line:
                    found.append("%s:%d" % (rel, n))
    return found


def test_only_the_shim_tells_the_interpreters_apart() -> None:
    # The one exception: the package's __init__ installs the previous
    # release's module aliases (importlib machinery) on CPython only.
    assert interpreter_tests() == ["agent/__init__.py:16"]


def test_the_check_sees_a_violation(tmp_path: "os.PathLike[str]") -> None:
    # Guard against a check that cannot fail: the AST walk finds nested imports.
    tree = ast.parse("def f():\n    from asyncio import sleep\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "asyncio" for n in ast.walk(tree))
