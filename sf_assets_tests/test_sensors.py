"""The studyset sensor and the results automation, on a temporary instance.

One real deployment (module fixture): the sensor daemon ticks the real
``studyset_sensor`` of a code location configured from the environment; its
first tick materializes the recording, its next one sorts the pair (one real
MountainSort5 sort of one 10 s recording).  The other tests evaluate the
sensor with ``build_sensor_context`` against that instance, changing the
manifest and the spec, and count what it registers and requests.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.scheduler.instigation import InstigatorType

from sf_assets.orchestration.assets.sortings import sorting_comparison
from sf_assets.definitions import defs
from sf_assets.orchestration.partitions import PARTITION_TAG, RECORDINGS, SORTERS
from sf_assets.orchestration.resources import KacheryResource, SortingEngineResource, StudysetResource
from sf_assets.orchestration.sensors import SENSOR_INTERVAL_S, STUDYSET_SENSOR, TRIGGER_TAG, studyset_sensor
from harness.automation import deployment, submit_backfill, write_manifest
from sf_assets_tests.graph_harness import execute_partition_run, write_spec

SORTER = "MountainSort5"
NEW_SORTER = "Simple"
STUDY_A = "synth_a1_K6_C4"
STUDY_B = "synth_b1_K6_C4"
FIRST = (STUDY_A, "001_synth")
SORTING = dg.AssetKey("sorting")


@dataclass
class Deployed:
    root: Path
    instance: dg.DagsterInstance
    manifest: Path
    spec: Path
    kachery_dir: str
    cursors: list
    cursor: str

    def evaluate(self, manifest: Path, spec: Path, cursor: str | None):
        """The sensor's result for these sources, given the cursor of a previous tick."""
        resources = {
            "studyset": StudysetResource(spec_source=str(spec), manifest_source=str(manifest)),
            "kachery": KacheryResource(root_dir=self.kachery_dir),
            "sorting_engine": SortingEngineResource(work_root=str(self.root / "home" / "sorts")),
        }
        # A context manager, as the daemon evaluates a sensor: closing it tears down the resources it built.
        with dg.build_sensor_context(
            instance=self.instance, cursor=cursor, repository_def=defs.get_repository_def(), resources=resources
        ) as context:
            return studyset_sensor(context)


def _sensor_cursor(instance: dg.DagsterInstance) -> str:
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    state = next(s for s in states if s.name == STUDYSET_SENSOR)
    return state.instigator_data.cursor


