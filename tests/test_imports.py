"""Only the shim memagent.aio imports asyncio (the MicroPython subset rule)."""

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
    assert asyncio_importers() == ["agent/aio.py"]


def test_the_check_sees_a_violation(tmp_path: "os.PathLike[str]") -> None:
    # Guard against a check that cannot fail: the AST walk finds nested imports.
    tree = ast.parse("def f():\n    from asyncio import sleep\n")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "asyncio" for n in ast.walk(tree))
