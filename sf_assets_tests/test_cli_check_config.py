"""``sf-assets check-config``: the resolved configuration on stdout, nothing written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sf_assets.cli.entry import build_parser, main
from sf_assets.core.sorter_catalog import default_params, resolve_sorter
from sf_assets_tests.spec_values import changed_value

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
CONSOLE_SCRIPT = Path(sys.executable).with_name("sf-assets")


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A folder holding copies of the shipped examples, as the current directory."""
    folder = tmp_path / "work"
    folder.mkdir()
    for name in ("studysets_tiny.json", "small-spec.yaml", "example-spec.yaml"):
        shutil.copy(RESOURCES / name, folder / name)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("SF_ASSETS_KACHERY_DIR", str(tmp_path / "kachery"))
    monkeypatch.setenv("KACHERY_CLOUD_DIR", str(tmp_path / "kachery-cloud"))
    return folder


def _run(argv, capsys) -> dict:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return json.loads(out)


def test_small_spec_against_the_tiny_manifest(work, capsys):
    before = sorted(p.name for p in work.parent.rglob("*"))
    config = _run(["check-config", "-s", "studysets_tiny.json", "-l", "small-spec.yaml"], capsys)
    assert {k: config[k] for k in config if k != "sorters"} == {
        "manifest_source": "studysets_tiny.json",
        "spec_source": "small-spec.yaml",
        "study_sets": ["PAIRED_KAMPFF"],
        "num_study_sets": 1,
        "num_studies": 1,
        "num_recordings": 2,
        "num_sorting_jobs": 8,
        # SpykingCircus, MountainSort4 and the two Kilosorts all run only in their images
        "num_sorting_jobs_by_availability": {"local": 0, "container only": 8, "cannot run here": 0},
    }
    assert [s["name"] for s in config["sorters"]] == ["SpykingCircus", "MountainSort4", "Kilosort2", "Kilosort3"]
    for sorter in config["sorters"]:
        entry = resolve_sorter(sorter["name"])
        assert sorter["study_sets"] == ["PAIRED_KAMPFF"]
        assert sorter["num_recordings"] == 2
        assert (sorter["catalog_name"], sorter["si_name"]) == (entry.name, entry.si_name)
        assert sorter["params"] == json.loads(json.dumps(default_params(entry)))
    assert sorted(p.name for p in work.parent.rglob("*")) == before


def test_manifest_taken_from_the_spec_relative_to_the_spec(work, capsys, monkeypatch):
    monkeypatch.chdir(work.parent)
    config = _run(["check-config", "-l", "work/example-spec.yaml"], capsys)
    assert config["manifest_source"] == "work/studysets_tiny.json"
    assert config["num_recordings"] == 4
    assert config["num_sorting_jobs"] == sum(s["num_recordings"] for s in config["sorters"])


def test_long_flag_names(work, capsys):
    config = _run(
        ["check-config", "--study-source-file", "studysets_tiny.json", "--sorter-spec-file", "example-spec.yaml"], capsys
    )
    assert config["study_sets"] == ["PAIRED_KAMPFF", "SYNTH_MAGLAND"]


def test_merged_params_show_the_spec_values(work, capsys):
    entry = resolve_sorter("MountainSort4")
    name, default = next(iter(default_params(entry).items()))
    value = changed_value(default)
    spec = (work / "small-spec.yaml").read_text()
    (work / "small-spec.yaml").write_text(
        spec.replace("- name: MountainSort4\n  params: {}", f"- name: MountainSort4\n  params: {{{name}: {json.dumps(value)}}}")
    )
    config = _run(["check-config", "-s", "studysets_tiny.json", "-l", "small-spec.yaml"], capsys)
    ms4 = next(s for s in config["sorters"] if s["name"] == "MountainSort4")
    assert ms4["params"][name] == value


def test_spec_flag_is_required_and_usage_errors_exit_2(work, capsys):
    with pytest.raises(SystemExit) as info:
        main(["check-config", "-s", "studysets_tiny.json"])
    assert info.value.code == 2
    assert "-l/--sorter-spec-file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_parser_lists_check_config():
    assert "check-config" in build_parser().format_help()


def _command(work, *argv) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=work, env=dict(os.environ), capture_output=True, text=True, timeout=120)


def test_installed_console_script(work):
    result = _command(work, str(CONSOLE_SCRIPT), "check-config", "-s", "studysets_tiny.json", "-l", "example-spec.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout)["num_recordings"] == 4


def test_the_command_exits_with_mains_code(work):
    # `python -m sf_assets.cli` is the console script's own entry (console_main): a bad input's
    # code and its one stderr line come out of the process unchanged.
    result = _command(work, sys.executable, "-m", "sf_assets.cli", "check-config", "-s", "studysets_tiny.json", "-l", "missing.yaml")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sf-assets: error: ") and result.stderr.count("\n") == 1
