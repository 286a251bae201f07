"""Docstrings in one style, numpydoc (as spikeinterface writes them), on every public definition.

Two checks over ``sf_assets/``: ruff's pydocstyle rules under the numpy
convention (``pyproject.toml``: every public module, class, function and
method has a docstring; section headers are underlined; a summary line ends
with a period), and, read here with :mod:`ast`, what ruff does not see:
no Google- or Sphinx-style sections, each ``Parameters``/``Attributes`` item
written ``name : type``, and a ``Parameters`` section on every public
function with parameters (and a ``Returns`` or ``Yields`` section when it
returns a value), in every module.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sf_assets"
NUMPYDOC_SECTIONS = (
    "Parameters", "Returns", "Yields", "Raises", "Warns", "Attributes", "Methods", "See Also", "Notes",
    "References", "Examples", "Other Parameters",
)
FOREIGN_SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Returns|Yields|Raises|Attributes|Example|Examples|Note|Notes):\s*$")
SPHINX_FIELD = re.compile(r"^\s*:(param|type|returns?|rtype|raises?)\b")
ITEM = re.compile(r"^\*{0,2}\w+(, \*{0,2}\w+)*( : \S.*)?$")


def _ruff() -> list[str]:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff (the test extra) is not installed"
    return [ruff]


def test_ruff_pydocstyle_numpy_passes_on_the_package():
    result = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--output-format", "concise", str(PACKAGE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def _docstrings(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield node, doc


def style_problems(path: Path, root: Path) -> list[str]:
    """Docstrings in ``path`` that are not numpydoc: foreign section syntax, or items not ``name : type``."""
    problems = []
    where = path.relative_to(root.parent)
    for node, doc in _docstrings(ast.parse(path.read_text())):
        line = getattr(node, "lineno", 1)
        lines = doc.splitlines()
        for i, text in enumerate(lines):
            if FOREIGN_SECTION.match(text) or SPHINX_FIELD.match(text):
                problems.append(f"{where}:{line}: not a numpydoc section: {text.strip()!r}")
            if text in ("Parameters", "Attributes", "Other Parameters") and i + 1 < len(lines):
                for item in lines[i + 2 :]:
                    if item in NUMPYDOC_SECTIONS or not item.strip():
                        if item in NUMPYDOC_SECTIONS:
                            break
                        continue
                    if not item.startswith(" ") and not ITEM.match(item):
                        problems.append(f"{where}:{line}: {text} item not 'name : type': {item!r}")
    return problems


def _public_functions(tree: ast.Module):
    """Module-level functions and methods of module-level classes whose names have no leading underscore."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                    if not any(isinstance(d, ast.Name) and d.id == "property" for d in sub.decorator_list):
                        yield sub


def _dagster_decorated(node: ast.FunctionDef) -> bool:
    """An asset, check, sensor or schedule: Dagster passes its arguments, and its description is the doc."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if "dg." in ast.unparse(target) or "fails_clearly" in ast.unparse(target):
            return True
    return False


def missing_sections(path: Path, root: Path) -> list[str]:
    """Public functions of ``path`` with parameters but no ``Parameters`` section, or a value but no ``Returns``."""
    problems = []
    tree = ast.parse(path.read_text())
    for node in _public_functions(tree):
        if _dagster_decorated(node):
            continue
        doc = ast.get_docstring(node) or ""
        params = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
        params = [p for p in params if p not in ("self", "cls")]
        where = f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"
        if params and not re.search(r"^\s*Parameters\n\s*-+$", doc, re.M):
            problems.append(f"{where}: no Parameters section for {', '.join(params)}")
        returns = node.returns is not None and ast.unparse(node.returns) not in ("None", "NoReturn")
        if returns and not re.search(r"^\s*(Returns|Yields)\n\s*-+$", doc, re.M):
            problems.append(f"{where}: no Returns section for {ast.unparse(node.returns)}")
    return problems


def test_docstrings_are_numpydoc_only():
    problems = [p for path in sorted(PACKAGE.rglob("*.py")) for p in style_problems(path, PACKAGE)]
    assert problems == [], "\n".join(problems)


def test_public_functions_document_their_parameters_and_returns():
    problems = [p for path in sorted(PACKAGE.rglob("*.py")) for p in missing_sections(path, PACKAGE)]
    assert problems == [], f"{len(problems)} missing sections:\n" + "\n".join(problems)


def test_the_checks_catch_other_styles_and_missing_sections(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        '"""A module."""\n\n\n'
        "def google(a: int) -> int:\n"
        '    """Double a.\n\n    Args:\n        a: a number.\n\n    Returns:\n        twice a.\n    """\n'
        "    return 2 * a\n\n\n"
        "def sphinx(a: int) -> None:\n"
        '    """Print a.\n\n    :param a: a number.\n    """\n\n\n'
        "def bare(a: int) -> int:\n"
        '    """Double a, for the table."""\n'
        "    return 2 * a\n\n\n"
        "def numpy(a: int) -> int:\n"
        '    """Double a, for the table.\n\n    Parameters\n    ----------\n    a : int\n        A number.\n\n'
        '    Returns\n    -------\n    int\n        Twice a.\n    """\n'
        "    return 2 * a\n"
    )
    assert style_problems(pkg / "m.py", pkg) == [
        "pkg/m.py:4: not a numpydoc section: 'Args:'",
        "pkg/m.py:4: not a numpydoc section: 'Returns:'",
        "pkg/m.py:16: not a numpydoc section: ':param a: a number.'",
    ]
    assert missing_sections(pkg / "m.py", pkg) == [
        "pkg/m.py:4 google: no Parameters section for a",
        "pkg/m.py:4 google: no Returns section for int",
        "pkg/m.py:16 sphinx: no Parameters section for a",
        "pkg/m.py:23 bare: no Parameters section for a",
        "pkg/m.py:23 bare: no Returns section for int",
    ]
