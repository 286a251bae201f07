"""The score regression check on sorter_summary, and the per-cell score history.

Comparisons are reported as real materialization events on a temporary
instance (the check reads what a sorting_comparison run would have written),
so each step can move one score with or without a change of inputs.
"""
from __future__ import annotations

import csv

import dagster as dg

from sf_assets.orchestration.assets.results import sorter_summary, summary_frame
from sf_assets.orchestration.assets.score_checks import SCORE_REGRESSION
from sf_assets.orchestration.assets.studysets import studysets
from sf_assets.orchestration.partitions import pair_key
from sf_assets.orchestration.resources import KacheryResource, OutputsResource, StudysetResource
from sf_assets.stores.kachery import KacheryStore
from sf_assets_tests.graph_harness import write_spec
from harness.instances import project_instance

SORTER = "MountainSort5"


def _report(instance, store, campaign, accuracies: dict[str, float], version: str = "0.5.9") -> None:
    """A sorting_comparison materialization per recording, with the given mean accuracy."""
    for sorter_spec, rec in campaign.jobs:
        if rec.name not in accuracies:
            continue
        units_uri = store.store_json({"units": [{"snr": 10.0, "accuracy": accuracies[rec.name]}]}, label="c.json")
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key="sorting_comparison",
                partition=str(pair_key(sorter_spec.name, rec)),
                metadata={
                    "sorter": sorter_spec.name,
                    "study": rec.study_name,
                    "study_set": rec.study_set_name,
                    "recording": rec.name,
                    "comparison_uri": units_uri,
                    "sorting_cache_key": f"key-of-{rec.name}",
                    "sorting_versions": dg.MetadataValue.json({"mountainsort5": version}),
                    "summary": dg.MetadataValue.json(
                        {"mean_accuracy": accuracies[rec.name], "num_well_detected": 1, "num_true_units": 1}
                    ),
                },
            )
        )


def _check(result) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == SCORE_REGRESSION]
    return evaluation