@pytest.fixture(scope="module")
def deployed(synthetic_studyset, tmp_path_factory):
    root = tmp_path_factory.mktemp("sensors")
    manifest = write_manifest(synthetic_studyset.manifest_path, root / "studysets.json", [FIRST])
    spec = write_spec(root / "spec.yaml", manifest, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    kachery_dir = str(synthetic_studyset.store.root_dir)
    (root / "dagster").mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SF_ASSETS_HOME", str(root / "home"))
        env.setenv("SF_ASSETS_KACHERY_DIR", kachery_dir)
        env.setenv("SF_ASSETS_SPEC", str(spec))
        env.setenv("SF_ASSETS_STUDYSETS", str(manifest))
        with dg.instance_for_test(
            temp_dir=str(root / "dagster"), synchronous_run_launcher=True, synchronous_run_coordinator=True
        ) as instance:
            with deployment(root, instance) as location:
                cursors = []
                for tick in range(2):  # the recording; its sort
                    if tick:
                        time.sleep(SENSOR_INTERVAL_S)  # due again
                    location.tick_sensors()  # runs the requested runs, synchronously
                    cursors.append(_sensor_cursor(instance))
            yield Deployed(root, instance, manifest, spec, kachery_dir, cursors, _sensor_cursor(instance))


def _requested(result, job_name: str) -> set[str | None]:
    """The partitions of the tick's run requests for ``job_name``."""
    return {r.partition_key for r in result.run_requests if r.job_name == job_name}


def _partition_keys(instance: dg.DagsterInstance) -> dict[str, list[str]]:
    return {name: instance.get_dynamic_partitions(name) for name in (RECORDINGS, SORTERS)}


def _evaluate_and_diff(deployed, manifest: Path, spec: Path, cursor: str | None):
    """The sensor's result, and the partitions it registered on the instance (in order)."""
    before = _partition_keys(deployed.instance)
    result = deployed.evaluate(manifest, spec, cursor)
    after = _partition_keys(deployed.instance)
    added = {name: [k for k in after[name] if k not in before[name]] for name in after}
    return result, {name: keys for name, keys in added.items() if keys}


def test_daemon_ticks_materialize_the_recording_then_sort_the_pair_at_the_next_tick(deployed):
    instance = deployed.instance
    assert instance.get_dynamic_partitions(SORTERS) == [SORTER]
    # Every recording of the manifest gets a partition (here: one per study set's kept recording).
    assert instance.get_dynamic_partitions(RECORDINGS) == [f"{STUDY_A}.001_synth"]
    runs = sorted(
        instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": STUDYSET_SENSOR})),
        key=lambda run: instance.get_run_record_by_id(run.run_id).create_timestamp,
    )
    assert [run.job_name for run in runs] == ["studysets_job", "recordings_job", "sorting_job"]
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    assert all(run.tags[TRIGGER_TAG] == STUDYSET_SENSOR == run.tags["dagster/sensor_name"] for run in runs)
    assert instance.get_materialized_partitions(SORTING) == {f"{STUDY_A}.001_synth|{SORTER}"}
    assert instance.get_materialized_partitions(dg.AssetKey("sorting_comparison")) == {f"{STUDY_A}.001_synth|{SORTER}"}
    # The pair waited in the cursor between the two ticks, and no longer once its sort was requested.
    from sf_assets.core.studyset_cursor import StudysetCursor

    waiting = [StudysetCursor.decode(c).waiting for c in deployed.cursors]
    assert waiting == [{(SORTER, f"{STUDY_A}.001_synth")}, set()]


def test_unchanged_sources_request_nothing(deployed):
    result = deployed.evaluate(deployed.manifest, deployed.spec, deployed.cursor)
    assert isinstance(result, dg.SkipReason)
    assert "unchanged" in result.skip_message


def test_new_recordings_request_exactly_their_pairs(deployed, synthetic_studyset):
    # The full manifest adds 002_synth to SYNTH_SET_A (sorted by MountainSort5) and B's two recordings (unassigned).
    result, added = _evaluate_and_diff(deployed, synthetic_studyset.manifest_path, deployed.spec, deployed.cursor)
    new_key = f"{STUDY_A}.002_synth"
    assert _requested(result, "recordings_job") == {new_key}
    assert _requested(result, "studysets_job") == {None}
    assert _requested(result, "sorting_job") == set(), "not before its recording is current"
    assert all(r.tags[TRIGGER_TAG] == STUDYSET_SENSOR for r in result.run_requests)
    assert added == {RECORDINGS: [new_key, f"{STUDY_B}.001_synth", f"{STUDY_B}.002_synth"]}
    # The recording's run was requested but (here) never ran: the pair waits, nothing is asked twice.
    again, added_again = _evaluate_and_diff(deployed, synthetic_studyset.manifest_path, deployed.spec, result.cursor)
    assert again.run_requests == [] and added_again == {}
    assert f"1 pair(s) waiting for 1 recording(s) [{new_key}], 1 of them not materialized by their run" in str(
        again.skip_reason
    )


def test_a_waiting_pair_is_sorted_at_the_first_tick_after_its_recording_is_current(deployed, synthetic_studyset):
    from sf_assets.core.studyset_cursor import StudysetCursor

    new_key = f"{STUDY_A}.002_synth"
    first = deployed.evaluate(synthetic_studyset.manifest_path, deployed.spec, deployed.cursor)
    options = dataclasses.replace(_run_options(deployed), manifest_source=str(synthetic_studyset.manifest_path))
    assert execute_partition_run(deployed.instance.get_ref(), "recordings_job", new_key, options.run_config()).success
    second = deployed.evaluate(synthetic_studyset.manifest_path, deployed.spec, first.cursor)
    assert _requested(second, "sorting_job") == {f"{new_key}|{SORTER}"}
    assert _requested(second, "recordings_job") == _requested(second, "studysets_job") == set()
    assert StudysetCursor.decode(second.cursor).waiting == frozenset()


def test_a_new_sorter_is_sorted_at_once_and_only_its_pairs(deployed):
    spec = write_spec(
        deployed.root / "spec-new-sorter.yaml",
        deployed.manifest,
        {SORTER: {"studysets": ["SYNTH_SET_A"]}, NEW_SORTER: {"studysets": ["SYNTH_SET_A"]}},
    )
    result, added = _evaluate_and_diff(deployed, deployed.manifest, spec, deployed.cursor)
    # Its recording is materialized already: its sorting run (sort and comparison) is requested at this tick.
    assert _requested(result, "sorting_job") == {f"{STUDY_A}.001_synth|{NEW_SORTER}"}
    assert _requested(result, "recordings_job") == set()
    assert added == {SORTERS: [NEW_SORTER]}


def test_new_params_for_a_sorter_sort_its_pairs_again_and_nothing_else(deployed):
    spec = write_spec(
        deployed.root / "spec-new-params.yaml",
        deployed.manifest,
        {SORTER: {"studysets": ["SYNTH_SET_A"], "params": {"detect_threshold": 6.0}}},
    )
    result = deployed.evaluate(deployed.manifest, spec, deployed.cursor)
    assert _requested(result, "sorting_job") == {f"{STUDY_A}.001_synth|{SORTER}"}
    assert _requested(result, "recordings_job") == set()
    again = deployed.evaluate(deployed.manifest, spec, result.cursor)
    assert isinstance(again, dg.SkipReason) and "unchanged" in again.skip_message
    # Back to the params it was sorted with (that request was not run): the job cache holds it.
    back = deployed.evaluate(deployed.manifest, deployed.spec, result.cursor)
    assert back.run_requests == []
    assert "1 assigned: 1 in the job cache" in str(back.skip_reason)


def test_a_pair_sorting_when_its_params_change_is_planned_again_once_that_run_ends(deployed):
    key = f"{STUDY_A}.001_synth|{SORTER}"
    spec = write_spec(
        deployed.root / "spec-params-mid-sort.yaml",
        deployed.manifest,
        {SORTER: {"studysets": ["SYNTH_SET_A"], "params": {"detect_threshold": 6.5}}},
    )
    # A run sorting the pair on the params it had (started before the edit).
    run = deployed.instance.create_run_for_job(
        job_def=defs.resolve_job_def("sorting_job"), status=dg.DagsterRunStatus.STARTED, tags={PARTITION_TAG: key}
    )
    try:
        held = deployed.evaluate(deployed.manifest, spec, deployed.cursor)
        assert held.run_requests == [] and "held by another run" in str(held.skip_reason)
        still = deployed.evaluate(deployed.manifest, spec, held.cursor)  # sources unchanged, the pair still waits
        assert still.run_requests == [] and "held by another run" in str(still.skip_reason)
    finally:
        deployed.instance.delete_run(run.run_id)
    after = deployed.evaluate(deployed.manifest, spec, still.cursor)
    assert _requested(after, "sorting_job") == {key}
    assert isinstance(deployed.evaluate(deployed.manifest, spec, after.cursor), dg.SkipReason)


def test_a_retuned_sorters_pair_held_past_the_first_tick_waits_then_gets_its_recording(
    deployed, synthetic_studyset, monkeypatch
):
    """A params edit over more pairs than a tick takes on: a pair another run holds when a later tick
    reaches it is held too, and once that run ends its recording's run is requested (never asked before)."""
    import sf_assets.orchestration.sensors as sensors
    from sf_assets.core.studyset_cursor import StudysetCursor

    monkeypatch.setattr(sensors, "MAX_NEW_PAIRS_PER_TICK", 2)
    manifest = synthetic_studyset.manifest_path
    spec = write_spec(
        deployed.root / "spec-params-two-ticks.yaml",
        manifest,
        {SORTER: {"studysets": ["SYNTH_SET_A", "SYNTH_SET_B"], "params": {"detect_threshold": 6.5}}},
    )
    held_pair = f"{STUDY_B}.001_synth|{SORTER}"  # its recording was never materialized here
    # A run sorting that pair, launched before the edit (by a backfill, say).
    run = deployed.instance.create_run_for_job(
        job_def=defs.resolve_job_def("sorting_job"), status=dg.DagsterRunStatus.STARTED, tags={PARTITION_TAG: held_pair}
    )
    try:
        taken = deployed.evaluate(manifest, spec, deployed.cursor)  # params changed: set A's two pairs
        taken_on = StudysetCursor.decode(taken.cursor).requested
        assert {(SORTER, f"{STUDY_A}.001_synth"), (SORTER, f"{STUDY_A}.002_synth")} <= taken_on
        assert not any(recording.startswith(STUDY_B) for _, recording in taken_on)
        held = deployed.evaluate(manifest, spec, taken.cursor)  # the new params are known now: set B's pairs
        assert _requested(held, "recordings_job") == {f"{STUDY_B}.002_synth"}, "the other pair's recording"
        assert StudysetCursor.decode(held.cursor).held == {(SORTER, f"{STUDY_B}.001_synth")}
    finally:
        deployed.instance.delete_run(run.run_id)
    after = deployed.evaluate(manifest, spec, held.cursor)
    assert f"{STUDY_B}.001_synth" in _requested(after, "recordings_job"), "its recording, never asked for, is now"
    assert _requested(after, "sorting_job") == set(), "its sort waits for the recording"


def test_a_corrected_ground_truth_in_the_manifest_is_materialized_again_for_a_pair_taken_on(deployed, synthetic_studyset):
    from sf_assets.core.manifest import parse_manifest
    from sf_assets.stores.data import load_recording, load_sorting_object, store_sorting

    recordings = parse_manifest(deployed.manifest.read_bytes(), str(deployed.manifest)).recordings()
    rec = next(r for r in recordings if (r.study_name, r.name) == FIRST)
    store = synthetic_studyset.store
    truth = load_sorting_object(rec.sorting_true_uri, store, load_recording(rec.recording_uri, store).get_sampling_frequency())
    new_uri = store_sorting(truth.remove_units([truth.unit_ids[0]]), store, "ground truth, one unit less")
    manifest = deployed.root / "studysets-corrected.json"
    manifest.write_text(deployed.manifest.read_text().replace(rec.sorting_true_uri, new_uri))
    spec = write_spec(deployed.root / "spec-corrected.yaml", manifest, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    result = deployed.evaluate(manifest, spec, deployed.cursor)
    # Its sorting stays (the job cache); its ground truth is materialized again first.
    assert _requested(result, "recordings_job") == {f"{STUDY_A}.001_synth"}
    assert _requested(result, "sorting_job") == _requested(result, "comparison_job") == set()
    corrected = dataclasses.replace(_run_options(deployed), manifest_source=str(manifest), spec_source=str(spec))
    key = f"{STUDY_A}.001_synth"
    assert execute_partition_run(deployed.instance.get_ref(), "recordings_job", key, corrected.run_config()).success
    try:
        # Once it has landed, the next tick has the sorting compared against it, once.
        landed = deployed.evaluate(manifest, spec, result.cursor)
        assert _requested(landed, "comparison_job") == {f"{key}|{SORTER}"}
        assert _requested(landed, "sorting_job") == _requested(landed, "recordings_job") == set()
        assert isinstance(deployed.evaluate(manifest, spec, landed.cursor), dg.SkipReason), "asked once"
    finally:  # the module's other tests expect the manifest's own ground truth
        assert execute_partition_run(deployed.instance.get_ref(), "recordings_job", key, _run_options(deployed).run_config()).success


def test_a_large_change_is_taken_on_a_bounded_number_of_pairs_per_tick(deployed, synthetic_studyset, monkeypatch):
    import sf_assets.orchestration.sensors as sensors
    from sf_assets.core.studyset_cursor import StudysetCursor

    monkeypatch.setattr(sensors, "MAX_NEW_PAIRS_PER_TICK", 1)
    spec = write_spec(
        deployed.root / "spec-both-sets.yaml",
        synthetic_studyset.manifest_path,
        {SORTER: {"studysets": ["SYNTH_SET_A", "SYNTH_SET_B"]}},
    )
    cursor, taken, digests = deployed.cursor, [], []
    for _tick in range(4):
        result = deployed.evaluate(synthetic_studyset.manifest_path, spec, cursor)
        if not result.run_requests:
            break
        taken.append({r.job_name: r.partition_key for r in result.run_requests if r.job_name != "studysets_job"})
        digests.append(StudysetCursor.decode(result.cursor).digest)
        cursor = result.cursor
    # One new pair per tick, each asked once: 002_synth of set A (its recording may be current,
    # then its sort goes at once), then the two recordings of set B.
    assert len(taken) == 3
    assert taken[0] in ({"recordings_job": f"{STUDY_A}.002_synth"}, {"sorting_job": f"{STUDY_A}.002_synth|{SORTER}"})
    assert taken[1:] == [{"recordings_job": f"{STUDY_B}.001_synth"}, {"recordings_job": f"{STUDY_B}.002_synth"}]
    # The sources count as acted on only once the last new pair is taken on.
    before = StudysetCursor.decode(deployed.cursor).digest
    assert digests[:2] == [before, before] and digests[2] != before
    assert "waiting" in str(result.skip_reason)  # set B's recordings never ran here


def test_a_fresh_cursor_skips_pairs_already_sorted(deployed):
    result = deployed.evaluate(deployed.manifest, deployed.spec, None)
    assert result.run_requests == []
    assert "no new (sorter, recording) pairs to sort among 1 assigned: 1 in the job cache" in str(result.skip_reason)
    again = deployed.evaluate(deployed.manifest, deployed.spec, result.cursor)  # it now knows the digest
    assert "unchanged" in str(again.skip_message if isinstance(again, dg.SkipReason) else again.skip_reason)


def test_a_malformed_manifest_skips_the_tick_with_the_message(deployed):
    broken = deployed.root / "broken.json"
    broken.write_text('{"StudySets": [{"name": "SYNTH_SET_A"}]}')
    result = deployed.evaluate(broken, deployed.spec, deployed.cursor)
    assert isinstance(result, dg.SkipReason)
    assert str(broken) in result.skip_message
    assert "studies" in result.skip_message
    missing = deployed.evaluate(deployed.root / "nowhere.json", deployed.spec, deployed.cursor)
    assert isinstance(missing, dg.SkipReason) and "no such file" in missing.skip_message


def test_a_spec_naming_an_unknown_study_set_skips_the_tick(deployed):
    spec = deployed.root / "bad-spec.yaml"
    spec.write_text(deployed.spec.read_text().replace("- SYNTH_SET_A\n", "- NO_SUCH_SET\n", 1))
    result = deployed.evaluate(deployed.manifest, spec, deployed.cursor)
    assert isinstance(result, dg.SkipReason)
    assert "NO_SUCH_SET" in result.skip_message


def test_an_unreadable_cursor_skips_with_advice(deployed):
    result = deployed.evaluate(deployed.manifest, deployed.spec, "garbage")
    assert isinstance(result, dg.SkipReason)
    assert "reset the sensor's cursor" in result.skip_message


def test_a_new_sorting_requests_the_fan_ins_and_nothing_is_sorted_again(deployed, synthetic_studyset):
    from sf_assets.cli.launch import RunOptions
    from sf_assets.core.settings import load_settings

    instance = deployed.instance
    settings = load_settings(
        {"SF_ASSETS_HOME": str(deployed.root / "home"), "SF_ASSETS_KACHERY_DIR": deployed.kachery_dir}
    )
    options = RunOptions.from_settings(settings, spec_source=str(deployed.spec), manifest_source=str(deployed.manifest))
    # Fan-ins that have read everything that landed are not requested.
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success
    baseline = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert baseline.total_requested == 0
    # Results land while other sortings are still to come: a UI backfill of a new recording's
    # sort is in progress (submitted, never executed here).
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey

    deployed.evaluate(synthetic_studyset.manifest_path, deployed.spec, deployed.cursor)  # registers 002_synth
    pending = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(SORTING, f"{STUDY_A}.002_synth|{SORTER}")}, defs.get_repository_def().asset_graph
    )
    submit_backfill(instance, pending)

    # A sorting lands (sorted again, as the schedule would for an errored one).
    partition = f"{STUDY_A}.001_synth|{SORTER}"
    resort = dataclasses.replace(options, use_job_cache=False).run_config()
    outcome = execute_partition_run(instance.get_ref(), "sorting_job", partition, resort)
    assert outcome.success, outcome.error

    landed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=baseline.cursor)
    requested = {r.key: r.true_subset for r in landed.results if r.true_subset.size > 0}
    fan_ins = {dg.AssetKey(k) for k in ("sorter_summary", "sorting_records", "workspace_sync")}
    assert set(requested) == fan_ins  # the comparison ran in the same run, so it is current
    assert SORTING not in requested
    again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=landed.cursor)
    assert again.total_requested == 0, "requested fan-ins are not requested twice"


