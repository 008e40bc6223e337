"""The shape of the code: the core (architectures, building, gradients, statistics, verdicts, store,
sweep, the three layers' engines) never imports the app code (the commands, the report, ``measure``,
``advdim.testing``), and no two modules import each other, directly or around a circle.

Every ``advdim`` import counts, those inside functions too (a late import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("advdim", "theory", "simulate", "empirical")
#: the app: what a user runs, above the core
APP = {"advdim.measure", "advdim._measure_cli", "advdim._report_cli", "advdim._verify_cli", "advdim.report",
       "advdim.cli", "advdim.testing", "advdim.__main__", "advdim.simulate._cli", "advdim.theory._cli",
       "advdim.empirical._cli", "advdim._target_checks", "advdim._measure_base", "advdim._measure_per_size",
       "advdim._measure_upsampled"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] != "advdim":
        parts = ["advdim", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Imports(ast.NodeVisitor):
    """The advdim modules one file imports (``files``: every module name), outside ``TYPE_CHECKING``."""

    def __init__(self, files: set[str]) -> None:
        self.files = files
        self.deps: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.module.startswith("advdim"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                self.deps.add(sub if sub in self.files else node.module)

    def visit_Import(self, node: ast.Import) -> None:
        self.deps.update(a.name for a in node.names if a.name.startswith("advdim"))


def import_graph() -> dict[str, set[str]]:
    """Module -> the advdim modules it imports (outside ``TYPE_CHECKING`` blocks)."""
    files = {_name(p): p for d in LAYERS for p in (ROOT / d).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        visitor = _Imports(set(files))
        visitor.visit(ast.parse(path.read_text()))
        graph[mod] = {d for d in visitor.deps if d in files and d != mod}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_core_never_imports_the_app() -> None:
    graph = import_graph()
    assert APP <= set(graph), APP - set(graph)
    wrong = {m: sorted(deps & APP) for m, deps in graph.items() if m not in APP and deps & APP}
    assert not wrong, wrong


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_planted_circle() -> None:
    graph = import_graph()
    graph["advdim.stats"] = graph["advdim.stats"] | {"advdim.simulate._study"}  # _study imports stats
    assert any({"advdim.simulate._study", "advdim.stats"} <= set(c) for c in circles(graph))
