"""The import graph of the cmb package: no cycles (issue 23).

Every ``import cmb...`` and ``from cmb... import`` counts, also those inside functions:
a lazy import that closes a cycle still ties two modules to each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "cmb"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> nx.DiGraph:
    """Module -> the cmb modules it imports (a ``from a import b`` naming a submodule counts as ``a.b``)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").split(".")[0] == "cmb"
            ):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return graph


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert graph.number_of_nodes() > 40
    assert graph.has_edge("cmb.evaluation.truth", "cmb.annotations") and graph.has_edge(
        "cmb.localize", "cmb.tables"
    )


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_a_cycle_is_found(tmp_path):
    pkg = tmp_path / "cmb"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cmb.b import x\n")
    (pkg / "b.py").write_text("def f():\n    from cmb import a\n")
    cycles = [c for c in nx.strongly_connected_components(import_graph(pkg)) if len(c) > 1]
    assert cycles == [{"cmb.a", "cmb.b"}]


def private_imports(root=None):
    """``(module, imported name)`` for every private name one cmb module imports from another."""
    root = Path(root or Path(__file__).resolve().parents[1] / "cmb")
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cmb":
                found += [
                    (str(path.relative_to(root.parent)), f"{node.module}.{a.name}")
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    return found


def test_no_private_names_cross_modules(tmp_path):
    assert not private_imports(), private_imports()
    pkg = tmp_path / "cmb"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from cmb.b import _helper\n")
    assert private_imports(pkg) == [("cmb/a.py", "cmb.b._helper")]
