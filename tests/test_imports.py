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


#: Third-party packages that a function may import itself, because importing them costs a
#: stage or a command's start-up real time or because an environment lacks them; the first
#: such import in each module says why (a ``# lazy:`` comment). Every other import (standard
#: library, cmb, cheap third-party) sits at the top of its module.
LAZY_IMPORTS = {
    "ants",  # antspyx: ~5 s, and ITK's thread count must be set before it (registration)
    "bids",  # pybids: ~0.6 s, and envs/ants.yaml (the ingest stage) has none (ingest_plan)
    "cc3d",  # envs/report.yaml has none, and the report reads sidecars (phase_convention)
    "matplotlib",  # ~0.5-1 s; only the figures need it (froc, reportlets, synth preview)
    "platformdirs",  # Snakemake's dependency, not ours; only macOS needs it (cluster_profile)
    "scipy",  # scipy.ndimage: ~0.3 s; image_checks (every ingest job) needs it for one check
    "skimage",  # ~0.35 s; image_checks, as scipy
}

#: cmb modules that a function may import itself for the same reason (start-up real time of a
#: stage or a command); the same ``# lazy:`` rule.
LAZY_CMB_IMPORTS = {
    ("cmb/mars_map.py", "cmb.mars_region"),  # pandas: python -m cmb.mars_map --help 0.7 -> 1.5 s
    ("cmb/mars_map.py", "cmb.template"),  # scipy.ndimage: ~0.4 s of the same --help
}

#: cmb imports kept inside a function because of an import cycle (rule: the line above says
#: ``# here, not at the top: <module> imports this module``).
CYCLES = {
    ("cmb/report/__init__.py", "cmb.report.__main__"),
}


def function_level_imports(root=None) -> list[tuple[str, int, str, str]]:
    """``(path, line, module, comment)`` of every import inside a function of the package at
    ``root``; ``comment`` is the comment line(s) just above it (or on it), else ""."""
    root = Path(root or PACKAGE)
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()

        def comment(lineno: int) -> str:
            above, i = [], lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip())
                i -= 1
            inline = lines[lineno - 1].partition("#")[2]
            return " ".join(above + ([f"# {inline.strip()}"] if inline else []))

        def walk(node, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    walk(child, True)
                elif in_function and isinstance(child, ast.Import | ast.ImportFrom):
                    if isinstance(child, ast.Import):
                        names = [a.name for a in child.names]
                    else:  # a relative import is the package's own
                        names = [(child.module or "") if child.level == 0 else "cmb"]
                    rel = str(path.relative_to(root.parent))
                    found.extend((rel, child.lineno, n, comment(child.lineno)) for n in names)
                else:
                    walk(child, in_function)

        walk(ast.parse(text), False)
    return found


def lazy_import_problems(root=None) -> list[str]:
    """What breaks the rule of :data:`LAZY_IMPORTS`: ``path:line module`` and what is wrong."""
    problems, seen, reasoned = [], set(), set()
    for path, line, module, note in function_level_imports(root):
        top = module.split(".")[0]
        seen.add((path, module))
        if top in LAZY_IMPORTS or (path, module) in LAZY_CMB_IMPORTS:
            if path not in reasoned and not note.startswith("# lazy:"):
                problems.append(
                    f"{path}:{line} {module}: the first lazy import needs '# lazy: why'"
                )
            reasoned.add(path)
        elif (path, module) in CYCLES:
            if "# here, not at the top:" not in note:
                problems.append(f"{path}:{line} {module}: say which cycle keeps it here")
        else:
            problems.append(
                f"{path}:{line} {module}: import it at the top of the module "
                "(or, if heavy or optional third-party, add it to LAZY_IMPORTS)"
            )
    if root is None:
        problems += [
            f"{p} {m}: no longer imported in a function; remove it from the test"
            for p, m in sorted((CYCLES | LAZY_CMB_IMPORTS) - seen)
        ]
    return problems


def test_function_level_imports_are_lazy_third_party(tmp_path):
    problems = lazy_import_problems()
    assert not problems, "\n".join(problems)
    pkg = tmp_path / "cmb"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "def f():\n    import json\n\n\ndef g():\n    from cmb.b import x\n\n\n"
        "def h():\n    # lazy: slow\n    import matplotlib\n    import ants\n"
    )
    (pkg / "b.py").write_text("import json\n\n\ndef f():\n    import ants\n")
    assert lazy_import_problems(pkg) == [
        "cmb/a.py:2 json: import it at the top of the module "
        "(or, if heavy or optional third-party, add it to LAZY_IMPORTS)",
        "cmb/a.py:6 cmb.b: import it at the top of the module "
        "(or, if heavy or optional third-party, add it to LAZY_IMPORTS)",
        "cmb/b.py:5 ants: the first lazy import needs '# lazy: why'",
    ]
