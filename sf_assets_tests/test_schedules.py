"""The re-run schedule on a temporary instance with real sortings.

Module fixture: MountainSort5 sorts 001_synth (succeeds), sorts 002_synth with
an impossible ``scheme`` (a real errored sort: observation, failed run), and a
run of an unassigned pair (SYNTH_SET_B) fails at once.  The schedule is
evaluated with the corrected spec, as after a fix.
"""
from __future__ import annotations

import dagster as dg
import pytest

from sf_assets.definitions import defs
from sf_assets.engines.job import SORT_ENGINE_VERSION
from sf_assets.orchestration.partitions import PARTITION_TAG
from sf_assets.orchestration.resources import KacheryResource, StudysetResource
from sf_assets.orchestration.schedules import (
    ERRORED,
    OLD_CODE_VERSION,
    REASON_TAG,
    rerun_sortings_schedule,
    sortings_to_rerun,
)
from harness.automation import submit_backfill, write_manifest
from sf_assets_tests.graph_harness import make_env, write_spec
from harness.instances import project_instance

SORTER = "MountainSort5"
STUDY_A = "synth_a1_K6_C4"
STUDY_B = "synth_b1_K6_C4"
GOOD = f"{STUDY_A}.001_synth|{SORTER}"
ERRORED_PAIR = f"{STUDY_A}.002_synth|{SORTER}"
UNASSIGNED = f"{STUDY_B}.001_synth|{SORTER}"


@pytest.fixture(scope="module")
def history(synthetic_studyset, tmp_path_factory):
    root = tmp_path_factory.mktemp("schedules")
    manifest = write_manifest(
        synthetic_studyset.manifest_path,
        root / "studysets.json",
        [(STUDY_A, "001_synth"), (STUDY_A, "002_synth"), (STUDY_B, "001_synth")],
    )
    spec = write_spec(root / "spec.yaml", manifest, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    impossible = {SORTER: {"studysets": ["SYNTH_SET_A"], "params": {"scheme": "9"}}}
    broken = write_spec(root / "broken.yaml", manifest, impossible)
    (root / "dagster").mkdir()
    with project_instance(temp_dir=str(root / "dagster")) as instance:
        env = make_env(root, synthetic_studyset.store, instance, manifest, spec, canary_first_n_s=0.0)
        env.launch(pairs=[env.campaign.jobs[0]], run_results=False)
        env.with_options(spec_source=str(broken)).launch(pairs=[env.campaign.jobs[1]], run_results=False)
        refused = env.run("sorting_job", UNASSIGNED)
        assert not refused.success and "is not assigned" in refused.error
        yield env


def _evaluate(env):
    resources = {
        "studyset": StudysetResource(spec_source=env.options.spec_source, manifest_source=env.options.manifest_source),
        "kachery": KacheryResource(root_dir=env.options.kachery_dir),
    }
    # As a context manager: the context opens an instance of its own, and left open that
    # instance stays Dagster's current one after it is gone, failing later code-location loads.
    with dg.build_schedule_context(
        instance=env.instance, resources=resources, repository_def=defs.get_repository_def()
    ) as context:
        return rerun_sortings_schedule.evaluate_tick(context)


def test_the_history_holds_one_sorting_one_errored_and_one_refused(history):
    assert history.instance.get_materialized_partitions(dg.AssetKey("sorting")) == {GOOD}
    errored = history.latest("sorting", observations=True)[ERRORED_PAIR]
    assert errored["errored"] is True and errored["record"]["errored"] is True


def test_the_schedule_reruns_the_errored_sorting_and_nothing_else(history):
    data = _evaluate(history)
    assert [(r.partition_key, r.tags[REASON_TAG]) for r in data.run_requests] == [(ERRORED_PAIR, ERRORED)]
    (request,) = data.run_requests
    assert request.job_name in (None, "sorting_job")
    assert request.run_key == ERRORED_PAIR


def test_sortings_by_an_older_engine_are_rerun_too(history):
    campaign = history.campaign
    assert sortings_to_rerun(history.instance, campaign, SORT_ENGINE_VERSION) == {ERRORED_PAIR: ERRORED}
    bumped = str(int(SORT_ENGINE_VERSION) + 1) if SORT_ENGINE_VERSION.isdigit() else SORT_ENGINE_VERSION + "-next"
    assert sortings_to_rerun(history.instance, campaign, bumped) == {GOOD: OLD_CODE_VERSION, ERRORED_PAIR: ERRORED}


@pytest.mark.parametrize(
    "tags",
    [
        {PARTITION_TAG: ERRORED_PAIR},
        # A backfill's run names its one partition as a range.
        {"dagster/asset_partition_range_start": ERRORED_PAIR, "dagster/asset_partition_range_end": ERRORED_PAIR},
    ],
)
def test_a_pair_with_a_run_in_progress_is_left_alone(history, tags):
    run = history.instance.create_run_for_job(
        job_def=defs.resolve_job_def("sorting_job"), status=dg.DagsterRunStatus.STARTED, tags=tags
    )
    try:
        data = _evaluate(history)
        assert data.run_requests == []
        assert "current or not yet run" in data.skip_message
    finally:
        history.instance.delete_run(run.run_id)


def test_a_pair_an_unfinished_backfill_will_sort_is_left_alone(history):
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._core.execution.backfill import BulkActionStatus

    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(dg.AssetKey("sorting"), ERRORED_PAIR)}, defs.get_repository_def().asset_graph
    )
    backfill_id = submit_backfill(history.instance, subset)
    try:
        assert _evaluate(history).run_requests == []
    finally:
        backfill = history.instance.get_backfill(backfill_id)
        history.instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED))
    assert [r.partition_key for r in _evaluate(history).run_requests] == [ERRORED_PAIR]


def test_a_broken_spec_skips_with_the_message(history, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("spike-sorters: [")
    data = _evaluate(history.with_options(spec_source=str(spec)))
    assert data.run_requests == []
    assert str(spec) in data.skip_message
