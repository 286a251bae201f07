"""The sorting assets under concurrent runs, a store that lost or altered what the cache vouches
for, a corrupted ground truth, and the longest names the manifest accepts.

Real MountainSort5 sorts of one 10 s synthetic recording (canary off), on a temporary
instance other processes can open, with a copy of the session's kachery store (these tests
damage it on purpose).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from sf_assets.orchestration.assets.history import plain_metadata
from sf_assets.orchestration.assets.sortings import sorting
from sf_assets.core.labels import MAX_NAME_CHARS, sorting_label
from sf_assets.core.folder_names import MAX_NAME_BYTES
from sf_assets.orchestration.partitions import pair_key, recording_key
from sf_assets.engines.engine import work_dir_for
from sf_assets.stores.kachery import KacheryStore
from harness.automation import write_manifest
from sf_assets_tests.graph_harness import make_env, write_spec
from harness.instances import project_instance

SORTER = "MountainSort5"
STUDY = "synth_a1_K6_C4"
SORTING = dg.AssetKey("sorting")

RUN_SCRIPT = """\
import json, sys
import dagster as dg
from sf_assets_tests.graph_harness import execute_partition_run
instance = dg.DagsterInstance.from_config(sys.argv[1])
outcome = execute_partition_run(instance.get_ref(), "sorting_job", sys.argv[2], json.loads(sys.argv[3]))
print(json.dumps({"success": outcome.success, "run_id": outcome.run_id, "error": outcome.error}))
"""
"""One sorting run of one partition in a process of its own, as a second launch would start it."""


@pytest.fixture
def store_copy(synthetic_studyset, tmp_path) -> KacheryStore:
    shutil.copytree(synthetic_studyset.store.root_dir, tmp_path / "kachery")
    return KacheryStore(tmp_path / "kachery")


@pytest.fixture
def env(synthetic_studyset, store_copy, tmp_path):
    """One pair: MountainSort5 on synth_a1_K6_C4/001_synth."""
    manifest = write_manifest(synthetic_studyset.manifest_path, tmp_path / "studysets.json", [(STUDY, "001_synth")])
    spec = write_spec(tmp_path / "spec.yaml", manifest, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    home = tmp_path / "dagster"
    home.mkdir()
    with project_instance(temp_dir=str(home)) as instance:
        yield make_env(tmp_path / "env", store_copy, instance, manifest, spec, canary_first_n_s=0.0)


def _materializations(instance, partition: str) -> list[dict]:
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SORTING, asset_partitions=[partition]), limit=100
    )
    return [plain_metadata(r.event_log_entry) for r in reversed(result.records)]


def _only_pair(env):
    [(sorter_spec, rec)] = env.campaign.jobs
    return sorter_spec, rec, str(pair_key(sorter_spec.name, rec))


# -- item 1: every attempt its own folder ---------------------------------------------------


def _start_two_runs(env, key: str) -> list[subprocess.Popen]:
    """Two sorting runs of partition ``key``, each in a process of its own, started together."""
    run_config = json.dumps(env.options.run_config())
    home = str(Path(env.instance.root_directory))
    return [
        subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, home, key, run_config], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]


def _both_succeed(runs: list[subprocess.Popen]) -> list[dict]:
    outcomes = [json.loads(run.communicate(timeout=600)[0].splitlines()[-1]) for run in runs]
    assert [o["success"] for o in outcomes] == [True, True], outcomes
    return outcomes


def test_two_runs_of_one_pair_at_once_each_sort_in_their_own_folder(env):
    sorter_spec, rec, key = _only_pair(env)
    label = sorting_label(sorter_spec.name, rec.study_name, rec.name)
    assert env.run("studysets_job").success and env.run("recordings_job", recording_key(rec)).success
    # A fresh worker process each: on the sort service, sorter affinity may well run the second
    # after the first on the slot that has the sorter compiled, and the two would not overlap.
    outcomes = _both_succeed(_start_two_runs(env.with_options(use_job_cache=False, reuse_workers=False), key))

    first, second = _materializations(env.instance, key)
    # The two sorts really overlapped: each had to keep to its own folder while the other ran.
    spans = [(md["record"]["startTime"], md["record"]["endTime"]) for md in (first, second)]
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    for md in (first, second):
        console = env.store.load_json(md["console_out_uri"])["text"]
        assert console.count(f"sorting {label} with") == 1, console  # one sort per console
        assert md["cpu_time_s"] > 0
    assert first["console_out_uri"] != second["console_out_uri"]
    assert first["work_dir"] != second["work_dir"]
    assert {Path(md["work_dir"]).name.rsplit("-a", 1)[0] for md in (first, second)} == {o["run_id"] for o in outcomes}


def test_two_launches_of_one_uncached_pair_at_once_sort_it_once(env):
    """A UI backfill and a sensor tick that both planned the pair before either's run existed:
    one run sorts it, the other waits for that sorting and takes it from the job cache.  The test
    holds the pair's lock until both runs have reached it, so that they surely overlap."""
    import time

    from sf_assets.engines.work_dirs import holding_the_pair

    sorter_spec, rec, key = _only_pair(env)
    assert env.run("studysets_job").success and env.run("recordings_job", recording_key(rec)).success
    both = env.with_options(reuse_workers=False)  # the job cache on
    pair_dir = work_dir_for(both.options.engine_settings(), sorter_spec.name, rec.study_name, rec.name, "x").parent
    with holding_the_pair(pair_dir, both.options.job_cache, "the test", lambda holder: None):
        runs = _start_two_runs(both, key)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and any(run.poll() is None for run in runs):
            waiting = [
                r.run_id
                for r in env.instance.get_runs(dg.RunsFilter(job_name="sorting_job"))
                if any("waiting for run the test" in e.message for e in env.instance.all_logs(r.run_id))
            ]
            if len(waiting) == 2:
                break
            time.sleep(0.5)
    outcomes = _both_succeed(runs)
    [only] = _materializations(env.instance, key)
    sorted_by = Path(only["work_dir"]).name.rsplit("-a", 1)[0]
    [other] = [o["run_id"] for o in outcomes if o["run_id"] != sorted_by]
    messages = [e.message for e in env.instance.all_logs(other)]
    assert "waiting for run the test, sorting this pair" in messages, messages
    assert any("not sorting again" in m for m in messages), messages