def test_a_score_that_moves_with_nothing_changed_warns_and_a_new_version_reports_its_delta(
    synthetic_studyset, tmp_path
):
    spec = write_spec(tmp_path / "spec.yaml", synthetic_studyset.manifest_path, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    store = KacheryStore(tmp_path / "kachery")
    resources = {
        "kachery": KacheryResource(root_dir=str(store.root_dir)),
        "studyset": StudysetResource(spec_source=str(spec), manifest_source=str(synthetic_studyset.manifest_path)),
        "outputs": OutputsResource(folder=str(tmp_path / "outputs")),
    }
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        assert dg.materialize([studysets], instance=instance, resources=resources).success
        campaign = resources["studyset"].campaign(resources["kachery"])

        _report(instance, store, campaign, {"001_synth": 0.9, "002_synth": 0.9})
        first = _check(dg.materialize([sorter_summary], instance=instance, resources=resources))
        assert first.passed and first.description == "first summary: nothing to compare with"

        # Same cache keys, same versions, another score: a non-deterministic sort.
        _report(instance, store, campaign, {"001_synth": 0.8})
        second = _check(dg.materialize([sorter_summary], instance=instance, resources=resources))
        assert not second.passed and second.severity == dg.AssetCheckSeverity.WARN
        assert second.metadata["num_unexplained"].value == 1
        assert second.description.startswith(
            "1 cell(s) moved with unchanged inputs and versions (non-deterministic sorts); largest: "
            f"{SORTER}/SYNTH_SET_A/synth_a1_K6_C4 -0.0500"
        )
        [row] = second.metadata["changes"].records
        assert (row.data["before"], row.data["after"], row.data["cause"]) == (0.9, 0.85, "inputs unchanged")

        # A new sorter version moves it again: reported with its delta, and the check passes.
        _report(instance, store, campaign, {"001_synth": 0.7}, version="0.6.0")
        third = _check(dg.materialize([sorter_summary], instance=instance, resources=resources))
        assert third.passed and third.metadata["num_changed_cells"].value == 1
        [row] = third.metadata["changes"].records
        assert (row.data["delta"], row.data["cause"]) == (-0.05, "sorter version changed")

        # Nothing new: nothing moved.
        fourth = _check(dg.materialize([sorter_summary], instance=instance, resources=resources))
        assert fourth.passed and fourth.description == "no cell moved by more than 0.001"

    with open(tmp_path / "outputs" / "score_history.csv") as f:
        history = list(csv.DictReader(f))
    assert [round(float(r["mean_accuracy"]), 3) for r in history] == [0.9, 0.85, 0.8, 0.8]
    assert {r["sorter"] for r in history} == {SORTER}
    assert history[0]["inputs"] == history[3]["inputs"] and history[1]["versions"] != history[2]["versions"]


def test_a_cell_whose_sorting_the_seeding_did_not_reach_is_not_reproducible(synthetic_studyset, tmp_path):
    """Simple is deterministic only with the worker's seeded draws: a sorting without them (a container's) says no."""
    spec = write_spec(
        tmp_path / "spec.yaml", synthetic_studyset.manifest_path, {"Simple": {"studysets": ["SYNTH_SET_A", "SYNTH_SET_B"]}}
    )
    store = KacheryStore(tmp_path / "kachery")
    resources = {
        "kachery": KacheryResource(root_dir=str(store.root_dir)),
        "studyset": StudysetResource(spec_source=str(spec), manifest_source=str(synthetic_studyset.manifest_path)),
        "outputs": OutputsResource(folder=str(tmp_path / "outputs")),
    }
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        assert dg.materialize([studysets], instance=instance, resources=resources).success
        campaign = resources["studyset"].campaign(resources["kachery"])
        for sorter_spec, rec in campaign.jobs:
            partition = str(pair_key(sorter_spec.name, rec))
            # one recording of set B was sorted where the worker's seeding did not reach
            seeded = not (rec.study_set_name == "SYNTH_SET_B" and rec.name == "001_synth")
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key="sorting",
                    partition=partition,
                    metadata={"provenance": dg.MetadataValue.json({"unseeded_draws_seed": 0 if seeded else None})},
                )
            )
            metadata = {
                "sorter": sorter_spec.name,
                "study": rec.study_name,
                "study_set": rec.study_set_name,
                "recording": rec.name,
                "comparison_uri": store.store_json({"units": []}, label="c.json"),
                "sorting_draws_seeded": seeded,
                "summary": dg.MetadataValue.json({"mean_accuracy": 0.9, "num_true_units": 1}),
            }
            if rec.name == "002_synth":  # compared before comparisons recorded it: the sorting's provenance says
                del metadata["sorting_draws_seeded"]
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key="sorting_comparison", partition=partition, metadata=metadata)
            )
        assert dg.materialize([sorter_summary], instance=instance, resources=resources).success
    with open(tmp_path / "outputs" / "sorter_summary.csv") as f:
        rows = {r["study_set"]: r for r in csv.DictReader(f)}
    assert {name: row["reproducible"] for name, row in rows.items()} == {"SYNTH_SET_A": "yes", "SYNTH_SET_B": "no"}


def test_a_cell_whose_sorts_all_errored_says_nothing_about_reproducibility():
    """No scores, nothing to reproduce: not 'yes' from the catalog alone; an errored sort beside a scored one
    changes nothing."""
    failed = {"sorter": "Simple", "study_set": "SYNTH_SET_A", "study": "failed"}
    scored = {**failed, "study": "scored"}
    comparison = {**scored, "summary": {"mean_accuracy": 0.9, "num_true_units": 1}, "sorting_draws_seeded": True}
    frame = summary_frame([comparison], [failed, scored])
    assert dict(zip(frame["study"], frame["reproducible"])) == {"failed": "", "scored": "yes"}
    assert dict(zip(frame["study"], frame["num_errored"])) == {"failed": 1, "scored": 1}
