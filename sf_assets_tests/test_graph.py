"""The whole asset graph, materialized for real on a temporary Dagster instance.

Real sorters (the fastest local ones) sort small synthetic recordings; the
canary, the comparison, the summary, the records and the workspace sync all
run through Dagster exactly as the command line drives them.
"""
from __future__ import annotations

import json

import numba
import numpy
import pytest
import spikeinterface

from sf_assets.orchestration.partitions import pair_key
from sf_assets.stores.workspace import WorkspaceStore
from sf_assets_tests.graph_harness import make_env, write_spec
from harness.instances import project_instance

RECORD_KEYS = {
    "recordingName", "studyName", "sorterName", "sortingParameters", "consoleOutUri", "cpuTimeSec",
    "errored", "startTime", "endTime", "sortingOutput", "recordingUri", "groundTruthUri", "provenance",
}
FAST = "MountainSort5"
SECOND = "Simple"


@pytest.fixture(scope="module")
def graph(synthetic_studyset, tmp_path_factory):
    """The synthetic studyset sorted by two sorters; the second only on SYNTH_SET_A."""
    root = tmp_path_factory.mktemp("graph")
    spec = write_spec(
        root / "spec.yaml",
        synthetic_studyset.manifest_path,
        {FAST: {"studysets": ["SYNTH_SET_A", "SYNTH_SET_B"]}, SECOND: {"studysets": ["SYNTH_SET_A"]}},
    )
    (root / "dagster").mkdir()
    with project_instance(temp_dir=str(root / "dagster")) as instance:
        env = make_env(root, synthetic_studyset.store, instance, synthetic_studyset.manifest_path, spec, canary_first_n_s=3.0)
        outcome = env.launch(workers=2)
        yield env, outcome


def test_every_assigned_pair_is_sorted_compared_and_summarized(graph):
    env, outcome = graph
    campaign = env.campaign
    assert len(campaign.jobs) == 6  # 4 recordings x MountainSort5 + 2 x Simple
    assert [o.error for o in outcome.sortings if not o.success] == []
    assert len(outcome.sortings) == 6
    sortings = env.latest("sorting")
    comparisons = env.latest("sorting_comparison")
    assert set(sortings) == set(comparisons) == {str(pair_key(s.name, r)) for s, r in campaign.jobs}
    for md in sortings.values():
        assert md["num_units"] > 0
        loaded = env.store.load_json(md["sorting_object_uri"])
        assert loaded["firings"].startswith("sha1://")
    summary = env.latest_unpartitioned("sorter_summary")
    rows = summary["summary"].records
    assert {r.data["sorter"] for r in rows} == {FAST, SECOND}
    # both measured deterministic (Simple with the worker's seeding, which every comparison says it had)
    assert {r.data["reproducible"] for r in rows} == {"yes"}
    assert {md["sorting_draws_seeded"] for md in comparisons.values()} == {True}
    assert summary["num_comparisons"] == 6
    assert "data:image/png;base64," in summary["accuracy_vs_snr"]
    best = max(r.data["mean_accuracy"] or 0 for r in rows)
    assert best > 0.5, "a real sorter on clean synthetic data should find most units"


def test_canary_ran_before_every_full_sort_and_passed(graph):
    env, _ = graph
    evaluations = env.check_evaluations()
    assert len(evaluations) == 6
    assert {r.partition for r in evaluations} == set(env.latest("sorting")), "one canary result per partition"
    for record in evaluations:
        assert record.status.value == "SUCCEEDED"
        md = record.event.dagster_event.event_specific_data.metadata
        assert md["window_s"].value == 3.0
        assert md["units_found"].value >= 0
        assert md["status"].value == "passed"


def test_records_have_the_twelve_keys_and_point_to_kachery(graph):
    env, _ = graph
    records = json.loads((env.root / "outputs" / "sorting_records.json").read_text())
    assert len(records) == 6
    for record in records:
        assert set(record) == set(RECORD_KEYS)
        assert record["errored"] is False
        console = env.store.load_json(record["consoleOutUri"])
        assert "sorted" in console["text"]
        assert record["endTime"] >= record["startTime"]
        # what the sort ran with: the pinned seed, one thread (2 sorts on this machine's cores), versions
        provenance = record["provenance"]
        seed = {FAST: {"whitening_seed": 0}, SECOND: {"seed": 0}}[record["sorterName"]]
        assert provenance["seeds"] == seed and record["sortingParameters"] == seed
        assert provenance["unseeded_draws_seed"] == 0
        threads = 1  # threads_per_sort, whatever the number of sorts beside it
        assert (provenance["threads"]["applied"], provenance["threads"]["numba"]) == (threads, threads)
        assert {p["num_threads"] for p in provenance["threads"]["threadpools"]} == {threads}
        assert provenance["versions"]["spikeinterface"] == spikeinterface.__version__
        assert provenance["versions"]["numpy"] == numpy.__version__
        assert provenance["versions"]["numba"] == numba.__version__
        assert provenance["versions"]["sorter"] and provenance["container_image"] is None
    md = env.latest_unpartitioned("sorting_records")
    assert env.store.load_json(md["records_uri"]) == records


def test_workspace_holds_each_label_once_and_a_second_sync_adds_nothing(graph):
    env, _ = graph
    first = env.latest_unpartitioned("workspace_sync")
    assert first["added"] == 4 + 4 + 6  # recordings, ground truths, sortings
    again = env.run("results_job")
    assert again.success, again.error
    second = env.latest_unpartitioned("workspace_sync")
    assert second["added"] == 0
    assert second["already_present"] == 14
    store = WorkspaceStore(env.options.workspace_db_url)
    labels = [e.label for e in store.list_entries(first["workspace_uri"])]
    assert len(labels) == len(set(labels)) == 14
    assert f"{FAST}/synth_a1_K6_C4/001_synth" in labels
    assert "Ground-Truth/synth_a1_K6_C4/001_synth" in labels


def test_dry_run_sync_writes_nothing(graph, tmp_path):
    env, _ = graph
    dry = env.with_options(workspace_db_url=f"sqlite:///{tmp_path / 'ws.db'}")
    store = WorkspaceStore(dry.options.workspace_db_url)
    uri = store.create_workspace("dry")
    dry = dry.with_options(workspace_uri=uri, dry_run=True)
    outcome = dry.run("results_job")
    assert outcome.success, outcome.error
    md = dry.latest_unpartitioned("workspace_sync")
    assert md["dry_run"] is True and md["added"] == 14
    assert store.existing_labels(uri) == set()


def test_a_second_launch_sorts_nothing(graph):
    env, _ = graph
    outcome = env.launch(workers=1, run_results=False)
    assert outcome.sortings == []
    assert len(outcome.cached_pairs) == 6
    assert outcome.recordings == []


def test_an_unassigned_pair_is_refused_at_once(graph):
    env, _ = graph
    campaign = env.campaign
    rec_b = next(r for r in campaign.recordings() if r.study_set_name == "SYNTH_SET_B")
    key = str(pair_key(SECOND, rec_b))
    outcome = env.run("sorting_job", key)
    assert not outcome.success
    assert "is not assigned" in outcome.error
    assert SECOND in outcome.error and "SYNTH_SET_B" in outcome.error
    assert not (env.root / "sorts" / SECOND).exists() or not any((env.root / "sorts" / SECOND).glob("*set_b*"))
