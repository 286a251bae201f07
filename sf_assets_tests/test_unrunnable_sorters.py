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

from sf_assets.orchestration.assets.history import latest_partition_events, plain_metadata
from sf_assets.cli import main
from sf_assets_tests.graph_harness import campaign_resources, materialize_campaign
from harness.instances import project_instance

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
    resources = campaign_resources(tmp_path, synthetic_studyset.store, RESOURCES / SPEC, manifest, canary_first_n_s=0.0)
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        outcomes = materialize_campaign(instance, resources)
        a, b = "synth_a1_K6_C4", "synth_b1_K6_C4"  # PAIRED_KAMPFF and SYNTH_MAGLAND here
        assert outcomes == {
            **{("JRClust", f"{a}/{r}"): False for r in ("001_synth", "002_synth")},
            **{("Klusta", f"{b}/{r}"): False for r in ("001_synth", "002_synth")},
            **{("MountainSort5", f"{s}/{r}"): True for s in (a, b) for r in ("001_synth", "002_synth")},
        }
        observed = latest_partition_events(instance, dg.AssetKey("sorting"), include_observations=True)
        failures = [plain_metadata(e) for _, e in observed.values() if plain_metadata(e)["errored"]]
        assert len(failures) == 4 and {f["failure_class"] for f in failures} == {"environment"}

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
        assert rows[cell][3:] == ["0", "", "", "", "0", "0", "2", ""]  # no scores, nothing to reproduce
    for cell in (("MountainSort5", "PAIRED_KAMPFF", "synth_a1_K6_C4"), ("MountainSort5", "SYNTH_MAGLAND", "synth_b1_K6_C4")):
        assert rows[cell][3] == "2" and float(rows[cell][4]) > 0.3 and rows[cell][9:] == ["0", "yes"]



def test_spikeforests_2020_spec_over_its_full_catalog(capsys):
    """The published table's spec and catalog, as committed: 6,894 jobs, two sorters that cannot run here."""
    argv = ["check-config", "-s", str(RESOURCES / "studysets_full.json"), "-l", str(RESOURCES / "spikeforest-2020-spec.yaml")]
    assert main(argv) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["num_study_sets"], config["num_studies"], config["num_recordings"]) == (16, 64, 888)
    assert config["num_sorting_jobs"] == 6894
    assert config["num_sorting_jobs_by_availability"] == {"local": 0, "container only": 5445, "cannot run here": 1449}
    assert {s["name"]: (s["availability"], s["num_recordings"]) for s in config["sorters"]} == {
        "HerdingSpikes2": ("container only", 328),
        "IronClust": ("container only", 888),
        "JRClust": ("cannot run here", 671),
        "Klusta": ("cannot run here", 778),
        "MountainSort4": ("container only", 888),
        "SpykingCircus": ("container only", 888),
        "Tridesclous": ("container only", 888),
        "Waveclus": ("container only", 211),
        "KiloSort": ("container only", 677),
        "KiloSort2": ("container only", 677),
    }
    assert main([*argv, "--strict"]) == 2
    assert "spike-sorters[2].params: sorter 'JRClust' cannot run here" in capsys.readouterr().err
