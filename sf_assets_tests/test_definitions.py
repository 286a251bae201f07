"""The code location loads, and its asset graph has the shape the README draws."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from sf_assets.definitions import defs

REPO = Path(__file__).resolve().parents[1]

EXPECTED_ASSETS = {
    # asset: (group, upstream assets)
    "studysets": ("studyset", set()),
    "recording": ("recordings", {"studysets"}),
    "ground_truth": ("recordings", {"recording"}),
    "sorting": ("sortings", {"recording"}),
    "sorting_comparison": ("sortings", {"sorting", "ground_truth"}),
    "sorter_summary": ("results", {"sorting_comparison", "sorting"}),
    "sorting_records": ("results", {"sorting"}),
    "workspace_sync": ("results", {"recording", "ground_truth", "sorting"}),
}


def test_every_asset_spec_matches_the_documented_graph():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert set(specs) == set(EXPECTED_ASSETS)
    for name, (group, parents) in EXPECTED_ASSETS.items():
        spec = specs[name]
        assert spec.group_name == group, name
        assert spec.description, f"{name} has no description"
        assert {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys} == parents, name


def test_partitions_and_the_blocking_canary_check():
    graph = defs.resolve_asset_graph()
    sorting = graph.get(dg.AssetKey("sorting"))
    assert isinstance(sorting.partitions_def, dg.MultiPartitionsDefinition)
    assert sorted(d.name for d in sorting.partitions_def.partitions_defs) == ["recording", "sorter"]
    checks = {k.name: graph.get(k) for k in graph.asset_check_keys if k.asset_key == dg.AssetKey("sorting")}
    assert set(checks) == {"canary"}
    assert checks["canary"].blocking
    assert isinstance(graph.get(dg.AssetKey("recording")).partitions_def, dg.DynamicPartitionsDefinition)


def test_dagster_cli_validates_the_workspace(tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(REPO), SF_ASSETS_HOME=str(tmp_path), SF_ASSETS_DAGSTER_DIR=str(tmp_path))
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout
