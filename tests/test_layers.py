"""The rooms of the package, enforced: who may import whom, and no import cycles.

Read from the source with `ast` (nothing is imported), every `import` counts -
at module level, inside functions (the CLI's lazy imports) and under
`TYPE_CHECKING` - because each one is a dependency a reader has to follow.

    pullwake/__init__.py    the version; imports nothing of pullwake
    pullwake.core           shared vocabulary; imports only itself
    pullwake.runner         the runner; imports only core
    pullwake.server         the server; imports only core
    pullwake.dashboards     the generator; imports only core (span names from the catalog)
    pullwake.tools          demo, stack, proxy, sink, docs: import what they drive
    pullwake.cli/__main__   the dispatcher on top; nothing imports it
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from pathlib import Path

from tests.support.repo import ROOT

PACKAGE = ROOT / "pullwake"

# room -> rooms it may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    "root": frozenset(),
    "core": frozenset({"root"}),
    "runner": frozenset({"root", "core"}),
    "server": frozenset({"root", "core"}),
    "dashboards": frozenset({"root", "core"}),
    "tools": frozenset({"root", "core", "runner", "server", "dashboards"}),
    "cli": frozenset({"root", "core", "runner", "server", "dashboards", "tools"}),
}


def modules() -> dict[str, Path]:
    """Every module of the package (symlinked rooms followed), by dotted name."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(PACKAGE, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        rel = Path(dirpath).relative_to(PACKAGE.parent)
        for f in filenames:
            if not f.endswith(".py"):
                continue
            parts = [*rel.parts, f[:-3]]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = Path(dirpath) / f
    return found


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in ("cli", "__main__"):
        return "cli"
    return parts[1] if parts[1] in ALLOWED else "root"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int, bool]]:
    """(imported pullwake module, line, at run time) for every import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for sub in node.body:
                typing_only.update(id(n) for n in ast.walk(sub))
    for node in ast.walk(tree):
        runtime = id(node) not in typing_only
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "pullwake":
                    yield _existing(alias.name, known), node.lineno, runtime
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_pkg else module.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            if base.split(".")[0] != "pullwake":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in known else _existing(base, known)), node.lineno, runtime


def _existing(name: str, known: set[str]) -> str:
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def graph(runtime_only: bool) -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {
        m: {t for t, _, rt in imports(m, p, known) if t != m and (rt or not runtime_only)}
        for m, p in mods.items()
    }


def test_every_room_is_found() -> None:
    rooms = {room(m) for m in modules()}
    assert rooms == set(ALLOWED), rooms
    assert "pullwake.runner.core" in modules() and "pullwake.server.app" in modules()


def test_each_room_imports_only_the_rooms_below_it() -> None:
    mods = modules()
    known = set(mods)
    bad = []
    for m, path in sorted(mods.items()):
        mine = room(m)
        for target, line, _ in imports(m, path, known):
            theirs = room(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {m} ({mine}) imports {target}")
    assert bad == [], "\n".join(bad)


def test_the_package_root_imports_nothing_of_the_package() -> None:
    init = PACKAGE / "__init__.py"
    assert list(imports("pullwake", init, set(modules()))) == []


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    """Type-only imports (`if TYPE_CHECKING:`) are left out: they never run, and an
    annotation naming the class that calls you is not a dependency loop."""
    assert _cycles(graph(runtime_only=True)) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_architecture_doc_lists_every_module() -> None:
    """docs/architecture.md names each module in its tables (room-relative paths:
    `core/catalog.py`, `runner/core.py`, `server/ds/store.py`, `tools/demo.py`), and
    no module that is gone."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for name, path in sorted(modules().items()):
        rel = path.relative_to(PACKAGE).as_posix()
        shown = f"`pullwake/{rel}`" if "/" not in rel else f"`{rel}`"
        if shown not in doc:
            missing.append(f"{name} ({shown})")
    assert missing == [], "add a line to docs/architecture.md for: " + ", ".join(missing)
    named = re.findall(r"`((?:core|runner|server|dashboards|tools)/[\w/]+\.py)`", doc)
    named += [f"pullwake/{m}" for m in re.findall(r"`pullwake/(\w+\.py)`", doc)]
    gone = [n for n in named if not (PACKAGE / n.removeprefix("pullwake/")).is_file()]
    assert gone == [], "docs/architecture.md names modules that do not exist: " + ", ".join(gone)


def test_no_test_module_imports_another_test_module() -> None:
    """Shared helpers live in tests/support/ (or a room's non-test helper module), so
    a test file can be read, run and deleted on its own."""
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert bad == [], "\n".join(bad)
