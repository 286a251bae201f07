"""Every malformed input gets exit 2, one line naming the file and the problem, and no writes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sf_assets.cli import main
from sf_assets_tests.bad_inputs import BAD_INPUTS, BadInput

CONSOLE_SCRIPT = Path(sys.executable).with_name("sf-assets")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _prepare(case: BadInput, tmp_path: Path, monkeypatch) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "m.json").write_bytes(case.manifest)
    (work / "s.yaml").write_bytes(case.spec)
    monkeypatch.chdir(work)
    monkeypatch.setenv("SF_ASSETS_KACHERY_DIR", str(tmp_path / "kachery"))
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "kachery-cloud"))
    return work


def _check_message(case: BadInput, err: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sf-assets: error: {case.file}: "), lines[0]
    assert case.problem in lines[0], lines[0]
    assert "Traceback" not in err


def test_the_table_is_large_and_ids_are_unique():
    assert len(BAD_INPUTS) >= 30
    assert len({case.id for case in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda case: case.id)
def test_check_config_refuses(case: BadInput, tmp_path, monkeypatch, capsys):
    _prepare(case, tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    code = main(["check-config", *case.argv])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    _check_message(case, err)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "case_id",
    ["manifest-bool-is-not-an-int", "spec-python-object", "source-missing-manifest", "manifest-not-utf8"],
)
def test_installed_console_script_refuses(case_id, tmp_path, monkeypatch):
    case = next(c for c in BAD_INPUTS if c.id == case_id)
    work = _prepare(case, tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "check-config", *case.argv],
        cwd=work,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    _check_message(case, result.stderr)
    assert _snapshot(tmp_path) == before
