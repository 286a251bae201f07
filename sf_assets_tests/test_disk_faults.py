"""Disk faults from the command line: a full Dagster storage, a read-only ``outputs/`` and
``sorts/``, on real tmpfs mounts (``chmod`` does not stop root; see mounts.py).

Each fault must give one line naming the path and the cause and a non-zero exit, never a
traceback storm or a success; a sort it stopped leaves an errored record, and once the
fault is gone the next launch completes the pair.  Two real sorts in all (MountainSort5 on
one 10 s recording).
"""
from __future__ import annotations

import json
import shutil

import pytest

from sf_assets.core.errors import EXIT_STORAGE_FAULT
from harness.automation import write_manifest
from sf_assets_tests.graph_harness import write_spec
from sf_assets_tests.mounts import fill, read_only, tmpfs
from sf_assets_tests.test_cli_sortings import REPO, run_cli

SORTER = "MountainSort5"
STUDY = "synth_a1_K6_C4"


@pytest.fixture(scope="module")
def home(synthetic_studyset, tmp_path_factory):
    """A data folder whose ``sorts/`` and ``outputs/`` are tmpfs mounts, one pair sorted once."""
    root = tmp_path_factory.mktemp("disk-faults")
    manifest = write_manifest(synthetic_studyset.manifest_path, root / "studysets.json", [(STUDY, "001_synth")])
    spec = write_spec(root / "spec.yaml", manifest, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    dagster_home = root / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    data = root / "home"
    with pytest.MonkeyPatch.context() as env, tmpfs(data / "sorts") as sorts, tmpfs(data / "outputs") as outputs:
        env.chdir(root)
        env.setenv("SF_ASSETS_HOME", str(data))
        env.setenv("SF_ASSETS_KACHERY_DIR", str(synthetic_studyset.store.root_dir))
        env.setenv("DAGSTER_HOME", str(dagster_home))
        env.setenv("SF_ASSETS_DAGSTER_DIR", str(data / "dagster"))
        for name in ("SF_ASSETS_USE_CONTAINER", "HITHER_USE_CONTAINER", "SF_ASSETS_STUDYSETS", "SF_ASSETS_SPEC",
                     "SF_ASSETS_WORK_DIR", "SF_ASSETS_OUTPUTS", "SF_ASSETS_WORKSPACE_DB"):
            env.delenv(name, raising=False)
        argv = ["run-sortings", "-s", manifest, "-l", spec, "-w", "1"]
        code, out, err = run_cli([*argv, "-o", root / "first.json"])
        assert code == 0, out + err
        yield {"root": root, "data": data, "sorts": sorts, "outputs": outputs, "argv": argv}


def _no_storm(out: str, err: str) -> None:
    assert "Traceback" not in out + err
    assert len(err.splitlines()) <= 1, err


def test_a_full_dagster_storage_is_one_line_and_exit_3(home, tmp_path, monkeypatch):
    dagster_dir = tmp_path / "dagster"
    with tmpfs(dagster_dir, size="512k"):
        fill(dagster_dir)
        monkeypatch.setenv("SF_ASSETS_DAGSTER_DIR", str(dagster_dir))
        code, out, err = run_cli([*home["argv"], "-o", tmp_path / "out.json"])
    assert code == EXIT_STORAGE_FAULT, out + err
    _no_storm(out, err)
    assert err.startswith(f"sf-assets: error: storage fault: {dagster_dir}: no space left on the device"), err


def test_a_read_only_outputs_folder_is_a_failure_with_one_line(home):
    with read_only(home["outputs"]):
        code, out, err = run_cli([*home["argv"], "-o", home["root"] / "ro-outputs.json"])
    assert code == 1, out + err
    _no_storm(out, err)
    [line] = [line for line in out.splitlines() if line.startswith("[results_job] FAILED: ")]
    assert f"storage fault: {home['outputs']}/" in line and line.endswith(": the filesystem is read-only"), line
    assert "1 comparison or results run(s) FAILED" in out


def test_a_read_only_sorts_folder_leaves_an_errored_record_then_the_next_launch_sorts(home):
    with read_only(home["sorts"]):
        code, out, err = run_cli([*home["argv"], "--no-job-cache", "-o", home["root"] / "ro-sorts.json"])
    assert code == 1, out + err
    _no_storm(out, err)
    [line] = [line for line in out.splitlines() if line.startswith("[sortings 1/1]")]
    assert "FAILED: " in line and f"storage fault: {home['sorts']}/" in line, line
    assert line.rstrip().endswith("the filesystem is read-only") or "the filesystem is read-only (" in line, line
    for records_file in (home["root"] / "ro-sorts.json", home["outputs"] / "sorting_records.json"):
        [record] = json.loads(records_file.read_text())
        assert record["errored"] is True and record["sortingOutput"] is None, records_file

    code, out, err = run_cli([*home["argv"], "-o", home["root"] / "after.json"])
    assert code == 0, out + err
    assert "1 sorted, 0 from the job cache" in out, "the errored attempt is not a cache hit"
    [record] = json.loads((home["root"] / "after.json").read_text())
    assert record["errored"] is False
