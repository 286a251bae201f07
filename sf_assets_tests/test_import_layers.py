"""The package's import graph: no cycles, ``core/`` at the bottom, no test code in the product.

Every import counts, wherever it stands: at the top of a module, inside a
function (a lazy import still runs, and still ties the two modules together) or
under ``if TYPE_CHECKING:`` (a reader still has to hold both modules in mind).
The graph is read from the source with :mod:`ast`, so nothing is imported to
build it, and the same checker runs on a small package made here with a cycle
in it, to show that it finds one.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sf_assets"
TEST_PACKAGE = "sf_assets_tests"
# Folders whose code ships or runs outside the tests; none may import the tests.
PRODUCT_TREES = ("sf_assets", "harness", "benchmarks", "scripts")
# Top-level names the installed package may not import: they are not installed with it.
NOT_INSTALLED = (TEST_PACKAGE, "harness", "benchmarks", "scripts")
# The package's layers, bottom first (the README's layout table): each imports only from itself and earlier ones.
LAYERS = ("core", "stores", "engines", "report", "orchestration", "definitions", "viewer", "cli")


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the module at ``path``, for a package whose folder is ``root``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, module: str) -> list[tuple[int, str]]:
    """Every ``(line, dotted name)`` the module at ``path`` imports, relative imports made absolute.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c``: ``c`` may be a
    submodule; :func:`module_graph` keeps whichever names a module.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            names.append((node.lineno, source))
            names.extend((node.lineno, f"{source}.{alias.name}") for alias in node.names if alias.name != "*")
    return names


def package_modules(root: Path) -> dict[str, Path]:
    """Every module of the package in folder ``root``, by dotted name."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _owning_module(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def module_graph(root: Path) -> dict[str, dict[str, int]]:
    """``{module: {imported module of the same package: line}}`` for the package in folder ``root``.

    Importing ``a.b.c`` also runs the packages ``a.b`` and ``a``: those count
    as imported too, except the importer's own enclosing packages (already
    running when it is imported).
    """
    modules = package_modules(root)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for line, imported in imported_names(path, name):
            target = _owning_module(imported, modules)
            while target and target != name:
                if target not in own_packages:
                    graph[name].setdefault(target, line)
                target = target.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph has none."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, int]], root: Path) -> str:
    """The cycle as a reader fixes it: each import with its file and line."""
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        file = package_modules(root)[a].relative_to(root.parent)
        steps.append(f"{file}:{graph[a][b]} imports {b}")
    return "import cycle " + " -> ".join(cycle) + ":\n  " + "\n  ".join(steps)


def core_violations(root: Path) -> list[str]:
    """Imports that break the bottom layer's rule: ``<package>/core`` imports no Dagster and nothing above it."""
    core = f"{root.name}.core"
    problems: dict[str, str] = {}
    for name, path in package_modules(root).items():
        if not (name == core or name.startswith(f"{core}.")):
            continue
        for line, imported in imported_names(path, name):
            top = imported.split(".")[0]
            above = imported.startswith(f"{root.name}.") and not (imported == core or imported.startswith(f"{core}."))
            if top in {"dagster", "dagster_graphql", "dagster_webserver"} or above:
                problems.setdefault(f"{path.relative_to(root.parent)}:{line}", imported)
    return sorted(f"{where} imports {imported}" for where, imported in problems.items())


def layer_violations(root: Path, layers: tuple[str, ...]) -> list[str]:
    """Imports from a later layer than the importer's (the package's own ``__init__`` belongs to none)."""
    rank = {layer: i for i, layer in enumerate(layers)}
    graph = module_graph(root)
    modules = package_modules(root)

    def layer_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else None

    problems: dict[tuple[str, int, str], str] = {}  # (importer, line, layer) -> the most specific module
    for module, imports in graph.items():
        own = layer_of(module)
        assert own is None or own in rank, f"{module}: in no layer of {layers}"
        for imported, line in imports.items():
            other = layer_of(imported)
            if own is not None and other is not None and rank[other] > rank[own]:
                key = (module, line, other)
                problems[key] = max(problems.get(key, ""), imported, key=len)
    return sorted(
        f"{modules[module].relative_to(root.parent)}:{line} ({layer_of(module)}) imports {imported} ({other})"
        for (module, line, other), imported in problems.items()
    )


def forbidden_imports(tree: Path, forbidden: tuple[str, ...]) -> list[str]:
    """Imports under folder ``tree`` of any top-level name in ``forbidden``."""
    problems: dict[str, str] = {}
    for path in sorted(tree.rglob("*.py")):
        name = module_name(path, tree)
        for line, imported in imported_names(path, name):
            if imported.split(".")[0] in forbidden:
                problems.setdefault(f"{path.relative_to(tree.parent)}:{line}", imported)
    return sorted(f"{where} imports {imported}" for where, imported in problems.items())