FAN_INS = {dg.AssetKey(k) for k in ("sorter_summary", "sorting_records", "workspace_sync")}
SUMMARY = dg.AssetKey("sorter_summary")


def _run_options(deployed):
    from sf_assets.cli.launch import RunOptions
    from sf_assets.core.settings import load_settings

    settings = load_settings(
        {"SF_ASSETS_HOME": str(deployed.root / "home"), "SF_ASSETS_KACHERY_DIR": deployed.kachery_dir}
    )
    return RunOptions.from_settings(settings, spec_source=str(deployed.spec), manifest_source=str(deployed.manifest))


def _land_a_comparison(deployed, tags: dict[str, str] | None = None) -> None:
    """A comparison lands (about a second: no sort), from a run with ``tags``."""
    resources = {
        "studyset": StudysetResource(spec_source=str(deployed.spec), manifest_source=str(deployed.manifest)),
        "kachery": KacheryResource(root_dir=deployed.kachery_dir),
    }
    key = dg.MultiPartitionKey({"recording": f"{STUDY_A}.001_synth", "sorter": SORTER})
    assert dg.materialize(
        [sorting_comparison], instance=deployed.instance, partition_key=key, resources=resources, tags=tags
    ).success


def _land_a_comparison_during_the_fan_ins_run(deployed, options) -> None:
    """A results run whose start precedes a comparison that lands before the summary does (3 tries)."""
    import json
    import subprocess
    import sys
    import time

    from dagster._serdes import serialize_value

    instance = deployed.instance
    script = (
        "import json, sys\n"
        "from dagster._serdes import deserialize_value\n"
        "from sf_assets_tests.graph_harness import execute_partition_run\n"
        "ref = deserialize_value(sys.argv[1])\n"
        "assert execute_partition_run(ref, 'results_job', None, json.loads(sys.argv[2])).success\n"
    )
    started = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]
    for _attempt in range(3):
        before = {r.run_id for r in instance.get_runs(dg.RunsFilter(job_name="results_job"))}
        results = subprocess.Popen(
            [sys.executable, "-c", script, serialize_value(instance.get_ref()), json.dumps(options.run_config())]
        )
        while results.poll() is None and not [
            r for r in instance.get_runs(dg.RunsFilter(job_name="results_job", statuses=started)) if r.run_id not in before
        ]:
            time.sleep(0.05)
        _land_a_comparison(deployed)
        landed = instance.get_latest_materialization_event(dg.AssetKey("sorting_comparison")).timestamp
        assert results.wait(120) == 0
        if landed < instance.get_latest_materialization_event(SUMMARY).timestamp:
            return
    pytest.fail("could not land a comparison while the results run was in progress")