# -- item 2: a cache hit only for what verifies ---------------------------------------------


def _firings_path(env, md) -> Path:
    firings_uri = env.store.load_json(md["sorting_object_uri"])["firings"]
    return env.store.load_file(firings_uri)


@pytest.mark.parametrize("damage", ["deleted", "altered"])
def test_a_cached_sorting_missing_or_altered_in_the_store_is_sorted_again(env, damage):
    _, _, key = _only_pair(env)
    first = env.launch(run_results=False)
    assert [o.success for o in first.sortings] == [True]
    firings = _firings_path(env, env.latest("sorting")[key])
    firings.chmod(0o644)
    if damage == "deleted":
        firings.unlink()
    else:
        data = bytearray(firings.read_bytes())
        data[-8:] = bytes(8)
        firings.write_bytes(bytes(data))

    again = env.launch(run_results=False)

    assert again.cached_pairs == [], "a sorting that does not verify is not a cache hit"
    assert [o.success for o in again.sortings] == [True]
    md = env.latest("sorting")[key]
    assert "job_cache_hit" not in md
    reason = md["job_cache_miss"]
    assert reason.startswith("the stored sorting does not verify")
    assert ("not in the local store" if damage == "deleted" else "corrupt") in reason
    _firings_path(env, md)  # the new sorting verifies
    third = env.launch(run_results=False)
    assert third.cached_pairs == [key] and third.sortings == [], "an intact sorting is still a hit"


def test_a_corrupted_ground_truth_marks_the_record_errored_and_drops_the_old_comparison(env):
    sorter_spec, rec, key = _only_pair(env)
    first = env.launch()
    assert all(o.success for o in first.sortings + first.results)
    assert env.latest_unpartitioned("sorter_summary")["num_comparisons"] == 1

    gt_firings = env.store.load_file(env.store.load_json(rec.sorting_true_uri)["firings"])
    gt_firings.chmod(0o644)
    data = bytearray(gt_firings.read_bytes())
    data[-64:] = bytes(64)
    gt_firings.write_bytes(bytes(data))
    again = env.with_options(use_job_cache=False).launch()

    [sort_run] = again.sortings
    assert not sort_run.success
    assert "comparison failed" in sort_run.error and "corrupt" in sort_run.error, sort_run.error
    assert "\n" not in sort_run.error
    [sorting_event] = env.latest("sorting", observations=True).values()
    assert sorting_event["errored"] is True and sorting_event["failure_class"] == "comparison_input"
    records = json.loads((env.root / "outputs" / "sorting_records.json").read_text())
    assert [(r["recordingName"], r["errored"], r["sortingOutput"]) for r in records] == [(rec.name, True, None)]
    [comparison_event] = env.latest("sorting_comparison", observations=True).values()
    assert comparison_event["errored"] is True
    assert all(o.success for o in again.results), [o.error for o in again.results]
    summary = env.latest_unpartitioned("sorter_summary")
    assert summary["num_comparisons"] == 0, "the comparison of the previous sorting is not kept"
    assert list(summary["left_out"]) == [key]
    # The pair's latest record is errored: the cache vouches for it no more.
    assert env.launch(run_results=False).cached_pairs == []


