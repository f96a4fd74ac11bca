"""The import graph of ``mosaic`` (every ``import`` in every module, inside functions too; ``TYPE_CHECKING`` blocks
left out): no module cycle, no package cycle, and packages import only their layer or the ones below it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mosaic"
# core <- aggregation <- workloads / predictors <- ilp / agents <- runtime / report <- envs / pipeline / cli
LAYERS = {"core": 0, "aggregation": 0.5, "workloads": 1, "predictors": 1, "ilp": 2, "agents": 2, "runtime": 3,
          "report": 3, "envs": 4, "pipeline": 4, "reproduce": 4, "cli": 4, "mosaic": 5, "docsgen": 5}  # fmt: skip
# imports that break the layers, each with why it stays (the test fails when one is no longer there)
KNOWN: dict[tuple[str, str], str] = {}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The mosaic modules ``name`` imports (the longest known prefix of each imported name)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mosaic"):
                    resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("mosaic"):
                for alias in node.names:
                    resolve(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def unit(module: str) -> str:
    """The package (``agents``, ``runtime``, ...) or top-level module (``cli``, ``pipeline``) of ``module``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mosaic"


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``g`` with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                connect(w)
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
            connect(v)
    return out


def test_the_graph_is_read_whole() -> None:
    g = graph()
    assert "mosaic.runtime.loop" in g and "mosaic.agents.policy" in g["mosaic.runtime.loop"]
    assert "mosaic.runtime.vllm_backend" in g["mosaic.runtime.profiler"]  # an import inside a function counts
    assert set(map(unit, g)) <= set(LAYERS), sorted(set(map(unit, g)) - set(LAYERS))


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert cycles(graph()) == []


def test_agents_do_not_import_the_envs() -> None:
    g = graph()
    assert not [(m, t) for m, ts in g.items() if unit(m) == "agents" for t in ts if unit(t) == "envs"]


def test_packages_point_one_way() -> None:
    """Packages import their own layer or lower ones (:data:`LAYERS`), and the package graph has no cycle."""
    g = graph()
    up = {(m, t) for m, ts in g.items() for t in ts if LAYERS[unit(t)] > LAYERS[unit(m)]}
    assert up == set(KNOWN), f"imports up the layers: {sorted(up - set(KNOWN))}; no longer there: " \
                             f"{sorted(set(KNOWN) - up)}"  # fmt: skip
    packages: dict[str, set[str]] = {}
    for m, ts in g.items():
        packages.setdefault(unit(m), set()).update(unit(t) for t in ts if unit(t) != unit(m) and (m, t) not in KNOWN)
    assert cycles(packages) == []
