"""``sf-assets run-sortings``, ``prepare-workspace`` and ``sort-sf-recordings``, in process.

Each test runs ``main([...])`` with SF_ASSETS_HOME, DAGSTER_HOME (holding the
repository's dagster.yaml) and SF_ASSETS_DAGSTER_DIR in temporary folders.
Two real sorts in all (MountainSort5 on one 10 s recording): ``run-sortings``
once (module fixture), and ``sort-sf-recordings --no-job-cache`` once; every
other run is answered by the job cache or runs nothing.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy

from sf_assets.cli import main
from sf_assets.core.records import read_records
from sf_assets.stores.workspace import WorkspaceStore
from harness.automation import write_manifest
from sf_assets_tests.graph_harness import write_spec

REPO = Path(__file__).resolve().parents[1]
SORTER = "MountainSort5"
STUDY_A = "synth_a1_K6_C4"
STUDY_B = "synth_b1_K6_C4"
LABELS = {
    f"{STUDY_A}/001_synth",
    f"Ground-Truth/{STUDY_A}/001_synth",
    f"{SORTER}/{STUDY_A}/001_synth",
}
RECORD_KEYS = {
    "recordingName", "studyName", "sorterName", "sortingParameters", "consoleOutUri", "cpuTimeSec",
    "errored", "startTime", "endTime", "sortingOutput", "recordingUri", "groundTruthUri", "provenance",
}


@dataclass
class Home:
    root: Path
    manifest: Path
    spec: Path
    home: Path
    dagster_home: Path
    kachery_dir: Path

    @property
    def workspace_db(self) -> str:
        return f"sqlite:///{self.home / 'workspace.db'}"

    def instance(self) -> dg.DagsterInstance:
        """This home's instance, whatever SF_ASSETS_DAGSTER_DIR says now."""
        saved = os.environ.get("SF_ASSETS_DAGSTER_DIR")
        os.environ["SF_ASSETS_DAGSTER_DIR"] = str(self.home / "dagster")
        try:
            return dg.DagsterInstance.get()
        finally:
            if saved is None:
                del os.environ["SF_ASSETS_DAGSTER_DIR"]
            else:
                os.environ["SF_ASSETS_DAGSTER_DIR"] = saved

    def runs(self, job_name: str | None = None) -> list[dg.DagsterRun]:
        with self.instance() as instance:
            runs = instance.get_runs()
        return [r for r in runs if job_name is None or r.job_name == job_name]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)``: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def home(synthetic_studyset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-sortings")
    manifest = write_manifest(
        synthetic_studyset.manifest_path, root / "studysets.json", [(STUDY_A, "001_synth"), (STUDY_B, "001_synth")]
    )
    spec = write_spec(root / "spec.yaml", manifest, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    dagster_home = root / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as env:
        env.chdir(root)
        env.setenv("SF_ASSETS_HOME", str(root / "home"))
        env.setenv("SF_ASSETS_KACHERY_DIR", str(synthetic_studyset.store.root_dir))
        env.setenv("DAGSTER_HOME", str(dagster_home))
        env.setenv("SF_ASSETS_DAGSTER_DIR", str(root / "home" / "dagster"))
        for name in ("SF_ASSETS_USE_CONTAINER", "HITHER_USE_CONTAINER", "SF_ASSETS_STUDYSETS", "SF_ASSETS_SPEC"):
            env.delenv(name, raising=False)
        yield Home(root, manifest, spec, root / "home", dagster_home, Path(synthetic_studyset.store.root_dir))


@pytest.fixture
def fresh_home(home, tmp_path, monkeypatch) -> Path:
    """A data folder of its own: proof that a command wrote nothing is an empty folder."""
    folder = tmp_path / "fresh"
    monkeypatch.setenv("SF_ASSETS_HOME", str(folder))
    monkeypatch.setenv("SF_ASSETS_DAGSTER_DIR", str(folder / "dagster"))
    return folder


@pytest.fixture(scope="module")
def sorted_once(home):
    """``run-sortings`` of the one assigned pair: a real sort, records to out.json."""
    out = home.root / "out.json"
    code, stdout, stderr = run_cli(
        ["run-sortings", "-s", home.manifest, "-l", home.spec, "-o", out, "-w", "1", "-T", "5", "-v", "--canary-s", "2"]
    )
    return code, stdout, stderr, out


def _config(argv: list) -> dict:
    code, out, err = run_cli(argv)
    assert code == 0, err
    return json.loads(out)


# -- --check-config --------------------------------------------------------------------------


def test_check_config_counts_and_defaults_and_writes_nothing(home, fresh_home):
    out = home.root / "never.json"
    config = _config(["run-sortings", "-s", home.manifest, "-l", home.spec, "-o", out, "--check-config"])
    # Both study sets are declared (one recording each); MountainSort5 sorts SYNTH_SET_A only.
    assert config["num_recordings"] == 2 and config["num_sorting_jobs"] == 1
    assert config["outfile"] == str(out)
    options = config["options"]
    assert options["workercount"] == 4
    assert options["job_cache"] == "default-job-cache" and options["use_job_cache"] is True
    assert options["timeout_min"] == 0 and "run_tags" not in config["options"]
    assert options["use_container"] is False
    assert options["use_slurm"] is False
    assert (options["slurm_jobs_per_allocation"], options["slurm_max_simultaneous_allocations"]) == (6, 5)
    assert options["slurm_gpus_per_node"] == 0 and options["slurm_partition"] == ""
    assert (options["slurm_idle_release_s"], options["slurm_allocation_time_min"]) == (60.0, 0.0)
    assert options["verbose"] == 0
    assert options["canary_first_n_s"] == 5.0  # the sorting_engine resource's default
    assert not out.exists() and not fresh_home.exists()


def test_check_config_maps_every_flag(home, fresh_home):
    config = _config(
        [
            "run-sortings", "-l", home.spec, "-o", "/dev/null", "--check-config", "-vv",
            "-T", "2.5", "--job-cache", "mine", "-C", "-w", "3",
            "--use-slurm", "--slurm-partition", "gpu", "--slurm-accept-shared-nodes",
            "--slurm-jobs-per-allocation", "2", "--slurm-max-simultaneous-allocations", "3",
            "--slurm-gpus-per-node", "1", "--slurm-idle-release-s", "5", "--slurm-allocation-time-min", "30",
            "--canary-s", "0",
        ]
    )
    options = config["options"]
    assert options["timeout_min"] == 2.5
    assert options["job_cache"] == "mine" and options["use_job_cache"] is True
    assert options["use_container"] is True
    assert options["workercount"] == 3
    assert options["use_slurm"] is True and options["slurm_partition"] == "gpu"
    assert options["slurm_accept_shared_nodes"] is True
    assert (options["slurm_jobs_per_allocation"], options["slurm_max_simultaneous_allocations"]) == (2, 3)
    assert options["slurm_gpus_per_node"] == 1
    assert (options["slurm_idle_release_s"], options["slurm_allocation_time_min"]) == (5.0, 30.0)
    assert options["verbose"] == 2 and options["log_level"] == "DEBUG"
    assert options["canary_first_n_s"] == 0.0
    # -s absent: the manifest comes from the spec's studysets.
    assert config["manifest_source"] == str(home.manifest)
    no_cache = _config(["run-sortings", "-l", home.spec, "-o", "/dev/null", "--check-config", "--no-job-cache"])
    assert no_cache["options"]["use_job_cache"] is False
    assert not fresh_home.exists()


@pytest.mark.parametrize(
    ("environment", "flags", "expected"),
    [
        ({"SF_ASSETS_USE_CONTAINER": "1"}, [], True),
        ({"HITHER_USE_CONTAINER": "TRUE"}, [], True),
        ({"HITHER_USE_CONTAINER": "0"}, [], False),
        ({"SF_ASSETS_USE_CONTAINER": "false", "HITHER_USE_CONTAINER": "1"}, [], False),
        ({"SF_ASSETS_USE_CONTAINER": "1"}, ["--no-container"], False),
        ({}, ["-C", "--no-container"], True),
        ({}, ["--use-container"], True),
    ],
)
def test_container_flags_and_environment(home, monkeypatch, environment, flags, expected):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = _config(["run-sortings", "-l", home.spec, "-o", "/dev/null", "--check-config", *flags])
    assert config["options"]["use_container"] is expected


def test_check_config_of_the_workspace_commands(home, sorted_once, fresh_home):
    _, _, _, out = sorted_once
    config = _config(["prepare-workspace", "-s", out, "--create-new-workspace", "--check-config"])
    assert (config["num_records"], config["num_errored"], config["num_recordings"], config["num_sorting_jobs"]) == (
        1, 0, 1, 1,
    )
    assert config["workspace"]["create_new_workspace"] is True
    config = _config(["sort-sf-recordings", "-l", home.spec, "--create-new-workspace", "--dry-run", "--check-config"])
    assert config["num_sorting_jobs"] == 1 and config["workspace"]["dry_run"] is True
    assert not fresh_home.exists()


# -- bad input ---------------------------------------------------------------------------------


def _bad_inputs(home: Home, records: Path) -> list[tuple[list, str]]:
    broken_manifest = home.root / "broken.json"
    broken_manifest.write_text('{"StudySets": 3}')
    broken_records = home.root / "broken-records.json"
    broken_records.write_text('[{"recordingName": "x"}]')
    existing = home.root / "existing.json"
    existing.write_text("[]")
    uri = "workspace://" + "0" * 32
    return [
        (["run-sortings", "-l", home.root / "no-spec.yaml", "-o", "/dev/null"], "no-spec.yaml: no such file"),
        (["run-sortings", "-s", broken_manifest, "-l", home.spec, "-o", "/dev/null"], "broken.json"),
        (["run-sortings", "-l", home.spec, "-o", existing], "existing.json: already exists"),
        (["run-sortings", "-l", home.spec, "-o", existing, "--check-config"], "already exists"),
        (["run-sortings", "-l", home.spec, "-o", home.root / "no-folder" / "out.json"], "does not exist"),
        (["prepare-workspace", "-s", records], "exactly one of --workspace-uri"),
        (["prepare-workspace", "-s", records, "-W", uri, "--create-new-workspace"], "exactly one of --workspace-uri"),
        (["prepare-workspace", "-s", records, "-W", uri], "does not exist"),
        (["prepare-workspace", "-s", records, "-W", "not-a-uri"], "malformed"),
        (["prepare-workspace", "-s", broken_records, "--create-new-workspace"], "broken-records.json"),
        (["prepare-workspace", "-s", home.root / "none.json", "--create-new-workspace"], "none.json: no such file"),
        (["prepare-workspace", "-k", records, "--create-new-workspace"], "expected a sha1:// URI"),
        (["prepare-workspace", "-k", "sha1://" + "a" * 40 + "/x.json", "--create-new-workspace"], "sha1://"),
        (["sort-sf-recordings", "-l", home.spec], "exactly one of --workspace-uri"),
        (["sort-sf-recordings", "-l", home.spec, "-W", uri, "--create-new-workspace", "--check-config"], "exactly one"),
        (["sort-sf-recordings", "-l", home.spec, "--create-new-workspace", "-o", existing], "already exists"),
    ]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(home, sorted_once, fresh_home, monkeypatch):
    _, _, _, records = sorted_once
    before = len(home.runs())
    for argv, expected in _bad_inputs(home, records):
        code, out, err = run_cli(argv)
        assert code == 2, (argv, out, err)
        assert err.startswith("sf-assets: error: ") and err.count("\n") == 1, err
        assert expected in err, (expected, err)
        assert "Traceback" not in err and out == ""
    monkeypatch.setenv("SF_ASSETS_USE_CONTAINER", "maybe")
    code, _, err = run_cli(["run-sortings", "-l", home.spec, "-o", "/dev/null"])
    assert code == 2 and "SF_ASSETS_USE_CONTAINER='maybe'" in err
    assert not fresh_home.exists()
    assert (home.root / "existing.json").read_text() == "[]"
    assert len(home.runs()) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["run-sortings", "-l", "spec.yaml", "-o", "x.json", "--job-cache", "c", "--no-job-cache"],
        ["run-sortings", "-l", "spec.yaml", "-o", "x.json", "-w", "0"],
        ["run-sortings", "-l", "spec.yaml", "-o", "x.json", "-T", "-1"],
        ["run-sortings", "-l", "spec.yaml", "-o", "x.json", "-T", "inf"],
        ["run-sortings", "-l", "spec.yaml", "-o", "x.json", "--slurm-jobs-per-allocation", "0"],
        ["run-sortings", "-l", "spec.yaml", "-o", "x.json", "--slurm-idle-release-s", "0"],
        ["run-sortings", "-l", "spec.yaml", "-o", "x.json", "--canary-s", "-1"],
        ["run-sortings", "-l", "spec.yaml", "-o", "x.json", "--canary-s", "nan"],
        ["run-sortings", "-l", "spec.yaml"],
        ["prepare-workspace", "-s", "a.json", "-k", "sha1://x", "--create-new-workspace"],
        ["prepare-workspace", "--create-new-workspace"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# -- run-sortings ---------------------------------------------------------------------------------


def test_run_sortings_sorts_writes_records_and_tags_every_run(home, sorted_once):
    code, stdout, stderr, out = sorted_once
    assert code == 0, stdout + stderr
    assert f"[sortings 1/1] {SORTER}/{STUDY_A}/001_synth: ok" in stdout
    assert "    run " in stdout  # -v names each sorting's run
    assert "1 sorted, 0 from the job cache, 0 failed" in stdout
    (record,) = json.loads(out.read_text())
    assert set(record) == RECORD_KEYS
    assert (record["sorterName"], record["studyName"], record["recordingName"]) == (SORTER, STUDY_A, "001_synth")
    assert record["errored"] is False
    jobs = [r.job_name for r in home.runs()]
    assert {"studysets_job", "recordings_job", "sorting_job", "results_job"} <= set(jobs)
    for run in home.runs():
        # -T is the engine's, per sort; a run-level limit would also count the wait for a slot
        assert "dagster/max_runtime" not in run.tags
    with home.instance() as instance:
        key = dg.AssetCheckKey(dg.AssetKey("sorting"), "canary")
        (canary,) = instance.event_log_storage.get_asset_check_execution_history(key, limit=10)
    assert canary.event.dagster_event.event_specific_data.metadata["window_s"].value == 2.0  # --canary-s 2


def test_a_second_run_sorts_nothing_and_writes_the_same_records(home, sorted_once):
    _, _, _, first = sorted_once
    sorts_before = len(home.runs("sorting_job"))
    out = home.root / "again.json"
    code, stdout, _ = run_cli(["run-sortings", "-s", home.manifest, "-l", home.spec, "-o", out, "-w", "1"])
    assert code == 0
    assert "0 sorted, 1 from the job cache" in stdout
    assert len(home.runs("sorting_job")) == sorts_before
    assert read_records(out.read_bytes(), str(out)) == read_records(first.read_bytes(), str(first))
    code, _, _ = run_cli(["run-sortings", "-l", home.spec, "-o", "/dev/null", "-w", "1"])
    assert code == 0


def test_the_outfile_is_refused_before_anything_runs(home, sorted_once):
    _, _, _, out = sorted_once
    runs_before = len(home.runs())
    content = out.read_bytes()
    code, _, err = run_cli(["run-sortings", "-l", home.spec, "-o", out])
    assert code == 2 and "already exists" in err
    assert out.read_bytes() == content and len(home.runs()) == runs_before


# -- prepare-workspace -------------------------------------------------------------------------


def test_prepare_workspace_adds_missing_labels_once(home, sorted_once):
    _, _, _, records = sorted_once
    code, stdout, _ = run_cli(["prepare-workspace", "-s", records, "--create-new-workspace"])
    assert code == 0
    uri = next(word for word in stdout.split() if word.startswith("workspace://")).rstrip(":")
    store = WorkspaceStore(home.workspace_db)
    assert store.existing_labels(uri) == LABELS
    code, stdout, _ = run_cli(["prepare-workspace", "-s", records, "-W", uri])
    assert code == 0 and "added 0 entries; 3 already present" in stdout
    assert len(store.list_entries(uri)) == 3
    with home.instance() as instance:
        observed = instance.fetch_observations(dg.AssetKey("workspace_sync"), limit=2).records
    assert [r.event_log_entry.asset_observation.metadata["added"].value for r in observed] == [0, 3]


def test_prepare_workspace_from_kachery_skips_errored_records_with_a_note(home, sorted_once):
    _, _, _, records = sorted_once
    errored = json.loads(records.read_text())
    errored[0].update(errored=True, sortingOutput=None)
    path = home.root / "errored.json"
    path.write_text(json.dumps(errored))
    from sf_assets.stores.kachery import KacheryStore

    uri = KacheryStore(home.kachery_dir).store_file(path, "errored.json")
    code, stdout, _ = run_cli(["prepare-workspace", "-k", uri, "--create-new-workspace"])
    assert code == 0
    assert f"skipped errored sorting {SORTER}/{STUDY_A}/001_synth" in stdout
    assert "added 2 entries" in stdout


def test_dry_run_leaves_the_database_untouched(home, sorted_once):
    _, _, _, records = sorted_once
    store = WorkspaceStore(home.workspace_db)
    empty = store.create_workspace("empty")
    before = _table_rows(home)
    code, stdout, _ = run_cli(["prepare-workspace", "-s", records, "-W", empty, "--dry-run"])
    assert code == 0 and "would add 3 entries" in stdout
    code, stdout, _ = run_cli(["prepare-workspace", "-s", records, "--create-new-workspace", "--dry-run"])
    assert code == 0 and "a new workspace: would add 3 entries" in stdout
    code, stdout, _ = run_cli(["sort-sf-recordings", "-l", home.spec, "-W", empty, "--dry-run"])
    assert code == 0 and f"would sort and add {SORTER}/{STUDY_A}/001_synth" in stdout
    assert _table_rows(home) == before


def _table_rows(home: Home) -> dict[str, list]:
    engine = sqlalchemy.create_engine(home.workspace_db)
    with engine.connect() as conn:
        rows = {
            table: conn.execute(sqlalchemy.text(f"SELECT * FROM {table}")).fetchall()
            for table in ("workspaces", "workspace_entries")
        }
    engine.dispose()
    return rows


# -- sort-sf-recordings ---------------------------------------------------------------------------


def test_sort_sf_recordings_sorts_what_is_missing_syncs_it_and_then_nothing(home, sorted_once):
    sorts_before = len(home.runs("sorting_job"))
    out = home.root / "sso.json"
    code, stdout, _ = run_cli(
        ["sort-sf-recordings", "-l", home.spec, "--create-new-workspace", "--no-job-cache", "-w", "1", "-o", out]
    )
    assert code == 0, stdout
    assert len(home.runs("sorting_job")) == sorts_before + 1  # --no-job-cache: sorted again
    uri = next(w for w in stdout.split() if w.startswith("workspace://")).rstrip(":")
    assert f"added {SORTER}/{STUDY_A}/001_synth" in stdout
    assert WorkspaceStore(home.workspace_db).existing_labels(uri) == LABELS
    assert len(json.loads(out.read_text())) == 1

    runs_before = len(home.runs())
    code, stdout, _ = run_cli(["sort-sf-recordings", "-l", home.spec, "-W", uri, "-w", "1"])
    assert code == 0 and "nothing to sort" in stdout
    assert len(home.runs()) == runs_before


# -- pieces ---------------------------------------------------------------------------------------


def test_the_records_file_is_rewritten_whole_as_records_land(home, sorted_once, tmp_path):
    from sf_assets.cli.records_file import RecordsFile

    _, _, _, out = sorted_once
    (record,) = read_records(out.read_bytes(), str(out))
    other = type(record)(**{**record.__dict__, "recording_name": "002_synth"})
    path = tmp_path / "records.json"
    records = RecordsFile(path)
    records.add([record])
    assert read_records(path.read_bytes(), str(path)) == [record]  # each landing is written at once
    records.add([other])
    assert read_records(path.read_bytes(), str(path)) == [record, other]
    records.flush([f"{SORTER}/{STUDY_A}/002_synth", f"{SORTER}/{STUDY_A}/001_synth"])
    assert read_records(path.read_bytes(), str(path)) == [other, record]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.json"]  # no partial file left
    RecordsFile(Path(os.devnull)).add([record])


def test_a_failed_run_is_one_progress_line_naming_the_error():
    from sf_assets.cli.progress import one_line

    message = (
        "[sortings 1/2] MountainSort5/s/r: FAILED: Failure: MountainSort5/s/r: SpikeSortingError: trace:\n"
        "Traceback (most recent call last):\n"
        '  File "basesorter.py", line 280, in run_from_folder\n'
        "ValueError: Invalid scheme: 9 given\n"
        "\n"
        "Spike sorting failed. (12.4 s)"
    )
    line = one_line(message)
    assert "\n" not in line
    assert line.startswith("[sortings 1/2] MountainSort5/s/r: FAILED")
    assert line.endswith("ValueError: Invalid scheme: 9 given")
    assert one_line("[sortings 1/1] x: ok (3.0 s)") == "[sortings 1/1] x: ok (3.0 s)"