def test_a_new_ground_truth_in_the_manifest_is_materialized_and_the_cached_sorting_compared_against_it(env):
    from sf_assets.stores.data import load_recording, load_sorting_object, store_sorting

    _, rec, key = _only_pair(env)
    assert all(o.success for o in env.launch().sortings)
    fs = load_recording(rec.recording_uri, env.store).get_sampling_frequency()
    truth = load_sorting_object(rec.sorting_true_uri, env.store, fs)
    fewer = truth.remove_units([truth.unit_ids[0]])  # a corrected ground truth: one unit less
    new_uri = store_sorting(fewer, env.store, "ground truth, one unit less")
    manifest = Path(env.options.manifest_source)
    manifest.write_text(manifest.read_text().replace(rec.sorting_true_uri, new_uri))

    again = env.launch()
    assert again.cached_pairs == [key] and again.sortings == [], "the sorting does not depend on the ground truth"
    assert [(o.partition_key, o.success) for o in again.recordings] == [(recording_key(rec), True)]
    assert [(o.partition_key, o.success) for o in again.comparisons] == [(key, True)], "compared after it landed"
    assert env.latest("ground_truth")[recording_key(rec)]["ground_truth_uri"] == new_uri
    units = env.store.load_json(env.latest("sorting_comparison")[key]["comparison_uri"])["units"]
    assert len(units) == len(fewer.unit_ids) == len(truth.unit_ids) - 1


def test_a_comparison_older_than_its_sorting_is_left_out_of_the_summary(env):
    _, _, key = _only_pair(env)
    assert all(o.success for o in env.launch().results)
    # A new sorting lands without its comparison (only the sorting asset is materialized).
    dg.materialize(
        [sorting],
        instance=env.instance,
        partition_key=key,
        resources=_resources(env.with_options(use_job_cache=False)),
    )
    assert env.run("results_job").success
    summary = env.latest_unpartitioned("sorter_summary")
    assert summary["num_comparisons"] == 0 and list(summary["left_out"]) == [key]


def _resources(env) -> dict:
    from sf_assets.orchestration.resources import (
        KacheryResource,
        OutputsResource,
        SortingEngineResource,
        StudysetResource,
        WorkspaceResource,
    )

    config = env.options.run_config()["resources"]
    kinds = {
        "kachery": KacheryResource,
        "studyset": StudysetResource,
        "sorting_engine": SortingEngineResource,
        "workspace": WorkspaceResource,
        "outputs": OutputsResource,
    }
    return {name: kind(**config[name]["config"]) for name, kind in kinds.items()}


# -- item 4: the longest names the manifest accepts -----------------------------------------


def test_the_longest_accepted_names_sort_and_leave_their_record(synthetic_studyset, store_copy, tmp_path):
    study, recording = "S" * MAX_NAME_CHARS, "r\u00e9" * (MAX_NAME_CHARS // 2)  # 128 characters each
    document = json.loads(synthetic_studyset.manifest_path.read_text())
    study_set = document["StudySets"][0]
    original = study_set["studies"][0]
    entry = {**original["recordings"][0], "name": recording, "studyName": study}
    study_set["studies"] = [{**original, "name": study, "recordings": [entry]}]
    document["StudySets"] = [study_set]
    manifest = tmp_path / "studysets.json"
    manifest.write_text(json.dumps(document))
    spec = write_spec(tmp_path / "spec.yaml", manifest, {SORTER: {"studysets": [study_set["name"]]}})
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        env = make_env(tmp_path / "env", store_copy, instance, manifest, spec, canary_first_n_s=0.0)
        outcome = env.launch()

        assert [o.success for o in outcome.sortings] == [True], [o.error for o in outcome.sortings]
        [md] = env.latest("sorting").values()
        for part in Path(md["work_dir"]).relative_to(env.options.work_root).parts:
            assert len(part.encode()) <= MAX_NAME_BYTES
        records = json.loads((env.root / "outputs" / "sorting_records.json").read_text())
        assert [(r["studyName"], r["recordingName"], r["errored"]) for r in records] == [(study, recording, False)]
