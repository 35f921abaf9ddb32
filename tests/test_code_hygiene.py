"""The source keeps its shape (issue 13), checked by reading it with ast rather than by review: no import
circles between tunery modules, even through imports inside functions."""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


# --- import circles -----------------------------------------------------------------------------

def _modules(src: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package's __init__) for every .py file of `package` under `src`."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known) -> list[str]:
    """The known modules an import statement names (`from p import m` names p.m when m is a module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if is_package else module.split(".")[:-1]
            here = here[:len(here) - node.level + 1]
            base = ".".join(here + ([node.module] if node.module else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    found = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.append(name)
    return found


def import_graph(src: Path, package: str) -> dict[str, dict[str, int]]:
    """module → {module it imports: line of the first such import}, imports inside functions included."""
    known = _modules(src, package)
    graph: dict[str, dict[str, int]] = {m: {} for m in known}
    for module, (path, is_package) in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, is_package, known):
                    graph[module].setdefault(target, node.lineno)
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest circle (a, b, …, a) through each group of modules that import each other."""
    cycles, seen = [], set()
    for start in sorted(graph):
        if start in seen:
            continue
        paths = {start: [start]}  # breadth-first, so the circle found back to `start` is a shortest one
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for m in frontier:
                for t in sorted(graph[m]):
                    if t == start:
                        found = paths[m] + [start]
                        break
                    if t not in paths:
                        paths[t] = paths[m] + [t]
                        nxt.append(t)
                if found:
                    break
            frontier = nxt
        if found:
            cycles.append(found)
            seen.update(found)
    return cycles


def describe(cycle: list[str], graph) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in pairwise(cycle)) + f" -> {cycle[-1]}"


def test_no_import_circles_between_tunery_modules():
    graph = import_graph(SRC, "tunery")
    assert len(graph) > 50 and graph["tunery.train.dpo"], "the scan found no modules or no imports"
    cycles = import_cycles(graph)
    assert not cycles, "import circles (move the shared piece into a module below both):\n" + "\n".join(
        describe(c, graph) for c in cycles)


def test_the_circle_check_finds_a_circle_through_an_import_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\n\n\ndef f():\n    from ..c import g\n    return g\n")
    (pkg / "c.py").write_text("def g():\n    from pkg import a\n    return a\n")
    (pkg / "d.py").write_text("from pkg import a, c\n")  # imports into a circle, not part of it
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.b"] == {"pkg.c": 5} and graph["pkg.d"] == {"pkg.a": 1, "pkg.c": 1}
    cycles = import_cycles(graph)
    assert cycles == [["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]]
    assert describe(cycles[0], graph) == "pkg.a (line 1) -> pkg.sub.b (line 5) -> pkg.c (line 2) -> pkg.a"

