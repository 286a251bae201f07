"""The synthetic studyset: SpikeForest formats, deterministic, written atomically."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from sf_assets.core.manifest import parse_manifest
from sf_assets.stores.data import load_recording, load_sorting_object
from sf_assets.stores.kachery import KacheryStore
from sf_assets.stores.synthetic import DEFAULT_SORTERS, generate_studyset
from sf_assets_tests.conftest import SYNTHETIC_STUDYSET_ARGS

NAME = re.compile(r"[A-Za-z0-9_]+")


def test_manifest_parses_and_names_follow_the_pattern(synthetic_studyset):
    _, manifest_path, _, _ = synthetic_studyset
    manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
    assert [s.name for s in manifest.study_sets] == ["SYNTH_SET_A", "SYNTH_SET_B"]
    assert [r.label for r in manifest.recordings()] == [
        "synth_a1_K6_C4/001_synth",
        "synth_a1_K6_C4/002_synth",
        "synth_b1_K6_C4/001_synth",
        "synth_b1_K6_C4/002_synth",
    ]
    for study_set in manifest.study_sets:
        assert NAME.fullmatch(study_set.name)
        for study in study_set.studies:
            assert NAME.fullmatch(study.name)
            assert all(NAME.fullmatch(r.name) for r in study.recordings)


def test_manifest_entries_match_the_stored_data(synthetic_studyset):
    store, manifest_path, _, _ = synthetic_studyset
    manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
    for entry in manifest.recordings():
        assert not entry.legacy
        recording = load_recording(entry.recording_uri, store)
        truth = load_sorting_object(entry.sorting_true_uri, store, recording.get_sampling_frequency())
        assert recording.get_sampling_frequency() == entry.sample_rate_hz == 30000.0
        assert recording.get_num_channels() == entry.num_channels == 4
        assert recording.get_total_duration() == entry.duration_sec == 10.0
        assert truth.get_num_units() == entry.num_true_units == 6
        assert entry.spike_sign == -1
        assert store.load_json(entry.recording_uri)["params"]["spike_sign"] == -1


def test_raw_json_uses_the_current_schema(synthetic_studyset):
    store, manifest_path, _, _ = synthetic_studyset
    doc = json.loads(manifest_path.read_text())
    study_set = doc["StudySets"][0]
    assert list(study_set) == ["name", "info", "description", "studies", "self_reference"]
    assert list(study_set["studies"][0]) == ["name", "studySetName", "recordings"]
    assert list(study_set["studies"][0]["recordings"][0]) == [
        "name",
        "studyName",
        "studySetName",
        "sampleRateHz",
        "numChannels",
        "durationSec",
        "numTrueUnits",
        "spikeSign",
        "recordingUri",
        "sortingTrueUri",
    ]
    # self_reference is the set as stored, without the self_reference key.
    stored_set = store.load_json(study_set["self_reference"])
    assert stored_set == {k: v for k, v in study_set.items() if k != "self_reference"}


def test_spec_uses_hyphen_spelling_and_names_the_stored_manifest(synthetic_studyset):
    store, manifest_path, spec_path, _ = synthetic_studyset
    spec = yaml.safe_load(spec_path.read_text())
    assert list(spec) == ["studysets", "studyset-names", "spike-sorters"]
    assert spec["studyset-names"] == ["SYNTH_SET_A", "SYNTH_SET_B"]
    assert [s["name"] for s in spec["spike-sorters"]] == list(DEFAULT_SORTERS)
    assert all(s["params"] == {} and s["studysets"] == ["SYNTH_SET_A", "SYNTH_SET_B"] for s in spec["spike-sorters"])
    assert store.load_bytes(spec["studysets"]) == manifest_path.read_bytes()


def test_same_seed_gives_byte_identical_files(synthetic_studyset, tmp_path):
    _, manifest_path, spec_path, _ = synthetic_studyset
    again = generate_studyset(KacheryStore(tmp_path / "kachery"), tmp_path / "out", **SYNTHETIC_STUDYSET_ARGS)
    assert again.manifest_path.read_bytes() == manifest_path.read_bytes()
    assert again.spec_path.read_bytes() == spec_path.read_bytes()


def test_another_seed_gives_other_recordings(tmp_path):
    store = KacheryStore(tmp_path / "kachery")
    args = dict(num_study_sets=1, studies_per_set=1, recordings_per_study=1, num_channels=(4,), duration_s=1.0)
    first = generate_studyset(store, tmp_path / "a", seed=1, **args)
    second = generate_studyset(store, tmp_path / "b", seed=2, **args)
    uris = [parse_manifest(g.manifest_path.read_bytes(), "m").recordings()[0].recording_uri for g in (first, second)]
    assert uris[0] != uris[1]


def test_default_shape_alternates_channel_counts(tmp_path):
    generated = generate_studyset(KacheryStore(tmp_path / "kachery"), tmp_path / "out", duration_s=2.0)
    manifest = parse_manifest(generated.manifest_path.read_bytes(), "studysets.json")
    assert [s.name for s in manifest.studies()] == [
        "synth_a1_K6_C4",
        "synth_a2_K12_C8",
        "synth_b1_K6_C4",
        "synth_b2_K12_C8",
    ]
    assert len(manifest.recordings()) == 8
    assert {r.num_channels for r in manifest.recordings()} == {4, 8}
    assert generated.manifest_uri.endswith("/studysets.json")


def test_a_failure_leaves_the_previous_files_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "studysets.json").write_text("previous manifest")
    with pytest.raises(yaml.representer.RepresenterError):
        # A sorter name YAML cannot write: fails after all data are generated.
        generate_studyset(
            KacheryStore(tmp_path / "kachery"),
            out,
            num_study_sets=1,
            studies_per_set=1,
            recordings_per_study=1,
            duration_s=1.0,
            sorters=(object(),),
        )
    assert (out / "studysets.json").read_text() == "previous manifest"
    assert sorted(p.name for p in out.iterdir()) == ["studysets.json"]


@pytest.mark.parametrize(
    "bad",
    [
        {"num_study_sets": 0},
        {"recordings_per_study": 0},
        {"duration_s": 0.0},
        {"num_channels": ()},
        {"num_channels": (4, 0)},
        {"num_units": 0},
        {"sorters": ()},
    ],
)
def test_invalid_arguments(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        generate_studyset(KacheryStore(tmp_path / "kachery"), tmp_path / "out", **bad)
    assert not (tmp_path / "out").exists()
