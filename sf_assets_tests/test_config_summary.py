"""The resolved configuration: counts within the declared study sets, merged params per sorter."""
from __future__ import annotations

import json
from pathlib import Path

from sf_assets.core.config_summary import config_summary
from sf_assets.core.manifest import parse_manifest
from sf_assets.core.sorter_catalog import default_params, known_sorter_names, merge_params, resolve_sorter
from sf_assets.core.spec import parse_spec, validate_spec
from sf_assets_tests.spec_values import changed_value

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
MANIFEST = parse_manifest((RESOURCES / "studysets_tiny.json").read_bytes(), "studysets_tiny.json")


def _summary(text: str) -> dict:
    spec = parse_spec(text, "s.yaml")
    validate_spec(spec, MANIFEST)
    return config_summary(MANIFEST, spec)


def test_counts_cover_only_the_declared_study_sets():
    summary = _summary("studyset-names: [SYNTH_MAGLAND]\nspike-sorters: [{name: MountainSort4, studysets: [SYNTH_MAGLAND]}]\n")
    assert summary["study_sets"] == ["SYNTH_MAGLAND"]
    assert (summary["num_study_sets"], summary["num_studies"], summary["num_recordings"]) == (1, 1, 2)
    assert summary["num_sorting_jobs"] == 2
    assert (summary["manifest_source"], summary["spec_source"]) == ("studysets_tiny.json", "s.yaml")


def test_sorters_show_catalog_names_and_merged_params():
    alias = next(name for name in known_sorter_names() if resolve_sorter(name).name != name)
    entry = resolve_sorter(alias)
    name, default = next(iter(default_params(entry).items()))
    value = changed_value(default)
    summary = _summary(
        "studyset-names: [PAIRED_KAMPFF, SYNTH_MAGLAND]\n"
        f"spike-sorters:\n  - name: {alias}\n    params: {{{name}: {json.dumps(value)}}}\n"
        "    studysets: [PAIRED_KAMPFF, SYNTH_MAGLAND]\n"
        "  - name: MountainSort4\n    studysets: [PAIRED_KAMPFF]\n"
    )
    first, second = summary["sorters"]
    assert (first["name"], first["catalog_name"], first["si_name"]) == (alias, entry.name, entry.si_name)
    assert first["params"] == merge_params(entry, {name: value}, "test")
    assert first["params"][name] == value
    assert (first["num_recordings"], second["num_recordings"]) == (4, 2)
    assert summary["num_sorting_jobs"] == 6


def test_summary_is_plain_json():
    summary = _summary((RESOURCES / "example-spec.yaml").read_text())
    assert json.loads(json.dumps(summary)) == summary
