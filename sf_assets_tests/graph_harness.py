"""Helpers for tests that materialize the real asset graph on a temporary instance.

A :class:`GraphEnv` is one throwaway deployment: its own kachery store, work
folders, workspace database, outputs folder and Dagster instance, with a spec
written for the test.  Launches go through :mod:`sf_assets.cli.launch`, the same path
the command line uses (the run queue, the run launcher, the sort service);
:func:`execute_partition_run` executes one run in this process, for tests that
need a materialization to land at a chosen moment.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import dagster as dg
import yaml

from sf_assets.orchestration.assets.history import latest_partition_events, plain_metadata
from sf_assets.core.campaign import Campaign
from sf_assets.stores.inputs import load_config
from sf_assets.cli.launch import RunOptions, RunOutcome, launch_campaign
from sf_assets.stores.kachery import KacheryStore


def execute_partition_run(instance_ref, job_name: str, partition_key: str | None, run_config: dict) -> RunOutcome:
    """Execute one run of ``job_name`` in this process (its sorts still go to the sort service)."""
    import time

    from sf_assets.definitions import defs
    from sf_assets.cli.launch import run_error

    started = time.monotonic()
    instance = dg.DagsterInstance.from_ref(instance_ref)
    job = defs.resolve_job_def(job_name)
    key = partition_key
    if partition_key is not None and "|" in partition_key:
        key = job.partitions_def.get_partition_key_from_str(partition_key)
    result = job.execute_in_process(instance=instance, partition_key=key, run_config=run_config, raise_on_error=False)
    error = None if result.success else run_error(instance, result.run_id)
    return RunOutcome(job_name, partition_key, result.success, result.run_id, time.monotonic() - started, error)


def write_spec(path: Path, manifest_path: Path, sorters: dict[str, dict]) -> Path:
    """A spec running each sorter ({name: {"studysets": [...], "params": {...}}})."""
    with open(manifest_path) as f:
        names = [s["name"] for s in json.load(f)["StudySets"]]
    spec = {
        "studysets": str(manifest_path),
        "studyset-names": names,
        "spike-sorters": [
            {"name": name, "params": cfg.get("params", {}), "studysets": cfg["studysets"]}
            for name, cfg in sorters.items()
        ],
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@dataclass
class GraphEnv:
    root: Path
    store: KacheryStore
    instance: dg.DagsterInstance
    options: RunOptions

    @property
    def campaign(self) -> Campaign:
        return Campaign(*load_config(self.options.manifest_source or None, self.options.spec_source, self.store))

    def with_options(self, **changes) -> "GraphEnv":
        return replace(self, options=replace(self.options, **changes))

    def launch(self, *, workers: int = 1, pairs=None, run_results: bool = True):
        return launch_campaign(
            self.instance, self.campaign, self.options, workers=workers, pairs=pairs, run_results=run_results
        )

    def run(self, job_name: str, partition_key: str | None = None):
        return execute_partition_run(self.instance.get_ref(), job_name, partition_key, self.options.run_config())

    def latest(self, asset: str, *, observations: bool = False) -> dict[str, dict]:
        events = latest_partition_events(self.instance, dg.AssetKey(asset), include_observations=observations)
        return {k: plain_metadata(v[1]) for k, v in events.items()}

    def latest_unpartitioned(self, asset: str) -> dict:
        event = self.instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None, f"{asset} was never materialized"
        return plain_metadata(event)

    def check_evaluations(self, check_name: str = "canary") -> list:
        key = dg.AssetCheckKey(dg.AssetKey("sorting"), check_name)
        return self.instance.event_log_storage.get_asset_check_execution_history(key, limit=1000)


def make_env(root: Path, store: KacheryStore, instance: dg.DagsterInstance, manifest: Path, spec: Path, **options):
    root.mkdir(parents=True, exist_ok=True)
    run_options = RunOptions(
        spec_source=str(spec),
        manifest_source=str(manifest),
        kachery_dir=str(store.root_dir),
        work_root=str(root / "sorts"),
        workspace_db_url=f"sqlite:///{root / 'workspace.db'}",
        outputs_dir=str(root / "outputs"),
        **options,
    )
    return GraphEnv(root=root, store=store, instance=instance, options=run_options)


def campaign_resources(root: Path, store: KacheryStore, spec: Path, manifest: Path, **engine) -> dict:
    """The resources of a campaign materialized with ``dg.materialize`` (engine options as given)."""
    from sf_assets.orchestration.resources import KacheryResource, OutputsResource, SortingEngineResource, StudysetResource

    return {
        "kachery": KacheryResource(root_dir=str(store.root_dir)),
        "studyset": StudysetResource(spec_source=str(spec), manifest_source=str(manifest)),
        "sorting_engine": SortingEngineResource(work_root=str(root / "sorts"), **engine),
        "outputs": OutputsResource(folder=str(root / "outputs")),
    }


def materialize_campaign(instance: dg.DagsterInstance, resources: dict) -> dict[tuple[str, str], bool]:
    """Every asset of the campaign, in the calling process, one partition per ``dg.materialize``.

    Studysets first (it registers the partitions), then each recording and its
    ground truth, each sorting (a failed one does not stop the others) and the
    comparison of each that succeeded, then the records and the summary.

    Returns
    -------
    dict
        ``{(sorter name, recording label): whether its sorting succeeded}``.
    """
    from sf_assets.orchestration.assets.recordings import ground_truth, recording
    from sf_assets.orchestration.assets.results import sorter_summary, sorting_records
    from sf_assets.orchestration.assets.sortings import sorting, sorting_comparison
    from sf_assets.orchestration.assets.studysets import studysets
    from sf_assets.orchestration.partitions import pair_key, recording_key

    assert dg.materialize([studysets], instance=instance, resources=resources).success
    campaign = resources["studyset"].campaign(resources["kachery"])
    for rec in campaign.recordings():
        key = recording_key(rec)
        assert dg.materialize([recording, ground_truth], instance=instance, resources=resources, partition_key=key).success
    outcomes = {}
    for sorter_spec, rec in campaign.jobs:
        key = str(pair_key(sorter_spec.name, rec))
        result = dg.materialize([sorting], instance=instance, resources=resources, partition_key=key, raise_on_error=False)
        outcomes[(sorter_spec.name, rec.label)] = result.success
        if result.success:
            assert dg.materialize([sorting_comparison], instance=instance, resources=resources, partition_key=key).success
    assert dg.materialize([sorting_records, sorter_summary], instance=instance, resources=resources).success
    return outcomes