def test_a_result_that_lands_during_the_fan_ins_run_requests_them_again(deployed):
    """The race: a comparison lands while the fan-ins' run is in progress.  Their own
    materialization must not count as having handled it, or the summary stays stale."""
    instance = deployed.instance
    options = _run_options(deployed)
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success
    start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert not FAN_INS & {r.key for r in start.results if r.true_subset.size > 0}, "up to date to begin with"
    _land_a_comparison_during_the_fan_ins_run(deployed, options)
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
    again = {r.key for r in after.results if r.true_subset.size > 0}
    assert SUMMARY in again, "the summary stayed behind a comparison that landed during its run"
    # Once a run started after the last comparison has finished, nothing is requested.
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
    assert not FAN_INS & {r.key for r in settled.results if r.true_subset.size > 0}


def test_the_tick_after_a_request_asks_again_when_its_run_missed_a_result(deployed):
    """The same race when the previous tick requested the fan-ins and their run finished
    before this tick: this tick requests them again, not the one after (one tick, not two)."""
    instance = deployed.instance
    options = _run_options(deployed)
    partition = f"{STUDY_A}.001_synth|{SORTER}"
    resort = dataclasses.replace(options, use_job_cache=False).run_config()
    assert execute_partition_run(instance.get_ref(), "sorting_job", partition, resort).success
    requesting = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert FAN_INS <= {r.key for r in requesting.results if r.true_subset.size > 0}, "behind a new sorting"
    _land_a_comparison_during_the_fan_ins_run(deployed, options)  # the requested run, missing one result
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=requesting.cursor)
    assert SUMMARY in {r.key for r in after.results if r.true_subset.size > 0}


