"""The studysets manifest: the shipped example, a real-size one, the pre-2021 schema, and rejections."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sf_assets.core.errors import ManifestError
from sf_assets.core.manifest import Manifest, Recording, parse_manifest

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
TINY = json.loads((RESOURCES / "studysets_tiny.json").read_text())
REC = "StudySets[0].studies[0].recordings[1]"


def _hash(n: int) -> str:
    return f"{n:040x}"


def synthetic_manifest(num_sets: int, studies_per_set: int, num_recordings: int) -> dict:
    """A current-schema manifest with recordings spread evenly over the studies."""
    num_studies = num_sets * studies_per_set
    study_sets = []
    counter = 0
    for i in range(num_sets):
        set_name = f"SET_{i:02d}"
        studies = []
        for j in range(studies_per_set):
            study_index = i * studies_per_set + j
            study_name = f"study_{study_index:02d}"
            count = num_recordings // num_studies + (study_index < num_recordings % num_studies)
            recordings = []
            for k in range(count):
                counter += 1
                recordings.append(
                    {
                        "name": f"rec_{k:03d}",
                        "studyName": study_name,
                        "studySetName": set_name,
                        "sampleRateHz": 30000.0,
                        "numChannels": 1 + k % 64,
                        "durationSec": 600.0,
                        "numTrueUnits": 10,
                        "spikeSign": -1,
                        "recordingUri": f"sha1://{_hash(2 * counter)}/rec_{k:03d}.json",
                        "sortingTrueUri": f"sha1://{_hash(2 * counter + 1)}/rec_{k:03d}.firings_true.json",
                    }
                )
            studies.append({"name": study_name, "studySetName": set_name, "recordings": recordings})
        study_sets.append(
            {"name": set_name, "info": {"label": set_name}, "description": "", "studies": studies, "self_reference": None}
        )
    return {"StudySets": study_sets}


def _parse(doc) -> Manifest:
    raw = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
    return parse_manifest(raw, "m.json")


def _error(doc) -> str:
    with pytest.raises(ManifestError) as info:
        _parse(doc)
    message = str(info.value)
    assert message.startswith("m.json: ")
    assert "\n" not in message
    return message


def _tiny_with(path: str, value) -> dict:
    """The tiny manifest with the member at dotted ``path`` set (``DELETE`` removes it)."""
    doc = copy.deepcopy(TINY)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


DELETE = object()
R = "StudySets.0.studies.0.recordings.1"


def test_shipped_manifest_parses():
    manifest = parse_manifest((RESOURCES / "studysets_tiny.json").read_bytes(), "studysets_tiny.json")
    assert manifest.source == "studysets_tiny.json"
    assert [s.name for s in manifest.study_sets] == ["PAIRED_KAMPFF", "SYNTH_MAGLAND"]
    assert [s.name for s in manifest.studies()] == ["paired_kampff", "synth_magland_noise20_K20_C8"]
    assert [r.label for r in manifest.recordings()] == [
        "paired_kampff/2014_11_25_Pair_3_0",
        "paired_kampff/2015_09_03_Pair_9_0A",
        "synth_magland_noise20_K20_C8/001_synth",
        "synth_magland_noise20_K20_C8/002_synth",
    ]
    assert manifest.recordings()[0] == Recording(
        name="2014_11_25_Pair_3_0",
        study_name="paired_kampff",
        study_set_name="PAIRED_KAMPFF",
        sample_rate_hz=30000.0,
        num_channels=32,
        duration_sec=557.218,
        num_true_units=1,
        spike_sign=-1,
        recording_uri="sha1://a205f87cef8b7f86df7a09cddbc79a1fbe5df60f/2014_11_25_Pair_3_0.json",
        sorting_true_uri="sha1://c656add63d85a17840980084a1ff1cdc662a2cd5/2014_11_25_Pair_3_0.firings_true.json",
        legacy=False,
    )
    kampff = manifest.study_set("PAIRED_KAMPFF")
    assert kampff.info["organism"] == "mouse"
    assert kampff.description.startswith("# PAIRED_KAMPFF")
    assert kampff.self_reference == "sha1://071ddecf7b0ec3e18cd2b982a1b015aa1acd2cf9/PAIRED_KAMPFF.json"
    assert manifest.recording_by_label("synth_magland_noise20_K20_C8/002_synth").num_true_units == 20


def test_unknown_study_set_and_label_name_the_manifest():
    manifest = _parse(TINY)
    with pytest.raises(ManifestError, match="m.json: no study set 'NOPE'; it has: PAIRED_KAMPFF, SYNTH_MAGLAND"):
        manifest.study_set("NOPE")
    with pytest.raises(ManifestError, match="m.json: no recording labelled 'paired_kampff/nope'"):
        manifest.recording_by_label("paired_kampff/nope")


def test_real_size_manifest_parses():
    doc = synthetic_manifest(num_sets=16, studies_per_set=4, num_recordings=888)
    manifest = _parse(doc)
    assert len(manifest.study_sets) == 16
    assert len(manifest.studies()) == 64
    assert len(manifest.recordings()) == 888
    assert len({r.label for r in manifest.recordings()}) == 888
    last = manifest.recordings()[-1]
    assert manifest.recording_by_label(last.label) is last


def test_bom_and_str_input_are_accepted():
    text = json.dumps(TINY)
    assert _parse(b"\xef\xbb\xbf" + text.encode()).recordings() == _parse(text).recordings()


def test_extra_keys_are_ignored_and_metadata_defaults():
    doc = _tiny_with(R + ".comment", "kept out")
    for key in ("info", "description", "self_reference"):
        doc = copy.deepcopy(doc)
        del doc["StudySets"][1][key]
    study_set = _parse(doc).study_sets[1]
    assert (study_set.info, study_set.description, study_set.self_reference) == ({}, "", None)


LEGACY = {
    "name": "PAIRED_KAMPFF",
    "studies": [
        {
            "name": "paired_kampff",
            "recordings": [
                {
                    "name": "2014_11_25_Pair_3_0",
                    "studyName": "paired_kampff",
                    "directory": f"sha1dir://{_hash(1)}.paired_kampff/2014_11_25_Pair_3_0",
                    "firingsTrue": f"sha1dir://{_hash(1)}.paired_kampff/2014_11_25_Pair_3_0/firings_true.mda",
                },
                {
                    "name": "2015_09_03_Pair_9_0A",
                    "studyName": "paired_kampff",
                    "studySetName": "PAIRED_KAMPFF",
                    "directory": f"sha1dir://{_hash(2)}.paired_kampff/2015_09_03_Pair_9_0A",
                    "firingsTrue": f"sha1dir://{_hash(2)}.paired_kampff/2015_09_03_Pair_9_0A/firings_true.mda",
                    "sampleRateHz": 30000,
                    "numChannels": 32,
                    "durationSec": 593.248,
                    "numTrueUnits": 1,
                    "spikeSign": 1,
                },
            ],
        }
    ],
}


def test_legacy_manifest_parses_with_defaults():
    manifest = _parse(LEGACY)
    first, second = manifest.recordings()
    assert first == Recording(
        name="2014_11_25_Pair_3_0",
        study_name="paired_kampff",
        study_set_name="PAIRED_KAMPFF",
        sample_rate_hz=0.0,
        num_channels=0,
        duration_sec=0.0,
        num_true_units=0,
        spike_sign=-1,
        recording_uri=LEGACY["studies"][0]["recordings"][0]["directory"],
        sorting_true_uri=LEGACY["studies"][0]["recordings"][0]["firingsTrue"],
        legacy=True,
    )
    assert (second.sample_rate_hz, second.num_channels, second.duration_sec, second.num_true_units, second.spike_sign) == (
        30000.0,
        32,
        593.248,
        1,
        1,
    )
    assert second.legacy
    assert manifest.study_sets[0].studies[0].study_set_name == "PAIRED_KAMPFF"


def test_legacy_manifest_rejections_use_paths_without_the_wrapper():
    doc = copy.deepcopy(LEGACY)
    del doc["studies"][0]["recordings"][0]["studyName"]
    assert _error(doc) == "m.json: studies[0].recordings[0].studyName: missing key; expected a string"
    doc = copy.deepcopy(LEGACY)
    doc["studies"][0]["recordings"][1]["numChannels"] = True
    assert _error(doc) == (
        "m.json: studies[0].recordings[1].numChannels: expected an integer from 1 to 100000, got true (a boolean)"
    )
    doc = copy.deepcopy(LEGACY)
    doc["studies"][0]["recordings"][0]["directory"] = "http://example.org/rec"
    assert _error(doc) == (
        "m.json: studies[0].recordings[0].directory: expected a sha1dir:// URI or a sha1:// URI, "
        'got "http://example.org/rec" (a string)'
    )
    doc = copy.deepcopy(LEGACY)
    doc["studies"][0]["studySetName"] = "OTHER"
    assert _error(doc) == "m.json: studies[0].studySetName: expected 'PAIRED_KAMPFF' (the name of the enclosing study set), got \"OTHER\" (a string)"


def test_current_schema_requires_recording_uri_even_if_directory_is_given():
    doc = _tiny_with(R + ".recordingUri", DELETE)
    doc["StudySets"][0]["studies"][0]["recordings"][1]["directory"] = f"sha1dir://{_hash(1)}.x/y"
    assert _error(doc) == f"m.json: {REC}.recordingUri: missing key; expected a string"


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (R + ".numChannels", DELETE, f"{REC}.numChannels: missing key; expected an integer"),
        (R + ".numChannels", True, f"{REC}.numChannels: expected an integer from 1 to 100000, got true (a boolean)"),
        (R + ".numChannels", "32", f'{REC}.numChannels: expected an integer from 1 to 100000, got "32" (a string)'),
        (R + ".numChannels", 32.0, f"{REC}.numChannels: expected an integer from 1 to 100000, got 32.0 (a number)"),
        (R + ".numChannels", 0, f"{REC}.numChannels: expected an integer from 1 to 100000, got 0 (an integer)"),
        (
            R + ".numChannels",
            10**12,
            f"{REC}.numChannels: expected an integer from 1 to 100000, got 1000000000000 (an integer)",
        ),
        (R + ".numTrueUnits", -1, f"{REC}.numTrueUnits: expected an integer from 0 to 1000000, got -1 (an integer)"),
        (R + ".sampleRateHz", False, f"{REC}.sampleRateHz: expected a number above 0 and at most 1e+07, got false (a boolean)"),
        (R + ".sampleRateHz", 0, f"{REC}.sampleRateHz: expected a number above 0 and at most 1e+07, got 0 (an integer)"),
        (R + ".durationSec", None, f"{REC}.durationSec: expected a number above 0 and at most 1e+07, got null"),
        (R + ".durationSec", [600], f"{REC}.durationSec: expected a number above 0 and at most 1e+07, got a list"),
        (R + ".spikeSign", 0, f"{REC}.spikeSign: expected -1 or 1, got 0 (an integer)"),
        (R + ".spikeSign", -2, f"{REC}.spikeSign: expected an integer from -1 to 1, got -2 (an integer)"),
        (R + ".name", 7, f"{REC}.name: expected a string, got 7 (an integer)"),
        (
            R + ".name",
            "../../etc",
            f"{REC}.name: expected a non-empty name without '/' or control characters, other than '.' and '..', "
            "got \"../../etc\" (a string), which contains '/'",
        ),
        (R + ".name", "..", f"{REC}.name: expected a non-empty name without '/' or control characters, other than '.' and '..', got \"..\" (a string), which is '..'"),
        (R + ".name", "", f"{REC}.name: expected a non-empty name"),
        (R + ".name", "a\u0007b", f"{REC}.name: expected a non-empty name"),
        (R + ".name", "x" * 5000, f"{REC}.name: expected a non-empty name"),
        ("StudySets.0.studies.0.name", "paired/kampff", "StudySets[0].studies[0].name: expected a non-empty name"),
        ("StudySets.1.name", ".", "StudySets[1].name: expected a non-empty name"),
        (
            R + ".studyName",
            "other_study",
            f"{REC}.studyName: expected 'paired_kampff' (the name of the enclosing study), got \"other_study\" (a string)",
        ),
        (
            R + ".studySetName",
            "SYNTH_MAGLAND",
            f"{REC}.studySetName: expected 'PAIRED_KAMPFF' (the name of the enclosing study set), got \"SYNTH_MAGLAND\" (a string)",
        ),
        (R + ".studySetName", DELETE, f"{REC}.studySetName: missing key; expected a string"),
        (
            "StudySets.0.studies.0.studySetName",
            "SYNTH_MAGLAND",
            "StudySets[0].studies[0].studySetName: expected 'PAIRED_KAMPFF' (the name of the enclosing study set)",
        ),
        (
            R + ".recordingUri",
            "sha1://nothex/x.json",
            f"{REC}.recordingUri: expected 40 lowercase hex digits after sha1:// (in 'sha1://nothex/x.json')",
        ),
        (R + ".recordingUri", "http://example.org/r.json", f"{REC}.recordingUri: expected a sha1:// URI, got \"http://example.org/r.json\""),
        (R + ".recordingUri", "rec.json", f"{REC}.recordingUri: expected a sha1:// URI, got \"rec.json\" (a string)"),
        (R + ".sortingTrueUri", "", f'{REC}.sortingTrueUri: expected a sha1:// URI, got "" (a string)'),
        (
            R + ".sortingTrueUri",
            f"sha1dir://{_hash(3)}.d/firings_true.mda",
            f"{REC}.sortingTrueUri: expected a sha1:// URI, got \"sha1dir://",
        ),
        ("StudySets.0.self_reference", "nope://x", 'StudySets[0].self_reference: expected a sha1:// URI, got "nope://x" (a string)'),
        ("StudySets.0.info", [], "StudySets[0].info: expected an object, got a list"),
        ("StudySets.0.description", 3, "StudySets[0].description: expected a string, got 3 (an integer)"),
        ("StudySets.0.studies", {}, "StudySets[0].studies: expected a list, got an object"),
        ("StudySets.0.studies.0.recordings", DELETE, "StudySets[0].studies[0].recordings: missing key; expected a list"),
        ("StudySets.0.studies.0.recordings.0", "rec", "StudySets[0].studies[0].recordings[0]: expected an object, got \"rec\" (a string)"),
        ("StudySets", {"a": 1}, "StudySets: expected a list, got an object"),
    ],
)
def test_rejections_name_the_path_and_the_expectation(path, value, expected):
    assert _error(_tiny_with(path, value)).startswith(f"m.json: {expected}")


def test_duplicate_recording_names_within_a_study():
    doc = _tiny_with(R + ".name", "2014_11_25_Pair_3_0")
    assert _error(doc) == (
        f"m.json: {REC}.name: duplicate recording name '2014_11_25_Pair_3_0' "
        "(first at StudySets[0].studies[0].recordings[0].name); expected unique names"
    )


def test_same_recording_name_in_two_studies_is_fine():
    doc = _tiny_with("StudySets.1.studies.0.recordings.0.name", "2014_11_25_Pair_3_0")
    assert len(_parse(doc).recordings()) == 4


def test_duplicate_study_names_across_the_manifest():
    doc = copy.deepcopy(TINY)
    study = doc["StudySets"][1]["studies"][0]
    study["name"] = "paired_kampff"
    for rec in study["recordings"]:
        rec["studyName"] = "paired_kampff"
    assert _error(doc) == (
        "m.json: StudySets[1].studies[0].name: duplicate study name 'paired_kampff' "
        "(first at StudySets[0].studies[0].name); expected unique names"
    )


def test_duplicate_study_set_names():
    doc = copy.deepcopy(TINY)
    doc["StudySets"].append(copy.deepcopy(doc["StudySets"][0]))
    assert _error(doc) == (
        "m.json: StudySets[2].name: duplicate study set name 'PAIRED_KAMPFF' "
        "(first at StudySets[0].name); expected unique names"
    )


def test_invalid_json_names_line_and_column():
    assert _error('{"StudySets": [\n  {"name": "A",}\n]}') == (
        "m.json: invalid JSON at line 2, column 16: Expecting property name enclosed in double quotes"
    )


def test_non_utf8_bytes():
    assert _error(b'{"StudySets": ["\xff"]}') == "m.json: not UTF-8 text: byte 0xff at offset 16"


def test_top_level_must_be_a_manifest_object():
    assert _error("[]") == "m.json: top level: expected an object, got a list"
    assert _error("{}") == (
        "m.json: top level: expected an object with key 'StudySets' (or, in a pre-2021 manifest, 'name' and 'studies')"
    )


def test_duplicate_json_keys_are_refused_where_they_occur():
    text = json.dumps(TINY).replace('"numChannels": 32,', '"numChannels": 32, "numChannels": 4,', 1)
    assert _error(text) == "m.json: StudySets[0].studies[0].recordings[0]: key 'numChannels' appears more than once"


def test_non_finite_numbers_are_refused():
    text = json.dumps(TINY).replace('"durationSec": 557.218', '"durationSec": NaN', 1)
    assert _error(text) == (
        "m.json: StudySets[0].studies[0].recordings[0].durationSec: "
        "expected a number above 0 and at most 1e+07, got nan (not a finite number)"
    )
    text = json.dumps(TINY).replace('"durationSec": 557.218', '"durationSec": 1e400', 1)
    assert "got inf (not a finite number)" in _error(text)


def test_numbers_too_long_to_read_and_deep_nesting_are_invalid_json():
    assert _error('{"StudySets": ' + "9" * 5000 + "}").startswith(
        "m.json: invalid JSON: Exceeds the limit (4300 digits) for integer string conversion"
    )
    assert _error("[" * 100_000) == "m.json: invalid JSON: nested too deeply"
