"""Guard against import cycles inside kvstack/.

Why: a cycle makes import order matter (a module half-initialised when its
partner reads it) and hides which layer depends on which. Only module-level
imports count: imports inside functions are deliberate lazy imports, and
`if TYPE_CHECKING:` blocks never run.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kvstack"
ROOT = PACKAGE.parent


def module_name(path: Path) -> str:
    """Dotted name of a source file under the package root."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    """True for `TYPE_CHECKING` or `typing.TYPE_CHECKING`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported.

    Descends into `if`/`try`/`with` blocks (they run at import time) but not
    into functions or classes' methods, nor `if TYPE_CHECKING:` blocks.
    """
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                found += _module_level_imports(block)
            for handler in node.handlers:
                found += _module_level_imports(handler.body)
        elif isinstance(node, ast.With):
            found += _module_level_imports(node.body)
        elif isinstance(node, ast.ClassDef):
            found += _module_level_imports(node.body)
    return found


def _all_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, lazy ones inside functions included (`if TYPE_CHECKING:` left out)."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            found += _all_imports(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            found += _all_imports([n for n in getattr(node, field, []) if isinstance(n, ast.AST)])
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """Absolute module name that a (possibly relative) `from` import names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """Map each kvstack module to the kvstack modules it imports at load time.

    `from pkg import name` counts as an edge to `pkg.name` when that is a
    module, else to `pkg`. Importing `a.b.c` also runs `a` and `a.b`, but
    parent packages are left out of the edges: counting them would report
    every `__init__` that re-exports a child as a cycle with that child.
    With `lazy`, imports inside functions count too.
    """
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in (_all_imports if lazy else _module_level_imports)(tree.body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            edges |= {t for t in targets if t in files and t != module}
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_graph_sees_known_edges() -> None:
    graph = import_graph()
    assert "kvstack.errors" in graph["kvstack.stack"]
    assert len(graph) > 100


def test_no_import_cycles_in_kvstack() -> None:
    found = cycles(import_graph())
    report = "\n".join(
        f"cycle of {len(c)} modules: " + " <-> ".join(m.replace(".", "/") + ".py" for m in c)
        for c in found
    )
    assert not found, f"{len(found)} import cycle(s) in kvstack/:\n{report}"


def test_cycle_finder_reports_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]



# Cycles that close only through an import inside a function (or `load_builtin`'s import_module of
# STAGE_MODULES, which the graph adds as edges). They cannot fail at import time, but they still tie
# layers together. Each is named by the modules it may span (fnmatch patterns); the list may only shrink.
# Empty since stage modules import the registry (kvstack.registry) instead of the recipe layer
# (kvstack.stack), which loads them (issue 21, deliverable 4).
KNOWN_LAZY_CYCLES: dict[str, tuple[str, ...]] = {}


def lazy_graph() -> dict[str, set[str]]:
    """The import graph with lazy imports, plus the stage modules that `load_builtin` imports by name."""
    from kvstack.stages import STAGE_MODULES

    graph = import_graph(lazy=True)
    graph["kvstack.stages"] |= {f"kvstack.stages.{name}" for name in STAGE_MODULES}
    return graph


def _known(cycle: list[str]) -> str | None:
    for name, patterns in KNOWN_LAZY_CYCLES.items():
        if all(any(fnmatch(m, p) for p in patterns) for m in cycle):
            return name
    return None


def test_lazy_imports_add_no_unknown_cycle() -> None:
    found = cycles(lazy_graph())
    unknown = [c for c in found if _known(c) is None]
    assert not unknown, "import cycles through lazy imports in kvstack/:\n" + "\n".join(
        " <-> ".join(c) for c in unknown
    )
    gone = set(KNOWN_LAZY_CYCLES) - {_known(c) for c in found}
    assert not gone, f"known cycles no longer there, remove them from KNOWN_LAZY_CYCLES: {sorted(gone)}"


# --- layers (issue 21, deliverable 2): the storage layer kvstack/rows sits beneath everything ----
# Old paths of modules that moved to kvstack.rows; they only re-export, for code outside the repo.
MOVED_TO_ROWS = {
    f"kvstack.stages.{name}" for name in ("quant_rows", "quant_pack", "quant_split", "quant_rotate", "quant_groups")
}


def test_rows_import_nothing_of_kvstack_above_them() -> None:
    graph = import_graph(lazy=True)
    rows = [m for m in graph if m == "kvstack.rows" or m.startswith("kvstack.rows.")]
    assert len(rows) >= 8
    above = {
        m: sorted(e for e in graph[m] if e != "kvstack.errors" and not e.startswith("kvstack.rows"))
        for m in rows
    }
    assert not any(above.values()), f"kvstack/rows imports a layer above it: {above}"