def _requested_assets(result) -> set[dg.AssetKey]:
    return {r.key for r in result.results if r.true_subset.size > 0}


def _summary_asked_for_once(instance, cursor, monkeypatch, period: str) -> bool:
    """Is the summary requested at a tick evaluated as if ``automation.<period>`` had passed?"""
    from sf_assets.orchestration.assets import automation

    with monkeypatch.context() as patched:
        patched.setattr(automation, period, 0.0)
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return SUMMARY in _requested_assets(result)


def test_the_fan_ins_wait_for_the_last_run_of_a_launch(deployed, monkeypatch):
    """A result of a launch that still has a run queued waits for that run (a backfill's eight sorts
    gave six fan-in runs on the cores they needed); once the launch has nothing in flight, or the
    fan-in is older than the refresh period, the fan-ins catch up."""
    from sf_assets.orchestration.launches import LEASE_TAG

    instance = deployed.instance
    options = _run_options(deployed)
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success
    start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert not FAN_INS & _requested_assets(start), "up to date to begin with"
    launch = {LEASE_TAG: "launch-with-a-sort-to-come"}
    running = instance.create_run_for_job(
        job_def=defs.resolve_job_def("sorting_job"), tags=launch, status=dg.DagsterRunStatus.STARTED
    )
    _land_a_comparison(deployed, tags=launch)
    waiting = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
    assert not FAN_INS & _requested_assets(waiting), "its launch still has a sort running"
    assert _summary_asked_for_once(
        instance, waiting.cursor, monkeypatch, "REFRESH_WHILE_SORTING_S"
    ), "a fan-in older than the refresh period catches up anyway"
    instance.report_run_canceled(running)  # the launch's last run ends
    settled = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=waiting.cursor)
    assert SUMMARY in _requested_assets(settled), "the launch has settled"


