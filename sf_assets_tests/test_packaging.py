"""What ``pip install .`` ships and pulls: the product, none of the tests' code or dependencies.

The distribution's metadata is written here, offline, from a copy of the
checkout, by the same setuptools configuration pip builds with.
Its runtime requirements are then followed through the distributions installed
in this environment, with their extras and markers, to show that no test
dependency comes in through a dependency of a dependency either.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Imported by the tests (or the harness/ drivers they share with the benchmarks) only.
TEST_ONLY = {"pytest", "playwright", "ruff"}
# Runtime dependencies that sf_assets does not import, and the file that shows their use.
USED_WITHOUT_IMPORT = {
    "dagster-webserver": ("Makefile", "dagster dev"),  # the UI (`make ui`)
    "dagster-docker": ("deployments/docker/dagster.yaml", "module: dagster_docker"),
    "dagster-postgres": ("deployments/postgres/dagster.yaml", "postgres_db:"),
    "psycopg2-binary": ("deployments/postgres/dagster.yaml", "scheme: postgresql+psycopg2"),
    "mountainsort5": ("sf_assets/core/sorter_catalog.py", '"Python (mountainsort5, a project dependency).",'),
}


@pytest.fixture(scope="module")
def build_metadata(tmp_path_factory) -> Path:
    """The metadata folder setuptools writes for ``pip install .`` (``egg_info``), from a copy of the checkout.

    ``requires.txt`` (runtime requirements, then one ``[extra]`` section each),
    ``SOURCES.txt`` (every file the distribution holds) and
    ``entry_points.txt`` are what the wheel's metadata and file list are made of.
    """
    src = tmp_path_factory.mktemp("checkout")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "test-artifacts")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    # The tests and the harness sit next to the package, as in the checkout: the build must leave them out.
    for folder in ("sf_assets", "sf_assets_tests", "harness", "benchmarks"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    out = src / "metadata"
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "egg_info", "--egg-base", str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (info,) = out.glob("*.egg-info")
    return info


def _requirements(info: Path) -> dict[str, list[Requirement]]:
    """``requires.txt`` by section: ``""`` for what every install pulls, else the extra's name."""
    sections: dict[str, list[Requirement]] = {"": []}
    section = ""
    for line in (info / "requires.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
            sections.setdefault(section, [])
        elif line:
            sections[section].append(Requirement(line))
    return sections


def _runtime_requirements(info: Path) -> list[Requirement]:
    environment = {**default_environment(), "extra": ""}
    found = []
    for section, requirements in _requirements(info).items():
        extra, _, marker = section.partition(":")
        if extra:
            continue  # an extra: pulled only when asked for
        if marker and not Marker(marker).evaluate(environment):
            continue
        found.extend(requirements)
    return found


def _closure(requirements: list[Requirement]) -> dict[str, str]:
    """Every distribution the requirements pull, through this environment's installed metadata: {name: via}."""
    pulled: dict[str, str] = {}
    todo = [(r, "sf-assets") for r in requirements]
    seen_extras: set[tuple[str, str]] = set()
    while todo:
        requirement, via = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras) | {""}
        new = {e for e in extras if (name, e) not in seen_extras}
        if not new:
            continue
        seen_extras |= {(name, e) for e in new}
        pulled.setdefault(name, via)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not for this platform, or not installed here: nothing to follow
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(
                sub.marker.evaluate({**default_environment(), "extra": e}) for e in new
            ):
                todo.append((sub, f"{via} -> {name}"))
    return pulled


def test_the_distribution_holds_the_package_only(build_metadata):
    files = (build_metadata / "SOURCES.txt").read_text().split()
    packaged = {name.split("/")[0] for name in files if name.endswith(".py")}
    assert packaged == {"sf_assets"}
    assert "sf_assets/orchestration/assets/sortings.py" in files
    assert "sf-assets = sf_assets.cli.entry:console_main" in (build_metadata / "entry_points.txt").read_text()


def test_pip_install_pulls_no_test_dependency(build_metadata):
    runtime = _runtime_requirements(build_metadata)
    assert {canonicalize_name(r.name) for r in runtime} & TEST_ONLY == set()
    pulled = _closure(runtime)
    assert len(pulled) > 50  # the walk followed dagster's and spikeinterface's own requirements
    assert {name: via for name, via in pulled.items() if name in TEST_ONLY} == {}

    test_extra = _requirements(build_metadata)["test"]
    assert {canonicalize_name(r.name) for r in test_extra} >= TEST_ONLY


def _imported_distributions() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "sf_assets").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    owners = metadata.packages_distributions()
    return {canonicalize_name(dist) for name in names for dist in owners.get(name, [])}


def test_every_declared_dependency_is_used(build_metadata):
    imported = _imported_distributions()
    unused = []
    for requirement in _runtime_requirements(build_metadata):
        name = canonicalize_name(requirement.name)
        if name in imported:
            continue
        if name in USED_WITHOUT_IMPORT:
            file, evidence = USED_WITHOUT_IMPORT[name]
            assert evidence in (REPO / file).read_text(), f"{name}: {file} no longer says {evidence!r}"
            continue
        unused.append(name)
    assert unused == []


def test_test_only_imports_stay_out_of_the_package():
    assert not {canonicalize_name(d) for d in _imported_distributions()} & TEST_ONLY
