"""spec.yaml: both spellings, every rejection, cross-validation and the job list."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sf_assets.core.errors import SpecError, UnknownSorterError
from sf_assets.core.manifest import parse_manifest
from sf_assets.core.sorter_catalog import known_sorter_names, resolve_sorter
from sf_assets.core.spec import SorterSpec, Spec, parse_spec, sorting_jobs, validate_spec

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MANIFEST = parse_manifest((RESOURCES / "studysets_tiny.json").read_bytes(), "studysets_tiny.json")
LOCAL_SORTER = "MountainSort5"

SPEC = f"""\
studysets: studysets_tiny.json
studyset-names: [PAIRED_KAMPFF, SYNTH_MAGLAND]
spike-sorters:
  - name: {LOCAL_SORTER}
    params: {{}}
    studysets: [SYNTH_MAGLAND, PAIRED_KAMPFF]
  - name: MountainSort4
    params:
    studysets: [PAIRED_KAMPFF]
"""


def _error(text: str | bytes, error=SpecError) -> str:
    with pytest.raises(error) as info:
        parse_spec(text, "s.yaml")
    message = str(info.value)
    assert message.startswith("s.yaml: ")
    assert "\n" not in message
    return message


def _invalid(spec_text: str, error=SpecError) -> str:
    spec = parse_spec(spec_text, "s.yaml")
    with pytest.raises(error) as info:
        validate_spec(spec, MANIFEST)
    message = str(info.value)
    assert message.startswith("s.yaml: ")
    assert "\n" not in message
    return message


def test_hyphen_spelling():
    spec = parse_spec(SPEC, "s.yaml")
    assert spec == Spec(
        source="s.yaml",
        studysets_uri="studysets_tiny.json",
        studyset_names=("PAIRED_KAMPFF", "SYNTH_MAGLAND"),
        sorters=(
            # the project's pinned seed (MountainSort5's only seed parameter)
            SorterSpec(LOCAL_SORTER, {"whitening_seed": 0}, ("SYNTH_MAGLAND", "PAIRED_KAMPFF")),
            SorterSpec("MountainSort4", {}, ("PAIRED_KAMPFF",)),
        ),
    )
    validate_spec(spec, MANIFEST)


def test_shipped_small_spec_uses_underscores_and_parses():
    spec = parse_spec((RESOURCES / "small-spec.yaml").read_bytes(), "small-spec.yaml")
    assert spec.studysets_uri == "sha1://54d9ed77a2aa788b9ab67977476c2b51adb8a2c5/studysets.json"
    assert spec.studyset_names == ("PAIRED_KAMPFF",)
    assert [s.name for s in spec.sorters] == ["SpykingCircus", "MountainSort4", "Kilosort2", "Kilosort3"]
    assert all(s.params == {} and s.studysets == ("PAIRED_KAMPFF",) for s in spec.sorters)
    validate_spec(spec, MANIFEST)


def test_shipped_example_spec_validates_against_the_shipped_manifest():
    spec = parse_spec((RESOURCES / "example-spec.yaml").read_bytes(), "example-spec.yaml")
    assert spec.studysets_uri == "studysets_tiny.json"
    validate_spec(spec, MANIFEST)
    assert all(resolve_sorter(s.name).runs_locally for s in spec.sorters)


def test_sorting_jobs_follow_spec_then_manifest_order():
    spec = parse_spec(SPEC, "s.yaml")
    jobs = [(sorter.name, rec.label) for sorter, rec in sorting_jobs(spec, MANIFEST)]
    assert jobs == [
        (LOCAL_SORTER, "paired_kampff/2014_11_25_Pair_3_0"),
        (LOCAL_SORTER, "paired_kampff/2015_09_03_Pair_9_0A"),
        (LOCAL_SORTER, "synth_magland_noise20_K20_C8/001_synth"),
        (LOCAL_SORTER, "synth_magland_noise20_K20_C8/002_synth"),
        ("MountainSort4", "paired_kampff/2014_11_25_Pair_3_0"),
        ("MountainSort4", "paired_kampff/2015_09_03_Pair_9_0A"),
    ]


def test_studysets_key_is_optional():
    spec = parse_spec(SPEC.replace("studysets: studysets_tiny.json\n", ""), "s.yaml")
    assert spec.studysets_uri is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "s.yaml: top level: expected a mapping with keys studysets, studyset-names, spike-sorters; the file is empty"),
        ("- a\n- b\n", "s.yaml: top level: expected an object, got a list"),
        ("studyset-names: [A]\nspike-sorters: [}\n", "s.yaml: invalid YAML at line 2, column 17: "),
        (b"studyset-names: [\xff]\n", "s.yaml: not UTF-8 text: byte 0xff at offset 17"),
        (
            "x: !!python/object/apply:os.system ['true']\n",
            "s.yaml: invalid YAML at line 1, column 4: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'",
        ),
        (
            "studyset-names: &a [A]\nspike-sorters: *a\n",
            "s.yaml: invalid YAML at line 2, column 16: YAML aliases (*name) are not accepted in a spec",
        ),
        ("studyset-names: [A]\nstudyset-names: [B]\n", "s.yaml: invalid YAML at line 2, column 1: key 'studyset-names' appears twice"),
        ("a: 1\n---\nb: 2\n", "s.yaml: invalid YAML at line 2, column 1: expected a single document in the stream; but found another document"),
        (
            "studyset-names: [A]\nstudyset_names: [A]\n",
            "s.yaml: top level: key 'studyset-names' is given twice, as 'studyset-names' and 'studyset_names'; keep one",
        ),
        (
            "studysets: x.json\nstudy-sets: [A]\n",
            "s.yaml: study-sets: unknown key; expected one of: studysets, studyset-names, spike-sorters ('-' may be written '_')",
        ),
        ("1: x\n", "s.yaml: top level: expected string keys, got key 1 (an integer)"),
        ("studysets: 3\n", "s.yaml: studysets: expected a string, got 3 (an integer)"),
        ("studysets: sha1://nothex/s.json\n", "s.yaml: studysets: expected 40 lowercase hex digits after sha1://"),
        ("studysets: http://example.org/s.json\n", "s.yaml: studysets: expected a sha1:// or sha1dir:// URI or a local path"),
        ("spike-sorters: []\n", "s.yaml: studyset-names: missing key; expected the list of study sets this spec uses"),
        ("studyset-names: PAIRED_KAMPFF\n", 's.yaml: studyset-names: expected a list, got "PAIRED_KAMPFF" (a string)'),
        ("studyset-names: []\n", "s.yaml: studyset-names: expected a non-empty list of study set names, got an empty list"),
        ("studyset-names: [A, 3]\n", "s.yaml: studyset-names[1]: expected a string, got 3 (an integer)"),
        ("studyset-names: [A, A]\n", "s.yaml: studyset-names[1]: 'A' is listed twice"),
        ("studyset-names: [A]\n", "s.yaml: spike-sorters: missing key; expected a list of {name, params, studysets}"),
        ("studyset-names: [A]\nspike_sorters: []\n", "s.yaml: spike_sorters: expected at least one sorter, got an empty list"),
        ("studyset-names: [A]\nspike-sorters: {name: X}\n", "s.yaml: spike-sorters: expected a list, got an object"),
        ("studyset-names: [A]\nspike-sorters: [X]\n", 's.yaml: spike-sorters[0]: expected an object, got "X" (a string)'),
        (
            "studyset-names: [A]\nspike-sorters: [{name: X, studysets: [A], param: {}}]\n",
            "s.yaml: spike-sorters[0].param: unknown key; expected one of: name, params, studysets",
        ),
        ("studyset-names: [A]\nspike-sorters: [{studysets: [A]}]\n", "s.yaml: spike-sorters[0].name: missing key; expected the sorter's name"),
        ("studyset-names: [A]\nspike-sorters: [{name: 3, studysets: [A]}]\n", "s.yaml: spike-sorters[0].name: expected a string, got 3 (an integer)"),
        ("studyset-names: [A]\nspike-sorters: [{name: '', studysets: [A]}]\n", 's.yaml: spike-sorters[0].name: expected a sorter name, got "" (a string)'),
        ("studyset-names: [A]\nspike-sorters: [{name: X}]\n", "s.yaml: spike-sorters[0].studysets: missing key; expected a list"),
        (
            "studyset-names: [A]\nspike-sorters: [{name: X, studysets: []}]\n",
            "s.yaml: spike-sorters[0].studysets: expected at least one study set for this sorter, got an empty list",
        ),
        (
            "studyset-names: [A]\nspike-sorters: [{name: X, studysets: [A, B]}]\n",
            "s.yaml: spike-sorters[0].studysets[1]: study set 'B' is not declared in studyset-names (A)",
        ),
        (
            "studyset-names: [A]\nspike-sorters: [{name: X, studysets: [A, A]}]\n",
            "s.yaml: spike-sorters[0].studysets[1]: 'A' is listed twice",
        ),
        (
            "studyset-names: [A]\nspike-sorters: [{name: X, params: [1], studysets: [A]}]\n",
            "s.yaml: spike-sorters[0].params: expected an object, got a list",
        ),
        (
            "studyset-names: [A]\nspike-sorters: [{name: X, params: {when: 2021-01-01}, studysets: [A]}]\n",
            "s.yaml: spike-sorters[0].params.when: expected a string, number, boolean, null, list or mapping, got a date",
        ),
        (
            "studyset-names: [A]\nspike-sorters: [{name: X, params: {t: .nan}, studysets: [A]}]\n",
            "s.yaml: spike-sorters[0].params.t: expected a finite number, got nan (not a finite number)",
        ),
        (
            "studyset-names: [A]\nspike-sorters: [{name: X, studysets: [A]}, {name: X, studysets: [A]}]\n",
            "s.yaml: spike-sorters[1].name: sorter 'X' is listed twice (also at spike-sorters[0]); expected each sorter once",
        ),
        ("studyset-names: [" * 10_000, "s.yaml: invalid YAML"),
        ("studyset-names: [" + "9" * 5000 + "]\n", "s.yaml: invalid YAML: Exceeds the limit (4300 digits)"),
    ],
)
def test_parse_rejections(text, expected):
    assert _error(text).startswith(expected)


def test_declared_study_set_absent_from_the_manifest():
    assert _invalid(SPEC.replace("[PAIRED_KAMPFF, SYNTH_MAGLAND]", "[PAIRED_KAMPFF, SYNTH_MAGLAND, HYBRID_JANELIA]")) == (
        "s.yaml: studyset-names[2]: study set 'HYBRID_JANELIA' is not in the manifest studysets_tiny.json "
        "(it has: PAIRED_KAMPFF, SYNTH_MAGLAND)"
    )


def test_unknown_sorter_lists_the_known_names():
    message = _invalid(SPEC.replace("name: MountainSort4", "name: MountainSort9"), UnknownSorterError)
    assert message.startswith("s.yaml: spike-sorters[1].name: ")
    assert "MountainSort9" in message
    for name in known_sorter_names():
        assert name in message


def test_sorter_named_twice_through_an_alias():
    alias = next(name for name in known_sorter_names() if resolve_sorter(name).name != name)
    entry = resolve_sorter(alias)
    text = SPEC.replace(f"name: {LOCAL_SORTER}", f"name: {entry.name}").replace("name: MountainSort4", f"name: {alias}")
    assert _invalid(text) == (
        f"s.yaml: spike-sorters[1].name: {alias!r} is the sorter {entry.name!r}, already listed as "
        f"{entry.name!r}; expected each sorter once"
    )


def test_unknown_params_are_refused_by_the_catalog_with_the_spec_path():
    message = _invalid(SPEC.replace("params: {}", "params: {no_such_param: 1}"))
    assert message.startswith("s.yaml: spike-sorters[0].params")
    assert "no_such_param" in message


def test_known_params_pass():
    validate_spec(parse_spec(SPEC.replace("params: {}", "params: {detect_threshold: 6}"), "s.yaml"), MANIFEST)


@pytest.mark.parametrize(
    "params, expected",
    [
        # mountainsort5 0.105.3 defaults: detect_threshold 5.5, detect_sign -1, filter True, whiten True.
        ('{detect_threshold: "5"}', 'params.detect_threshold: expected a number (the default is 5.5 (a number)), '
         'got "5" (a string)'),
        ("{filter: 1}", "params.filter: expected a boolean (the default is true (a boolean)), got 1 (an integer)"),
        ("{detect_sign: true}", "params.detect_sign: expected a number (the default is -1 (an integer)), "
         "got true (a boolean)"),
        ("{whiten: [true]}", "params.whiten: expected a boolean (the default is true (a boolean)), got a list"),
    ],
)
def test_param_values_must_have_their_defaults_type(params, expected):
    message = _invalid(SPEC.replace("params: {}", f"params: {params}"))
    assert message == f"s.yaml: spike-sorters[0].{expected}"


def test_whole_numbers_and_fractions_are_both_numbers():
    # spikeinterface writes detect_sign -1 (an int); 300 for a float default is as good as 300.0.
    params = "{detect_sign: 1, detect_threshold: 6, scheme1_detect_channel_radius: 150.5}"
    text = SPEC.replace("params: {}", f"params: {params}")
    validate_spec(parse_spec(text, "s.yaml"), MANIFEST)


def test_a_huge_param_value_is_refused_before_anything_stores_it():
    from sf_assets.core.sorter_catalog import MAX_PARAM_VALUE_BYTES

    huge = "x" * (10 * 1024 * 1024)  # the 10 MB string that had grown into 0.5 GB of Dagster storage
    message = _invalid(SPEC.replace("params: {}", f"params: {{scheme: {huge}}}"))
    assert message == (
        f"s.yaml: spike-sorters[0].params.scheme: a value of {len(huge) + 2} bytes as JSON; "
        f"expected at most {MAX_PARAM_VALUE_BYTES}"
    )


def test_params_of_one_sorter_are_capped_as_a_whole():
    from sf_assets.core.sorter_catalog import MAX_PARAM_VALUE_BYTES, MAX_PARAMS_BYTES

    # Five values, each just under the cap, over the whole cap together (free-form nested keys pass).
    chunk = "y" * (MAX_PARAM_VALUE_BYTES - 100)
    names = ("job_kwargs", "general", "clustering", "matching", "merging")
    params = "{" + ", ".join(f"{name}: {{free: {chunk}}}" for name in names) + "}"
    text = SPEC.replace(f"name: {LOCAL_SORTER}", "name: SpykingCircus2").replace("params: {}", f"params: {params}")
    message = _invalid(text)
    assert message.startswith("s.yaml: spike-sorters[0].params: ")
    assert message.endswith(f"bytes as JSON; expected at most {MAX_PARAMS_BYTES} for one sorter's params")


def test_real_size_manifest_with_a_spec():
    from sf_assets_tests.test_manifest import synthetic_manifest

    manifest = parse_manifest(json.dumps(synthetic_manifest(16, 4, 888)), "big.json")
    names = [s.name for s in manifest.study_sets]
    text = (
        f"studyset-names: {json.dumps(names)}\n"
        f"spike-sorters:\n  - name: {LOCAL_SORTER}\n    studysets: {json.dumps(names)}\n"
        f"  - name: MountainSort4\n    studysets: {json.dumps(names[:2])}\n"
    )
    spec = parse_spec(text, "s.yaml")
    validate_spec(spec, manifest)
    jobs = sorting_jobs(spec, manifest)
    first_two = sum(len(s.recordings) for s in manifest.studies() if s.study_set_name in names[:2])
    assert len(jobs) == 888 + first_two


def test_a_seed_the_spec_sets_wins_over_the_pinned_one():
    spec = parse_spec(SPEC.replace("params: {}", "params: {whitening_seed: 7, detect_threshold: 6}"), "s.yaml")
    assert spec.sorters[0].params == {"whitening_seed": 7, "detect_threshold": 6}
    validate_spec(spec, MANIFEST)


def test_a_sorter_that_cannot_run_here_validates_unless_strict():
    text = SPEC.replace("name: MountainSort4", "name: JRClust").replace(
        "    params:\n    studysets: [PAIRED_KAMPFF]", "    params: {anything: 1}\n    studysets: [PAIRED_KAMPFF]"
    )
    spec = parse_spec(text, "s.yaml")
    validate_spec(spec, MANIFEST)
    assert [(s.name, r.name) for s, r in sorting_jobs(spec, MANIFEST) if s.name == "JRClust"] == [
        ("JRClust", "2014_11_25_Pair_3_0"),
        ("JRClust", "2015_09_03_Pair_9_0A"),
    ]
    with pytest.raises(SpecError) as info:
        validate_spec(spec, MANIFEST, strict=True)
    assert str(info.value).startswith(
        "s.yaml: spike-sorters[1].params: sorter 'JRClust' cannot run here: spikeinterface 0.105.3 cannot run it"
    )
    # typos stay errors, strict or not
    assert "JRClust" in _invalid(text.replace("name: JRClust", "name: JRClusst"), UnknownSorterError)