def test_a_failed_fan_in_run_waits_for_a_new_input_or_its_retry_period(deployed, tmp_path, monkeypatch):
    """A fan-in whose run failed stays behind its inputs; it must not be requested at every tick
    (every 5 s, for good) but once an input lands after that run started, or once the retry
    period has passed (a failure that has gone away: a locked database, a cleared disk)."""
    instance = deployed.instance
    options = _run_options(deployed)
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success
    start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert not FAN_INS & _requested_assets(start), "up to date to begin with"
    _land_a_comparison(deployed)
    behind = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
    assert SUMMARY in _requested_assets(behind)
    not_a_folder = tmp_path / "outputs"
    not_a_folder.write_text("the outputs folder is a file: the summary cannot be written")
    failing = dataclasses.replace(options, outputs_dir=str(not_a_folder)).run_config()
    assert not execute_partition_run(instance.get_ref(), "results_job", None, failing).success
    cursor = behind.cursor
    for tick in range(3):  # the first tick after a request never asks again (the request is pending)
        later = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        assert not FAN_INS & _requested_assets(later), f"tick {tick + 1} asked for the failed fan-ins again"
        cursor = later.cursor
    assert _summary_asked_for_once(instance, cursor, monkeypatch, "FAILED_RUN_RETRY_S"), "behind once the period passed"
    _land_a_comparison(deployed)
    landed = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert SUMMARY in _requested_assets(landed), "a result landed after the failed run started"
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success
    caught_up = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=landed.cursor)
    assert not FAN_INS & _requested_assets(caught_up)
    # A run that never started (cancelled in the queue; a launch that failed) read nothing, and
    # whatever stopped it would stop the next: the fan-ins wait out the period all the same.
    _land_a_comparison(deployed)
    never_started = instance.create_run_for_job(job_def=defs.resolve_job_def("results_job"))
    instance.report_run_canceled(never_started)
    held = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=caught_up.cursor)
    assert not FAN_INS & _requested_assets(held), "asked again right after a run that never started"
    assert _summary_asked_for_once(instance, held.cursor, monkeypatch, "FAILED_RUN_RETRY_S"), "behind once it passed"
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success


