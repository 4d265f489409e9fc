"""The layers of docs/ARCHITECTURE.md hold: no import cycle among edgec's modules (imports inside
functions count too), no module importing a higher layer, and the README's exit-code table is the
one edgec.errors defines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import edgec.errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgec"

# face > pipeline > lowering & running > passes & front end > cost > base (docs/ARCHITECTURE.md)
LAYERS = (
    ("face", lambda m: m in ("edgec", "edgec.cli", "edgec.__main__")),
    ("pipeline", lambda m: m.startswith("edgec.pipeline")),
    ("lowering", lambda m: m.startswith(("edgec.backends", "edgec.runtime")) or m in ("edgec.report", "edgec.report_html")),
    ("passes", lambda m: m.startswith(("edgec.passes", "edgec.frontend")) or m in ("edgec.configure", "edgec.data")),
    ("cost", lambda m: m.startswith("edgec.cost")),
)


def layer_rank(module: str) -> int:
    """Higher is closer to the user; 0 is the base (errors, steps, fixed_point, targets, ...)."""
    for index, (_, member) in enumerate(LAYERS):
        if member(module):
            return len(LAYERS) - index
    return 0


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the edgec modules it imports anywhere in its body (a package's ``__init__`` is
    only an edge when the package itself is what is imported)."""
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [resolve(alias.name) for alias in node.names if alias.name.startswith("edgec")]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("edgec"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.append(full if full in known else resolve(node.module))
            graph[name].update(t for t in targets if t and t != name)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_edgec_modules():
    graph = import_graph()
    assert "edgec.pipeline.build" in graph["edgec"]  # the graph sees the imports
    assert strongly_connected(graph) == []


def test_imports_point_down_the_layers():
    graph = import_graph()
    upward = sorted(
        f"{module} ({layer_rank(module)}) imports {target} ({layer_rank(target)})"
        for module, targets in graph.items()
        for target in targets
        if layer_rank(target) > layer_rank(module)
    )
    assert upward == []
    assert layer_rank("edgec.cli") > layer_rank("edgec.pipeline.flow") > layer_rank("edgec.backends.tvm")
    assert layer_rank("edgec.backends.tvm") > layer_rank("edgec.passes.quant.mixed") > layer_rank("edgec.cost.resources") > 0


def test_the_readme_exit_code_table_is_the_one_edgec_uses():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Exit codes") :]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)}
    used = {cls.exit_code for cls in vars(edgec.errors).values() if isinstance(cls, type) and issubclass(cls, edgec.errors.EdgecError)}
    assert used <= documented and documented - used == {0, 2}  # success and argparse's usage error
