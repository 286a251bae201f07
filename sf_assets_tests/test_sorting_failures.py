"""How the sorting step fails: canary gate, sorter crash, timeout, unassigned pair.

Each case is a real sort by a real sorter on a real (small) recording, through
a real Dagster run on a temporary instance.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import spikeinterface.core as sc

from sf_assets.stores.data import store_ground_truth, store_recording
from sf_assets.engines.engine import work_dir_for
from sf_assets.engines.job import CONSOLE_FILE
from sf_assets.orchestration.partitions import pair_key
from sf_assets_tests.graph_harness import make_env, write_spec
from harness.instances import project_instance

SORTER = "MountainSort5"


def write_noise_manifest(store, path: Path) -> Path:
    """A one-recording manifest whose recording is pure noise (no units at all)."""
    recording = sc.generate_recording(num_channels=4, durations=[10.0], sampling_frequency=30000.0, seed=7)
    empty = sc.NumpySorting.from_unit_dict([{}], sampling_frequency=30000.0)
    rec_uri = store_recording(recording, store, "noise_001")
    gt_uri = store_ground_truth(empty, store, "noise_001")
    manifest = {
        "StudySets": [
            {
                "name": "NOISE_SET",
                "info": {},
                "description": "noise only",
                "studies": [
                    {
                        "name": "noise_only",
                        "studySetName": "NOISE_SET",
                        "recordings": [
                            {
                                "name": "noise_001",
                                "studyName": "noise_only",
                                "studySetName": "NOISE_SET",
                                "sampleRateHz": 30000.0,
                                "numChannels": 4,
                                "durationSec": 10.0,
                                "numTrueUnits": 0,
                                "spikeSign": -1,
                                "recordingUri": rec_uri,
                                "sortingTrueUri": gt_uri,
                            }
                        ],
                    }
                ],
            }
        ]
    }
    path.write_text(json.dumps(manifest, indent=2))
    return path


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as inst:
        yield inst


def _only_pair(env):
    sorter_spec, rec = env.campaign.jobs[0]
    return str(pair_key(sorter_spec.name, rec)), rec


def test_classified_canary_failure_stops_the_full_sort(kachery_store, tmp_path, instance):
    manifest = write_noise_manifest(kachery_store, tmp_path / "studysets.json")
    spec = write_spec(tmp_path / "spec.yaml", manifest, {SORTER: {"studysets": ["NOISE_SET"]}})
    env = make_env(tmp_path / "env", kachery_store, instance, manifest, spec, canary_first_n_s=4.0)
    outcome = env.launch(run_results=False)
    [sort_run] = outcome.sortings
    assert not sort_run.success
    assert "insufficient" in sort_run.error.lower()

    [evaluation] = env.check_evaluations()
    assert evaluation.status.value == "FAILED"
    md = evaluation.event.dagster_event.event_specific_data.metadata
    assert md["failure_class"].value == "insufficient_activity"
    assert md["units_found"].value == 0
    assert md["window_s"].value == 4.0

    key, rec = _only_pair(env)
    work_dir = work_dir_for(env.options.engine_settings(), SORTER, rec.study_name, rec.name, sort_run.run_id)
    assert not (work_dir / "sorter").exists(), "the full sort must never start"
    assert not (work_dir / "_canary").exists(), "the canary folder is cleaned at exit"
    console = (work_dir / CONSOLE_FILE).read_text()
    assert "canary: insufficient_activity failure" in console
    assert f"sorting {SORTER}/" not in console
    assert env.latest("sorting") == {}, "nothing is registered as materialized"
    [record_md] = env.latest("sorting", observations=True).values()
    assert record_md["record"]["errored"] is True
    assert record_md["record"]["sortingOutput"] is None


def test_a_sorter_crash_gives_an_errored_record_and_fails_only_its_partition(
    synthetic_studyset, tmp_path, instance
):
    spec = write_spec(
        tmp_path / "spec.yaml",
        synthetic_studyset.manifest_path,
        {SORTER: {"studysets": ["SYNTH_SET_A"], "params": {"scheme": "7"}}, "Simple": {"studysets": ["SYNTH_SET_A"]}},
    )
    env = make_env(
        tmp_path / "env", synthetic_studyset.store, instance, synthetic_studyset.manifest_path, spec, canary_first_n_s=0.0
    )
    outcome = env.launch(workers=2)
    by_sorter = {}
    for o in outcome.sortings:
        by_sorter.setdefault(o.partition_key.split("|")[1], []).append(o)
    assert [o.success for o in by_sorter[SORTER]] == [False, False]
    assert [o.success for o in by_sorter["Simple"]] == [True, True]
    records = json.loads((env.root / "outputs" / "sorting_records.json").read_text())
    errored = [r for r in records if r["errored"]]
    assert len(records) == 4 and len(errored) == 2
    for record in errored:
        assert record["sorterName"] == SORTER and record["sortingOutput"] is None
        console = env.store.load_json(record["consoleOutUri"])["text"]
        assert "scheme" in console, "the sorter's own traceback is in the console output"
    # Only the successful sortings reach the workspace; the errored ones are skipped with a note.
    ws = env.latest_unpartitioned("workspace_sync")
    assert ws["skipped_errored"] == 2 and ws["added"] == 2 + 2 + 2


def test_a_sort_past_its_timeout_gives_an_errored_record(synthetic_studyset, tmp_path, instance):
    spec = write_spec(tmp_path / "spec.yaml", synthetic_studyset.manifest_path, {SORTER: {"studysets": ["SYNTH_SET_A"]}})
    env = make_env(
        tmp_path / "env",
        synthetic_studyset.store,
        instance,
        synthetic_studyset.manifest_path,
        spec,
        canary_first_n_s=0.0,
        timeout_min=0.001,  # 0.06 s: shorter than any sort, even on a warm worker (1.2 s was not)
    )
    [sorter_spec, rec] = env.campaign.jobs[0]
    outcome = env.launch(pairs=[(sorter_spec, rec)], run_results=False)
    [sort_run] = outcome.sortings
    assert not sort_run.success
    assert "timed out after 0.06 s" in sort_run.error
    [record_md] = env.latest("sorting", observations=True).values()
    assert record_md["record"]["errored"] is True
    assert record_md["record"]["consoleOutUri"].startswith("sha1://")


def test_an_unexpected_canary_error_is_logged_and_the_full_sort_proceeds(synthetic_studyset, tmp_path, instance):
    # k-means asked for 100 clusters: fine on 10 s of spikes, an unclassified
    # scikit-learn error on a 0.5 s window that holds fewer than 100 peaks.
    params = {"clusterer": "kmeans", "clusterer_kwargs": {"n_clusters": 100}}
    spec = write_spec(
        tmp_path / "spec.yaml", synthetic_studyset.manifest_path, {"Simple": {"studysets": ["SYNTH_SET_A"], "params": params}}
    )
    env = make_env(
        tmp_path / "env", synthetic_studyset.store, instance, synthetic_studyset.manifest_path, spec, canary_first_n_s=0.5
    )
    sorter_spec, rec = env.campaign.jobs[0]
    outcome = env.launch(pairs=[(sorter_spec, rec)], run_results=False)
    [sort_run] = outcome.sortings
    assert sort_run.success, sort_run.error
    [evaluation] = env.check_evaluations()
    md = evaluation.event.dagster_event.event_specific_data.metadata
    assert evaluation.status.value == "SUCCEEDED"
    assert md["status"].value == "unexpected_error"
    assert md["failure_class"].value == "none"
    assert "n_clusters" in md["message"].value or "n_samples" in md["message"].value
    [sorted_md] = env.latest("sorting").values()
    # k-means' initialization is random: an empty cluster or two may be dropped, but the
    # default clustering finds a handful of units here, not close to 100.
    assert 90 <= sorted_md["num_units"] <= 100, "the full sort ran with the same params"
    console = env.store.load_json(sorted_md["console_out_uri"])["text"]
    assert "canary: unexpected error" in console and "the full sort proceeds" in console