def test_an_errored_sort_asks_for_the_summary_that_counts_it(deployed):
    """The summary counts each cell's errored sorts; an errored attempt (no comparison follows it)
    must bring it up to date, not wait for the next comparison to land."""
    instance = deployed.instance
    options = _run_options(deployed)
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success
    start = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert not FAN_INS & _requested_assets(start), "up to date to begin with"
    partition = f"{STUDY_A}.001_synth|{SORTER}"
    too_short = dataclasses.replace(options, use_job_cache=False, canary_first_n_s=0.0, timeout_min=0.001)
    assert not execute_partition_run(instance.get_ref(), "sorting_job", partition, too_short.run_config()).success
    errored = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=start.cursor)
    assert SUMMARY in _requested_assets(errored), "the summary still counts the pair as sorted"
    assert execute_partition_run(instance.get_ref(), "results_job", None, options.run_config()).success
    summary = instance.get_latest_materialization_event(SUMMARY).asset_materialization.metadata
    assert summary["num_errored"].value == 1
    resort = dataclasses.replace(options, use_job_cache=False).run_config()  # the next tests find it sorted
    assert execute_partition_run(instance.get_ref(), "sorting_job", partition, resort).success


def test_a_campaign_a_command_line_is_sorting_is_left_to_it(deployed, synthetic_studyset):
    """`make demo` beside `make ui`: the demo writes the spec and sorts it; the sensor sees the new
    sources at once, but the command line's pairs waiting for their recordings live in its memory,
    not in the queue: the sensor had requested 19 of the demo's 24 pairs a second time."""
    from sf_assets.core.campaign import Campaign
    from sf_assets.orchestration.launches import CAMPAIGN_TAG, LEASE_TAG, campaign_tag_value
    from sf_assets.stores.inputs import load_config
    from sf_assets.stores.kachery import KacheryStore

    instance = deployed.instance
    manifest = synthetic_studyset.manifest_path
    campaign = Campaign(*load_config(str(manifest), str(deployed.spec), KacheryStore(deployed.kachery_dir)))
    launch = {LEASE_TAG: "host:4242:1", CAMPAIGN_TAG: campaign_tag_value(campaign.digest())}
    running = instance.create_run_for_job(
        job_def=defs.resolve_job_def("recordings_job"), tags=launch, status=dg.DagsterRunStatus.STARTED
    )
    left = deployed.evaluate(manifest, deployed.spec, deployed.cursor)
    assert isinstance(left, dg.SkipReason), "nothing requested beside the command line"
    assert "a command-line launch (host:4242:1) is sorting this campaign" in left.skip_message
    instance.report_run_canceled(running)  # it ended (here: stopped) without sorting its pairs
    taken = deployed.evaluate(manifest, deployed.spec, deployed.cursor)
    # Planned again (what it left is requested; here earlier tests' runs may hold the pairs).
    assert isinstance(taken, dg.SensorResult) and taken.cursor != deployed.cursor
    assert "command-line launch" not in str(taken.skip_reason)


def test_the_campaign_digest_ignores_where_the_files_were_read_from(deployed, synthetic_studyset, tmp_path):
    import shutil

    from sf_assets.core.campaign import Campaign
    from sf_assets.stores.inputs import load_config
    from sf_assets.stores.kachery import KacheryStore

    store = KacheryStore(deployed.kachery_dir)
    manifest = synthetic_studyset.manifest_path
    here = Campaign(*load_config(str(manifest), str(deployed.spec), store))
    copy = shutil.copy(deployed.spec, tmp_path / "spec.yaml")
    assert Campaign(*load_config(str(manifest), str(copy), store)).digest() == here.digest()
    other = write_spec(tmp_path / "other.yaml", manifest, {NEW_SORTER: {"studysets": ["SYNTH_SET_A"], "params": {}}})
    assert Campaign(*load_config(str(manifest), str(other), store)).digest() != here.digest()
