"""A spec naming sorters that cannot run here: it validates, and their pairs end as errored records.

The committed example (resources/unrunnable-sorters-spec.yaml) names JRClust and Klusta, whose
spikeinterface wrappers are gone, beside MountainSort5.  check-config accepts it and says
which sorter runs where; ``--strict`` refuses it; a campaign over it sorts MountainSort5 and
records every JRClust and Klusta pair as errored, with a console stating the reason.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from sf_assets.assets.recordings import ground_truth, recording
from sf_assets.assets.results import sorter_summary, sorting_records
from sf_assets.assets.sortings import sorting, sorting_comparison
from sf_assets.assets.studysets import studysets
from sf_assets.cli import main
from sf_assets.partitions import pair_key, recording_key
from sf_assets.resources import KacheryResource, OutputsResource, SortingEngineResource, StudysetResource

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
SPEC = "unrunnable-sorters-spec.yaml"
RENAMED_SETS = {"SYNTH_SET_A": "PAIRED_KAMPFF", "SYNTH_SET_B": "SYNTH_MAGLAND"}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    for name in ("studysets_tiny.json", SPEC):
        shutil.copy(RESOURCES / name, folder / name)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("SF_ASSETS_KACHERY_DIR", str(tmp_path / "kachery"))
    return folder


def test_check_config_accepts_it_and_says_where_each_sorter_runs(work, capsys):
    before = sorted(p.name for p in work.parent.rglob("*"))
    assert main(["check-config", "-l", SPEC]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    config = json.loads(out)
    assert (config["num_recordings"], config["num_sorting_jobs"]) == (4, 8)
    assert config["num_sorting_jobs_by_availability"] == {"local": 4, "container only": 0, "cannot run here": 4}
    by_name = {s["name"]: s for s in config["sorters"]}
    assert {n: (s["availability"], s["num_recordings"]) for n, s in by_name.items()} == {
        "JRClust": ("cannot run here", 2),
        "Klusta": ("cannot run here", 2),
        "MountainSort5": ("local", 4),
    }
    assert "dropped its JRClust wrapper" in by_name["JRClust"]["availability_reason"]
    assert "archived its Klusta wrapper" in by_name["Klusta"]["availability_reason"]
    # the project's pinned seed shows in the params the sorter gets
    assert by_name["MountainSort5"]["params"]["whitening_seed"] == 0
    assert sorted(p.name for p in work.parent.rglob("*")) == before


def test_strict_refuses_it_and_typos_stay_errors(work, capsys):
    assert main(["check-config", "-l", SPEC, "--strict"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(
        f"sf-assets: error: {SPEC}: spike-sorters[0].params: sorter 'JRClust' cannot run here: "
        "spikeinterface 0.105.3 cannot run it: spikeinterface dropped its JRClust wrapper"
    )
    assert err.count("\n") == 1
    (work / SPEC).write_text((work / SPEC).read_text().replace("name: Klusta", "name: Klustaa"))
    assert main(["check-config", "-l", SPEC]) == 2
    assert "unknown sorter 'Klustaa'" in capsys.readouterr().err


def _renamed_manifest(source: Path, target: Path) -> Path:
    """The synthetic manifest with its study sets named as in the committed spec."""
    text = source.read_text()
    for old, new in RENAMED_SETS.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    target.write_text(text)
    return target


def test_a_campaign_sorts_what_runs_and_records_the_rest_as_errored(synthetic_studyset, tmp_path):
    manifest = _renamed_manifest(synthetic_studyset.manifest_path, tmp_path / "studysets.json")
    resources = {
        "kachery": KacheryResource(root_dir=str(synthetic_studyset.store.root_dir)),
        "studyset": StudysetResource(spec_source=str(RESOURCES / SPEC), manifest_source=str(manifest)),
        "sorting_engine": SortingEngineResource(work_root=str(tmp_path / "sorts"), canary_first_n_s=0.0),
        "outputs": OutputsResource(folder=str(tmp_path / "outputs")),
    }
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        assert dg.materialize([studysets], instance=instance, resources=resources).success
        campaign = resources["studyset"].campaign(resources["kachery"])
        assert len(campaign.jobs) == 8
        for rec in campaign.recordings():
            result = dg.materialize([recording, ground_truth], instance=instance, resources=resources,
                                    partition_key=recording_key(rec))
            assert result.success
        outcomes = {}
        for sorter_spec, rec in campaign.jobs:
            key = pair_key(sorter_spec.name, rec)
            result = dg.materialize([sorting], instance=instance, resources=resources, partition_key=str(key),
                                    raise_on_error=False)
            outcomes[(sorter_spec.name, rec.label)] = result
            if result.success:
                assert dg.materialize([sorting_comparison], instance=instance, resources=resources,
                                      partition_key=str(key)).success
        a, b = "synth_a1_K6_C4", "synth_b1_K6_C4"  # PAIRED_KAMPFF and SYNTH_MAGLAND here
        assert {k: r.success for k, r in outcomes.items()} == {
            **{("JRClust", f"{a}/{r}"): False for r in ("001_synth", "002_synth")},
            **{("Klusta", f"{b}/{r}"): False for r in ("001_synth", "002_synth")},
            **{("MountainSort5", f"{s}/{r}"): True for s in (a, b) for r in ("001_synth", "002_synth")},
        }
        failure = outcomes[("JRClust", f"{a}/001_synth")].get_step_failure_events()[0]
        assert "environment failure: sorter 'JRClust' cannot run: " in failure.step_failure_data.error.message

        assert dg.materialize([sorting_records, sorter_summary], instance=instance, resources=resources).success

    records = json.loads((tmp_path / "outputs" / "sorting_records.json").read_text())
    assert len(records) == 8
    store = synthetic_studyset.store
    for record in records:
        if record["sorterName"] == "MountainSort5":
            assert record["errored"] is False and record["sortingOutput"]["sorting_format"] == "mda"
            assert record["sortingParameters"] == {"whitening_seed": 0}
            assert record["provenance"]["seeds"] == {"whitening_seed": 0}
        else:
            assert record["errored"] is True and record["sortingOutput"] is None
            assert record["sortingParameters"] == {}
            console = store.load_json(record["consoleOutUri"])["text"]
            assert console.startswith(f"[sf-assets] {record['sorterName']}/")
            assert f"was not sorted: environment failure: sorter '{record['sorterName']}' cannot run: " in console

    summary = (tmp_path / "outputs" / "sorter_summary.csv").read_text().splitlines()
    assert summary[0] == (
        "sorter,study_set,study,recordings,mean_accuracy,mean_precision,mean_recall,num_well_detected,"
        "num_true_units,num_errored,reproducible"
    )
    rows = {tuple(line.split(",")[:3]): line.split(",") for line in summary[1:]}
    # two failed cells (no scores, one errored sort per recording) and two scored ones
    for cell in (("JRClust", "PAIRED_KAMPFF", "synth_a1_K6_C4"), ("Klusta", "SYNTH_MAGLAND", "synth_b1_K6_C4")):
        assert rows[cell][3:] == ["0", "", "", "", "0", "0", "2", "unknown"]
    for cell in (("MountainSort5", "PAIRED_KAMPFF", "synth_a1_K6_C4"), ("MountainSort5", "SYNTH_MAGLAND", "synth_b1_K6_C4")):
        assert rows[cell][3] == "2" and float(rows[cell][4]) > 0.3 and rows[cell][9:] == ["0", "yes"]
