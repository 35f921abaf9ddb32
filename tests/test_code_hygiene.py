"""The source keeps its shape (issue 13), checked by reading it with ast rather than by review: no import
circles between tunery modules, nor between its packages (the layers), even through imports inside
functions; route handlers parse → call → return in at most 15 lines."""

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


def _dynamic_import(node: ast.AST) -> ast.Import | None:
    """`__import__("a.b", …)` or `importlib.import_module("a.b")` with a literal name, as `import a.b`."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    if name not in ("__import__", "import_module"):
        return None
    return ast.Import(names=[ast.alias(name=node.args[0].value)], lineno=node.lineno)


def import_graph(src: Path, package: str) -> dict[str, dict[str, int]]:
    """module → {module it imports: line of the first such import}, imports inside functions included."""
    known = _modules(src, package)
    graph: dict[str, dict[str, int]] = {m: {} for m in known}
    for module, (path, is_package) in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            node = _dynamic_import(node) or node
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


# A layer is a subpackage (tunery.data, tunery.train, …) or a top-level module (tunery.cli, tunery.settings).
# Each imports only the layers below it, so no two layers import each other, through any of their modules.
# The edges listed here are left out: a package's cli.py is imported by tunery.cli alone (checked), which
# registers its commands, so a command may ask a layer above its package and nothing reaches back up to it.
ALLOWED_LAYER_EDGES = {
    # (importing module, layer it imports): why
    ("tunery.data.cli", "tunery.train"):
        "`tunery data stats` shows the run the trainer would make (train/plan.py)",
    ("tunery.train.cli", "tunery.inference"): "`tunery export --gguf` converts as the llama.cpp server does",
    ("tunery.models.cli", "tunery.inference"): "`tunery models list` shows the backend that would serve each",
}


def layer_of(module: str) -> str:
    """tunery.a.b.c → tunery.a: the subpackage, or the top-level module, that a module belongs to."""
    return ".".join(module.split(".")[:2])


def layer_graph(graph: dict[str, dict[str, int]], allowed=()) -> dict[str, dict[str, list[str]]]:
    """layer → {layer it imports: ["module:line -> module", …]}, the edges in `allowed` left out."""
    out: dict[str, dict[str, list[str]]] = {layer_of(m): {} for m in graph}
    for module in sorted(graph):
        for target, line in sorted(graph[module].items(), key=lambda t: t[1]):
            a, b = layer_of(module), layer_of(target)
            if a != b and (module, b) not in allowed:
                out[a].setdefault(b, []).append(f"{module}:{line} -> {target}")
    return out


def describe_layers(cycle: list[str], layers) -> str:
    """Each step of a circle of layers with the first import that makes it (and how many more do)."""
    def step(a, b):
        edges = layers[a][b]
        return f"{a} ({edges[0]}" + (f", and {len(edges) - 1} more" if len(edges) > 1 else "") + ")"

    return " -> ".join(step(a, b) for a, b in pairwise(cycle)) + f" -> {cycle[-1]}"


def test_no_import_circles_between_tunery_modules():
    graph = import_graph(SRC, "tunery")
    assert len(graph) > 50 and graph["tunery.train.dpo"], "the scan found no modules or no imports"
    cycles = import_cycles(graph)
    assert not cycles, "import circles (move the shared piece into a module below both):\n" + "\n".join(
        describe(c, graph) for c in cycles)


def test_no_import_circles_between_tunery_layers():
    graph = import_graph(SRC, "tunery")
    layers = layer_graph(graph, ALLOWED_LAYER_EDGES)
    assert {"tunery.data", "tunery.train", "tunery.cli"} <= set(layers) and layers["tunery.train"]
    cycles = import_cycles(layers)
    assert not cycles, ("import circles between layers (move the shared piece into the lower layer, or the "
                        "piece that needs the higher layer up into it):\n"
                        + "\n".join(describe_layers(c, layers) for c in cycles))
    stale = [e for e in ALLOWED_LAYER_EDGES if not any(layer_of(t) == e[1] for t in graph.get(e[0], ()))]
    assert not stale, f"allowed layer edges that no longer exist (drop them): {stale}"
    for module, _ in ALLOWED_LAYER_EDGES:  # only the top imports it, so no circle can run back through it
        importers = {m for m, targets in graph.items() if module in targets}
        assert importers == {"tunery.cli"}, f"{module} is imported by {sorted(importers)}, not tunery.cli"


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


def test_the_layer_check_finds_a_circle_between_packages_whose_modules_form_none(tmp_path):
    pkg = tmp_path / "pkg"
    for sub in ("low", "high"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "rules.py").write_text("X = 1\n")
    (pkg / "low" / "stats.py").write_text("def f():\n    from pkg.high.config import Y\n    return Y\n")
    (pkg / "low" / "cli.py").write_text("import importlib\n\nrun = importlib.import_module('pkg.high.run')\n")
    (pkg / "high" / "config.py").write_text("Y = 2\n")
    (pkg / "high" / "run.py").write_text("from pkg.low import rules\nfrom pkg.low.rules import X\n")
    (pkg / "cli.py").write_text("__import__('pkg.low.cli', fromlist=['x'])\n")
    graph = import_graph(tmp_path, "pkg")
    assert not import_cycles(graph)  # module by module there is no circle
    assert graph["pkg.cli"] == {"pkg.low.cli": 1} and graph["pkg.low.cli"] == {"pkg.high.run": 3}
    layers = layer_graph(graph)
    cycles = import_cycles(layers)
    assert cycles == [["pkg.high", "pkg.low", "pkg.high"]]
    assert describe_layers(cycles[0], layers) == (
        "pkg.high (pkg.high.run:1 -> pkg.low.rules) -> "
        "pkg.low (pkg.low.cli:3 -> pkg.high.run, and 1 more) -> pkg.high")
    allowed = {("pkg.low.cli", "pkg.high"): "a command line", ("pkg.low.stats", "pkg.high"): "for the test"}
    assert not import_cycles(layer_graph(graph, allowed))


# --- thin route handlers ------------------------------------------------------------------------

HANDLER_MAX_LINES = 15
ROUTE_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "api_route", "websocket"}


def route_handlers(paths) -> list[tuple[str, int]]:
    """(file:line name, body lines without the docstring) of each function decorated @<router>.<method>(…)."""
    out = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)
                       and d.func.attr in ROUTE_METHODS for d in node.decorator_list):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body = body[1:]
            lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0
            out.append((f"{path.name}:{node.lineno} {node.name}", lines))
    return out


def test_route_handlers_parse_call_return_in_at_most_15_lines():
    paths = list((SRC / "tunery" / "api").rglob("*.py"))  # the dashboard's routes too (api/dashboard)
    handlers = route_handlers(paths)
    names = {h.split()[-1] for h, _ in handlers}
    assert len(handlers) > 20 and {"upload_file", "create_completion", "create_chat_completion", "create_job",
                                   "delete_model", "registry_models"} <= names, names
    long = [f"{h}: {n} lines" for h, n in handlers if n > HANDLER_MAX_LINES]
    assert not long, (f"route handlers over {HANDLER_MAX_LINES} lines (move the logic into the store or "
                      "service function that owns it):\n" + "\n".join(long))


def test_the_handler_check_counts_the_body_without_its_docstring(tmp_path):
    def body(n):
        return "".join(f"    x{i} = {i}\n" for i in range(n - 1)) + "    return x0\n\n\n"

    (tmp_path / "r.py").write_text(
        "@router.get('/a')\nasync def fits():\n    \"\"\"Doc.\n\n    More.\"\"\"\n" + body(15)
        + "@app.post('/b', summary='b')\ndef too_long():\n" + body(16)
        + "@functools.cache\ndef not_a_route():\n" + body(40))
    found = route_handlers([tmp_path / "r.py"])
    assert found == [("r.py:2 fits", 15), ("r.py:24 too_long", 16)]
    assert [h for h, n in found if n > HANDLER_MAX_LINES] == ["r.py:24 too_long"]