def unexplained_private_dagster_imports(tree: Path) -> list[str]:
    """Imports of ``dagster._...`` without a comment saying that no public API does the job.

    The comment stands on the import's line or above it, among the import
    statements and comments that lead up to it.
    """
    problems: dict[str, str] = {}
    for path in sorted(tree.rglob("*.py")):
        lines = path.read_text().splitlines()
        for line, imported in imported_names(path, module_name(path, tree)):
            if not imported.startswith("dagster._"):
                continue
            i = line - 1
            explained = "no public" in lines[i].lower()
            while not explained and i > 0:
                i -= 1
                text = lines[i].strip()
                if not (text.startswith(("#", "import ", "from ")) or text == ""):
                    break
                explained = text.startswith("#") and "no public" in text.lower()
            if not explained:
                problems.setdefault(f"{path.relative_to(tree.parent)}:{line}", imported)
    return sorted(f"{where} imports {imported}" for where, imported in problems.items())


def test_the_package_has_no_import_cycle():
    graph = module_graph(PACKAGE)
    assert {"sf_assets.core.labels", "sf_assets.orchestration.assets.sortings", "sf_assets.cli.entry"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, describe_cycle(cycle, graph, PACKAGE)


def test_an_import_cycle_added_back_is_found_and_named(tmp_path):
    """A lazy import one way and a TYPE_CHECKING import back: a cycle the checker must name."""
    pkg = tmp_path / "pkg"
    (pkg / "engines").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engines" / "__init__.py").write_text("")
    (pkg / "engines" / "engine.py").write_text(
        "def run():\n    from pkg.engines.slurm import launch\n    return launch()\n"
    )
    (pkg / "engines" / "slurm.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.engines.engine import run\n\n\n"
        "def launch():\n    return 1\n"
    )
    (pkg / "engines" / "settings.py").write_text("from . import slurm\n")  # relative, no cycle
    graph = module_graph(pkg)
    cycle = find_cycle(graph)
    assert cycle == ["pkg.engines.engine", "pkg.engines.slurm", "pkg.engines.engine"]
    message = describe_cycle(cycle, graph, pkg)
    assert "pkg/engines/engine.py:2 imports pkg.engines.slurm" in message
    assert "pkg/engines/slurm.py:4 imports pkg.engines.engine" in message

    (pkg / "engines" / "slurm.py").write_text("def launch():\n    return 1\n")  # the cycle broken
    assert find_cycle(module_graph(pkg)) is None


def test_core_imports_no_dagster_and_nothing_above_it(tmp_path):
    assert core_violations(PACKAGE) == []

    pkg = tmp_path / "pkg"
    (pkg / "core").mkdir(parents=True)
    (pkg / "stores").mkdir()
    for folder in (pkg, pkg / "core", pkg / "stores"):
        (folder / "__init__.py").write_text("")
    (pkg / "core" / "ok.py").write_text("from pkg.core import labels\nfrom . import errors\n")
    (pkg / "core" / "bad.py").write_text("import dagster as dg\n\n\ndef f():\n    from ..stores import kachery\n")
    assert core_violations(pkg) == ["pkg/core/bad.py:1 imports dagster", "pkg/core/bad.py:5 imports pkg.stores"]


def test_each_layer_imports_only_the_layers_below_it(tmp_path):
    assert layer_violations(PACKAGE, LAYERS) == []

    pkg = tmp_path / "pkg"
    for layer in ("core", "stores", "cli"):
        (pkg / layer).mkdir(parents=True)
        (pkg / layer / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "stores" / "kachery.py").write_text("import pkg\nfrom pkg.core import labels\n")
    (pkg / "core" / "labels.py").write_text("def f():\n    from pkg.cli import main\n")
    (pkg / "cli" / "main.py").write_text("from pkg.stores import kachery\n")
    assert layer_violations(pkg, ("core", "stores", "cli")) == ["pkg/core/labels.py:2 (core) imports pkg.cli.main (cli)"]


def test_no_product_code_imports_the_tests():
    for tree in PRODUCT_TREES:
        assert forbidden_imports(REPO / tree, (TEST_PACKAGE,)) == [], f"{tree}/ imports the tests"
    # The installed package imports nothing that `pip install .` leaves out.
    assert forbidden_imports(PACKAGE, NOT_INSTALLED) == []


def test_the_import_rule_sees_lazy_imports_of_the_tests(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tool.py").write_text(f"def main():\n    from {TEST_PACKAGE}.webserver import serve\n")
    assert forbidden_imports(pkg, (TEST_PACKAGE,)) == [f"pkg/tool.py:2 imports {TEST_PACKAGE}.webserver"]


def test_each_private_dagster_import_names_the_missing_public_api(tmp_path):
    assert unexplained_private_dagster_imports(PACKAGE) == []

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text(
        "import dagster as dg\n"
        "# No public API: the backfill filter.\n"
        "from dagster._core.execution.backfill import BulkActionsFilter\n"
        "\n\n"
        "def f():\n"
        "    from dagster._core.launcher import DefaultRunLauncher  # private, as dg.DefaultRunLauncher is public\n"
        "    x = 1\n"
        "    from dagster._cli.api import _execute_run_command_body  # no public API runs it in-process\n"
    )
    assert unexplained_private_dagster_imports(pkg) == ["pkg/a.py:7 imports dagster._core.launcher"]


def test_every_module_imports():
    """A name moved between modules breaks only the lazy importers, which the walk above reads
    but does not run: import every module, as a launch or a worker would."""
    import importlib
    import subprocess
    import sys

    modules = sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
        if path.name != "__main__.py"
    )
    modules = [m.removesuffix(".__init__") for m in modules]
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert importlib.util.find_spec(modules[0]) is not None
