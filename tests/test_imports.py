"""The package's imports, read from the source with `ast` (those inside functions too): no cycles, and the data
layer (db, sql, models, states, queue) never reaches up into what shows, launches or runs jobs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jobqueue"
DATA_LAYER = ("jobqueue.db", "jobqueue.sql", "jobqueue.models", "jobqueue.states", "jobqueue.queue")
# What the data layer must never import, directly or through another module: the modules (and packages) that
# show, launch, control or run jobs.
ABOVE_DATA = ("report", "progress", "cli", "backends", "launch", "service", "worker", "control", "reaper", "ui")

Edges = dict[str, dict[str, int]]  # module -> {module it imports: the line of the first such import}


def module_names(package: Path) -> dict[str, Path]:
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every import statement, at any depth, except under `if TYPE_CHECKING:` (those never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, modules) -> str | None:
    """`name`, or the nearest package holding it, if it is one of ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, modules) -> dict[str, int]:
    """The package's modules that `module` imports. `import jobqueue.x` runs jobqueue/__init__.py first, but that
    implicit edge to the parent package is not counted: only the module named."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [_known(alias.name, modules) for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from jobqueue import queue` imports the module jobqueue.queue; `from jobqueue.queue import x`, queue.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else _known(base, modules)
                for alias in node.names
            ]
        for target in targets:
            if target is not None and target != module:
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def import_graph(package: Path = PACKAGE) -> Edges:
    modules = module_names(package)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def find_cycles(graph: Edges) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan's algorithm, then a shortest loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_shortest_path(graph, group[0], group[0], within=set(group)) for group in sorted(groups)]


def _shortest_path(graph: Edges, start: str, goal: str, within: set[str] | None = None) -> list[str] | None:
    """The shortest import chain start -> ... -> goal (a loop when start == goal), or None."""
    paths = {nxt: [start, nxt] for nxt in graph.get(start, {}) if within is None or nxt in within}
    frontier = list(paths)
    while frontier:
        if goal in paths:
            return paths[goal]
        following = []
        for node in frontier:
            for nxt in graph.get(node, {}):
                if nxt not in paths and (within is None or nxt in within):
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    return paths.get(goal)


def describe(graph: Edges, chain: list[str]) -> str:
    """`a (line 3) -> b (line 9) -> c`: each import with the line it is on."""
    hops = [f"{a} (line {graph[a][b]})" for a, b in zip(chain, chain[1:])]
    return " -> ".join(hops + [chain[-1]])


def _above_data(module: str) -> bool:
    return any(module == f"jobqueue.{name}" or module.startswith(f"jobqueue.{name}.") for name in ABOVE_DATA)


def test_the_graph_sees_imports_inside_functions_relative_ones_and_from_package_forms(tmp_path):
    pkg = tmp_path / "jobqueue"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__", "a", "b", "c", "d", "sub/__init__", "sub/e"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from jobqueue import b\n")
    (pkg / "b.py").write_text(
        "import jobqueue.sub.e\nTYPE_CHECKING = False\nif TYPE_CHECKING:\n    from jobqueue import d\n"
    )
    (pkg / "sub" / "e.py").write_text("from .. import c\nfrom ..a import f\nfrom . import missing\n")
    (pkg / "c.py").write_text("from jobqueue import Thing\n")
    modules = module_names(pkg)
    graph = {m: set(imports_of(m, p, modules)) for m, p in modules.items()}
    assert graph["jobqueue.a"] == {"jobqueue.b"}
    assert graph["jobqueue.b"] == {"jobqueue.sub.e"}  # not the parent packages, nor the TYPE_CHECKING import
    assert graph["jobqueue.sub.e"] == {"jobqueue.c", "jobqueue.a", "jobqueue.sub"}
    assert graph["jobqueue.c"] == {"jobqueue"}
    cycles = find_cycles({m: imports_of(m, p, modules) for m, p in modules.items()})
    assert [set(c) for c in cycles] == [{"jobqueue.a", "jobqueue.b", "jobqueue.sub.e"}]


def test_no_module_of_the_package_is_part_of_an_import_cycle():
    graph = import_graph()
    assert "jobqueue.queue" in graph and graph["jobqueue.queue"], "the graph should see queue's imports"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(graph, cycle) for cycle in cycles)


@pytest.mark.parametrize("module", DATA_LAYER)
def test_the_data_layer_never_imports_what_shows_launches_or_runs_jobs(module):
    graph = import_graph()
    assert module in graph
    reached = [m for m in graph if _above_data(m) and _shortest_path(graph, module, m)]
    assert not reached, f"{module} imports:\n" + "\n".join(
        describe(graph, _shortest_path(graph, module, m)) for m in sorted(reached)
    )
