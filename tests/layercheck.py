"""The package's architecture as a checkable table, and the checker.

Every module of the package (``agent/`` is ``memagent``, ``plugins/`` is
``memagent.plugins``) belongs to one layer; a layer may import only the
layers the table allows.  :func:`check_tree` reads each file's imports with
``ast`` (also those inside functions: a lazy import is still a dependency)
and returns one line per violation:

- an import the table does not allow;
- an import cycle among the package's modules (imports under ``if
  TYPE_CHECKING:`` never run, so they count for the layers but not here);
- ``memagent.demo`` imported at module level outside the demo (the CLI
  imports it only when ``memagent demo`` runs);
- a module over MAX_MODULE_LINES lines or a function over
  MAX_FUNCTION_LINES, unless the file carries a ``# size-ok: <why>`` line.

docs/architecture.md draws the same table.  Run it on its own with
``python3 tests/layercheck.py`` (exit status 1 and the list when broken).
"""

import ast
import os
import sys
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = "memagent"
PLUGINS = PACKAGE + ".plugins"
# The plugin API: what a plugin may import of the runtime.
PLUGIN_API = (PACKAGE + ".runtime.services", PACKAGE + ".runtime.hooks")
ANY = "*"
# layer -> the layers its modules may import (its own included).
ALLOWED: "Dict[str, Tuple[str, ...]]" = {
    "core": ("core",),
    "aio": ("aio",),
    "sense": ("core", "aio", "sense"),
    "ipc": ("core", "aio", "ipc"),
    "runtime": ("core", "sense", "ipc", "aio", "runtime"),
    "client": ("core", "aio", "client"),
    "plugins": ("core", "aio", "plugin-api"),  # and the plugin's own package
    "demo": (ANY,),
    "top": (ANY,),  # __init__, __main__, cli, statuscli, fetchcli, remote(io), plot*, moved
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
SIZE_OK = "# size-ok:"


def module_files(root: str) -> "Iterator[Tuple[str, str]]":
    """Yield: (dotted module name, path) of every .py file of the package in
    the checkout ``root`` (agent/ and plugins/), sorted."""
    for top, base in (("agent", PACKAGE), ("plugins", PLUGINS)):
        start = os.path.join(root, top)
        found = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in filenames:
                if name.endswith(".py"):
                    found.append(os.path.join(dirpath, name))
        for path in sorted(found):
            parts = os.path.relpath(path, start)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            if top == "agent" and parts[:1] == ["plugins"]:
                continue  # agent/plugins/ would shadow plugins/: not a layout we have
            yield ".".join([base] + parts), path


def layer_of(module: str) -> str:
    """Return: the layer of a module of the package (see ALLOWED)."""
    parts = module.split(".")
    if module == PLUGINS or module.startswith(PLUGINS + "."):
        return "plugins"
    if len(parts) == 1 or parts[1] in ("cli", "statuscli", "statusargs", "fetchcli", "remote",
                                       "remoteio", "plot", "plotdata", "plotstatus",
                                       "__main__", "moved"):
        return "top"
    return parts[1] if parts[1] in ALLOWED else "unknown"


def plugin_of(module: str) -> "Optional[str]":
    """Return: ``memagent.plugins.X`` for a module of plugin X, else None."""
    parts = module.split(".")
    return ".".join(parts[:3]) if len(parts) >= 3 and module.startswith(PLUGINS + ".") else None


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Return: the absolute name an ImportFrom's module part refers to."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_only(tree: ast.Module) -> "Set[int]":
    """Return: the ids of the nodes under ``if TYPE_CHECKING:`` blocks."""
    out: "Set[int]" = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and \
                node.test.id == "TYPE_CHECKING":
            for child in node.body:
                out.update(id(n) for n in ast.walk(child))
    return out


def imports_of(module: str, path: str,
               known: "Set[str]") -> "List[Tuple[str, int, bool, bool]]":
    """Return: (imported module of the package, line, at module level, only
    for the type checker) for every import in the file; ``from X import y``
    names X.y when that is a module of ``known``, else X.  The package
    itself (``from memagent import __version__``) is left out: every import
    of a submodule runs it anyway."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # imports in a module-level try/if count as module level
        if isinstance(node, (ast.Try, ast.If)):
            top_level.update(id(n) for n in ast.walk(node))
    type_only = _type_only(tree)
    is_package = path.endswith("__init__.py")
    out: "List[Tuple[str, int, bool, bool]]" = []
    for node in ast.walk(tree):
        names: "List[str]" = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            names = [base + "." + a.name if base + "." + a.name in known else base
                     for a in node.names]
        for name in names:
            entry = (name, node.lineno, id(node) in top_level, id(node) in type_only)
            if name.startswith(PACKAGE + ".") and entry not in out:
                out.append(entry)
    return out


def _allowed(src: str, dst: str) -> bool:
    """Return: True if module ``src`` may import module ``dst``."""
    layer, target = layer_of(src), layer_of(dst)
    rules = ALLOWED.get(layer, ())
    if ANY in rules:
        return True
    if layer == "plugins":
        own = plugin_of(src)
        if own is not None and (dst == own or dst.startswith(own + ".")):
            return True
        if dst in PLUGIN_API:
            return True
        return target in rules
    return target in rules


def _cycles(graph: "Dict[str, Set[str]]") -> "List[List[str]]":
    """Return: the strongly connected components of more than one module
    (or one that imports itself), each sorted (Tarjan, iterative)."""
    index: "Dict[str, int]" = {}
    low: "Dict[str, int]" = {}
    stack: "List[str]" = []
    on_stack: "Set[str]" = set()
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1 or node in graph.get(node, ()):
                    found.append(sorted(comp))
    return found


def size_problems(module: str, path: str) -> "List[str]":
    """Return: the module's size violations (none with a ``# size-ok:`` line)."""
    with open(path) as f:
        text = f.read()
    if any(line.strip().startswith(SIZE_OK) and line.strip()[len(SIZE_OK):].strip()
           for line in text.splitlines()):
        return []
    out = []
    lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if lines > MAX_MODULE_LINES:
        out.append("%s: %d lines (over %d; split it, or say why in a '%s' line)"
                   % (module, lines, MAX_MODULE_LINES, SIZE_OK))
    for node in ast.walk(ast.parse(text, path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append("%s:%d: function %s is %d lines (over %d)"
                           % (module, node.lineno, node.name, length, MAX_FUNCTION_LINES))
    return out


def check_tree(root: str) -> "List[str]":
    """Check the package in the checkout ``root`` against the table.

    Returns: one human line per violation (empty: the tree is clean).
    Raises: SyntaxError for a file that does not parse.
    """
    files = dict(module_files(root))
    known = set(files)
    problems: "List[str]" = []
    graph: "Dict[str, Set[str]]" = {m: set() for m in files}
    for module, path in sorted(files.items()):
        if layer_of(module) == "unknown":
            problems.append("%s: in no layer (%s)" % (module, ", ".join(sorted(ALLOWED))))
        for target, line, at_top, type_only in imports_of(module, path, known):
            if target not in known:
                if target not in (PACKAGE, PLUGINS):
                    problems.append("%s:%d: imports %s, which does not exist"
                                    % (module, line, target))
                continue
            if not type_only:
                graph[module].add(target)
            if not _allowed(module, target):
                problems.append("%s:%d: %s may not import %s (%s)"
                                % (module, line, layer_of(module), target, layer_of(target)))
            elif at_top and layer_of(target) == "demo" and layer_of(module) != "demo":
                problems.append("%s:%d: imports %s at module level (only when the demo runs)"
                                % (module, line, target))
        problems.extend(size_problems(module, path))
    for comp in _cycles(graph):
        problems.append("import cycle: %s" % " <-> ".join(comp))
    return problems


if __name__ == "__main__":
    found = check_tree(sys.argv[1] if len(sys.argv) > 1 else
                       os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for problem in found:
        print(problem)
    sys.exit(1 if found else 0)