def test_wire_kernels_and_fast_decode_never_import_stages() -> None:
    graph = import_graph(lazy=True)
    users = [m for m in graph if m.startswith(("kvstack.wire", "kvstack.kernels")) or m == "kvstack.hf.fast_decode"]
    found = {m: sorted(e for e in graph[m] if e.startswith("kvstack.stages")) for m in users}
    assert not any(found.values()), f"storage users reach into kvstack/stages: {found}"


def test_no_module_imports_the_old_paths_of_moved_modules() -> None:
    graph = import_graph(lazy=True)
    assert MOVED_TO_ROWS <= set(graph), "a re-export module at an old path is gone"
    found = {m: sorted(graph[m] & MOVED_TO_ROWS) for m in graph if m not in MOVED_TO_ROWS}
    assert not any(found.values()), f"import these from kvstack.rows instead: {found}"


# The HF driver reaches stages only through their registries: kvstack.stack (stages by name),
# kvstack.stages.load_builtin (the list of stage modules), the capture providers of kvstack.hf.captures
# and the decode policies of kvstack.decode_policy. Naming a stage module from hf/ is what issue 21
# (deliverable 3) removed: adding a method must not touch the driver.
STAGE_REGISTRY_MODULES = {"kvstack.stages"}


def hf_stage_imports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Per module of kvstack/hf/, the stage modules it imports (lazily or not), registries left out."""
    out = {}
    for module, targets in graph.items():
        if module == "kvstack.hf" or module.startswith("kvstack.hf."):
            bad = {t for t in targets if t.startswith("kvstack.stages") and t not in STAGE_REGISTRY_MODULES}
            if bad:
                out[module] = bad
    return out


def test_hf_names_no_stage_module() -> None:
    found = hf_stage_imports(import_graph(lazy=True))
    assert not found, "kvstack/hf/ imports stage modules directly: " + "; ".join(
        f"{m} -> {', '.join(sorted(t))}" for m, t in sorted(found.items())
    )


def test_hf_stage_check_sees_a_stage_import() -> None:
    graph = {"kvstack.hf.prefill": {"kvstack.stages.select.h2o", "kvstack.stages", "kvstack.kv"}}
    assert hf_stage_imports(graph) == {"kvstack.hf.prefill": {"kvstack.stages.select.h2o"}}


# --- explicit structure (issue 21, deliverable 4): families share helper modules, not each other's methods ---
def test_no_stage_module_imports_another_stage_module() -> None:
    """A method module (one listed in STAGE_MODULES) reaches shared code only through helper modules."""
    from kvstack.stages import STAGE_MODULES

    methods = {f"kvstack.stages.{name}" for name in STAGE_MODULES}
    graph = import_graph(lazy=True)
    assert methods <= set(graph), "a module listed in STAGE_MODULES is missing"
    found = {m: sorted(graph[m] & methods) for m in methods}
    assert not any(found.values()), f"stage modules importing other stage modules: {found}"


# Which stage families may use which others' helper modules (never their method modules, checked above).
# Each edge says why; the table may only shrink. `common` is for helpers several families share.
FAMILY_USES = {
    "select": set(),
    "quant": {"common", "lowrank"},  # calibrated codebooks are stored in lowrank/calibration.py's file format
    "lowrank": {"common"},
    "crosslayer": {"common", "lowrank"},  # xkv is a joint low-rank encoding across layers (lowrank/fit, rows)
    "common": set(),
}


def stage_family(module: str) -> str | None:
    """``kvstack.stages.quant.kivi`` -> ``quant``; None for modules outside a family package."""
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["kvstack", "stages"] else None


def family_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Per family, the other families its modules import."""
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        family = stage_family(module)
        if family is not None:
            used = {stage_family(t) for t in targets} - {None, family}
            out.setdefault(family, set()).update(used)
    return out


def test_stage_families_use_only_the_declared_families() -> None:
    edges = family_edges(import_graph(lazy=True))
    assert set(edges) == set(FAMILY_USES), f"stage family packages: {sorted(edges)}"
    extra = {f: sorted(edges[f] - FAMILY_USES[f]) for f in edges if edges[f] - FAMILY_USES[f]}
    assert not extra, f"undeclared uses between stage families (add a helper to stages/common/?): {extra}"
    gone = {f: sorted(FAMILY_USES[f] - edges[f]) for f in edges if FAMILY_USES[f] - edges[f]}
    assert not gone, f"declared family uses no longer there, remove them from FAMILY_USES: {gone}"


def test_family_check_sees_a_cross_family_import() -> None:
    graph = {"kvstack.stages.select.h2o": {"kvstack.stages.quant.kivi", "kvstack.stages.select.base", "kvstack.kv"}}
    assert family_edges(graph) == {"select": {"quant"}}
