"""The README's package layout table matches the tree, and its order is the layer order the import test enforces."""
from __future__ import annotations

import re
from pathlib import Path

from sf_assets_tests.test_import_layers import LAYERS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sf_assets"


def layout_rows(readme: str) -> list[tuple[list[str], str]]:
    """The table under "## Package layout": (paths of its first column, the rest of the row)."""
    section = readme.split("## Package layout", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first, rest = line[1:].split("|", 1)
        rows.append((re.findall(r"`([^`]+)`", first), rest))
    return rows


def test_the_layout_table_names_every_part_of_the_package_and_nothing_else():
    rows = layout_rows((REPO / "README.md").read_text())
    named = [path for paths, _ in rows for path in paths]
    for path in named:
        assert (REPO / path).exists(), f"README layout table: {path} does not exist"
    in_package = {p.rstrip("/") for p in named if p.startswith("sf_assets/")}
    tree = {
        f"sf_assets/{child.name}"
        for child in PACKAGE.iterdir()
        if (child.is_dir() and (child / "__init__.py").exists()) or (child.suffix == ".py" and child.name != "__init__.py")
    }
    assert in_package == tree
    for paths, rest in rows:
        folder = REPO / paths[0]
        if folder.is_dir():
            for module in re.findall(r"`([\w/]+\.py)`", rest):
                assert (folder / module).exists(), f"README layout table: {paths[0]} has no {module}"


def test_the_table_lists_the_layers_bottom_first_as_the_import_test_orders_them():
    rows = layout_rows((REPO / "README.md").read_text())
    order = [Path(paths[0]).stem for paths, _ in rows if paths[0].startswith("sf_assets/")]
    assert tuple(order) == LAYERS


def test_the_contributors_guide_names_files_and_tests_that_exist():
    """CONTRIBUTING.md's recipes name the files to touch and the tests that prove them: all real."""
    guide = (REPO / "CONTRIBUTING.md").read_text()
    for path in set(re.findall(r"`((?:sf_assets|sf_assets_tests|docs)/[\w/.]+\.(?:py|md))(?:::\w+)?`", guide)):
        if "<" not in path:
            assert (REPO / path).exists(), f"CONTRIBUTING.md names {path}"
    tests = {p.name: p.read_text() for p in (REPO / "sf_assets_tests").glob("test_*.py")}
    named = re.findall(r"(test_\w+\.py)::(test_\w+)", guide)
    named += [(None, name) for name in re.findall(r"`(test_\w+)`", guide)]
    assert len(named) > 8
    for module, name in named:
        sources = [tests[module]] if module else tests.values()
        assert any(f"def {name}(" in source for source in sources), f"CONTRIBUTING.md names {module or ''}::{name}"
    for name in set(re.findall(r"`(test_\w+\.py)`", guide)) - {"test_<name>.py"}:
        assert name in tests, f"CONTRIBUTING.md names {name}"
