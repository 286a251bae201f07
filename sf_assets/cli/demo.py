"""The demo: a synthetic ground-truth studyset sorted end to end on the embedded default.

Generates (once) a synthetic studyset in the project's kachery store, then
materializes the whole graph on the configured Dagster instance and prints
the sorter summary.  Running it again re-uses everything: the job cache
holds every sorting, so only the cheap fan-in results run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import dagster as dg

from sf_assets.core.campaign import Campaign
from sf_assets.core.labels import sorting_label
from sf_assets.stores.inputs import load_config
from sf_assets.cli.launch import RunOptions, launch_campaign
from sf_assets.cli.progress import LiveProgress
from sf_assets.core.settings import load_settings
from sf_assets.stores.kachery import KacheryStore

DEMO_SORTERS = ("MountainSort5", "SpykingCircus2", "Tridesclous2")


def ensure_studyset(store: KacheryStore, folder: Path, *, seed: int = 0) -> tuple[str, str]:
    """The demo studyset's (manifest path, spec path), generated on first use."""
    from sf_assets.stores.synthetic import generate_studyset

    manifest, spec = folder / "studysets.json", folder / "spec.yaml"
    if not (manifest.exists() and spec.exists()):
        generated = generate_studyset(store, folder, seed=seed, sorters=DEMO_SORTERS)
        manifest, spec = Path(generated.manifest_path), Path(generated.spec_path)
    return str(manifest), str(spec)


def run_demo(*, workers: int = 2, seed: int = 0, out=sys.stdout) -> int:
    settings = load_settings()
    store = KacheryStore(settings.kachery_dir, local_only=settings.kachery_local_only)
    started = time.monotonic()
    manifest_path, spec_path = ensure_studyset(store, settings.home / "studyset", seed=seed)
    print(f"studyset: {manifest_path}\nspec:     {spec_path}", file=out)
    campaign = Campaign(*load_config(manifest_path, spec_path, store))
    print(
        f"{len(campaign.recordings())} recordings x {len(campaign.spec.sorters)} sorters = "
        f"{len(campaign.jobs)} sorting jobs, {workers} at a time",
        file=out,
    )
    options = RunOptions.from_settings(settings, spec_source=spec_path, manifest_source=manifest_path)
    instance = dg.DagsterInstance.get()
    with LiveProgress(out) as live:
        outcome = launch_campaign(
            instance, campaign, options, workers=workers, progress=live.say, on_counts=live.update
        )
    elapsed = time.monotonic() - started
    summary = settings.outputs_dir / "sorter_summary.csv"
    print("\nSorter summary (mean over true units with SNR > 8; well detected: accuracy >= 0.8)", file=out)
    if summary.exists():
        import pandas as pd

        print(pd.read_csv(summary).to_string(index=False, float_format=lambda v: f"{v:.3f}"), file=out)
    failed = outcome.failed_sortings + [o for o in outcome.recordings + outcome.comparisons + outcome.results if not o.success]
    print(
        f"\n{len(outcome.sortings)} sorted, {len(outcome.cached_pairs)} from the job cache, "
        f"{len(outcome.failed_sortings)} failed; {elapsed:.0f} s in all.",
        file=out,
    )
    print(f"Records: {settings.outputs_dir / 'sorting_records.json'}", file=out)
    print(f"Results page (no server needed): {(settings.outputs_dir / 'results.html').resolve().as_uri()}", file=out)
    if campaign.jobs:
        sorter_spec, rec = campaign.jobs[0]
        label = sorting_label(sorter_spec.name, rec.study_name, rec.name)
        print(f"Open a sorting in the browser: make view LABEL={label}", file=out)
    print("Browse runs, lineage, partitions and canary checks: `make ui`, then open http://127.0.0.1:3000", file=out)
    return 1 if failed else 0
