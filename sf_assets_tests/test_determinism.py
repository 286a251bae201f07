"""Identical inputs, identical tables: one campaign on two empty instances through two launch paths.

MountainSort5 sorts deterministically with its pinned ``whitening_seed`` and a fixed thread
count; Simple, like spikeinterface's other own sorters, draws random chunks without a seed, and
does so only because the worker seeds those draws (sf_assets/engines/seeded_draws.py; measured,
docs/sorters.md).  Sorted once in the calling process with a fresh worker per sort and once by
the command line's launcher with two warm workers (which have sorted before), every sorting,
every per-unit score and the summary file must be byte-identical.
"""
from __future__ import annotations

import dagster as dg

from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets_tests.graph_harness import campaign_resources, make_env, materialize_campaign, write_spec
from harness.instances import project_instance

SORTERS = ("MountainSort5", "Simple")


def _results(instance, store) -> dict:
    """Per pair: the sorting object (its sha1 is its spike trains) and the per-unit scores."""
    from sf_assets.orchestration.assets.history import latest_partition_events, plain_metadata

    sortings = latest_partition_events(instance, dg.AssetKey("sorting"))
    comparisons = latest_partition_events(instance, dg.AssetKey("sorting_comparison"))
    assert set(sortings) == set(comparisons)
    return {
        key: (
            plain_metadata(sortings[key][1])["sorting_object_uri"],
            store.load_json(plain_metadata(comparisons[key][1])["comparison_uri"])["units"],
        )
        for key in sortings
    }


def test_two_instances_two_launch_paths_give_identical_sortings_scores_and_summary(synthetic_studyset, tmp_path):
    assert all(resolve_sorter(sorter).deterministic is True for sorter in SORTERS)
    sets = ["SYNTH_SET_A", "SYNTH_SET_B"]
    spec = write_spec(
        tmp_path / "spec.yaml", synthetic_studyset.manifest_path, {sorter: {"studysets": list(sets)} for sorter in SORTERS}
    )
    store = synthetic_studyset.store

    first = tmp_path / "first"
    (first / "dagster").mkdir(parents=True)
    with project_instance(temp_dir=str(first / "dagster")) as instance:
        resources = campaign_resources(
            first, store, spec, synthetic_studyset.manifest_path, canary_first_n_s=0.0, reuse_workers=False
        )
        assert set(materialize_campaign(instance, resources).values()) == {True}
        first_results = _results(instance, store)

    second = tmp_path / "second"
    (second / "dagster").mkdir(parents=True)
    with project_instance(temp_dir=str(second / "dagster")) as instance:
        env = make_env(second, store, instance, synthetic_studyset.manifest_path, spec, canary_first_n_s=0.0)
        outcome = env.launch(workers=2)
        assert [o.error for o in outcome.sortings if not o.success] == []
        second_results = _results(instance, store)

    assert len(first_results) == 4 * len(SORTERS)
    assert first_results == second_results
    summary = (first / "outputs" / "sorter_summary.csv").read_bytes()
    assert summary == (second / "outputs" / "sorter_summary.csv").read_bytes()
    rows = summary.decode().splitlines()[1:]
    assert {row.split(",")[0] for row in rows} == set(SORTERS)
    assert all(row.endswith(",0,yes") for row in rows), rows
