"""The whole code location: assets, checks, jobs, automation and resources."""
from __future__ import annotations

import dagster as dg

from sf_assets.orchestration.assets.recordings import ground_truth, recording
from sf_assets.orchestration.assets.results import sorter_summary, sorting_records
from sf_assets.orchestration.assets.sortings import sorting, sorting_comparison
from sf_assets.orchestration.assets.studysets import studysets
from sf_assets.orchestration.assets.workspace import workspace_sync
from sf_assets.orchestration.jobs import JOBS
from sf_assets.orchestration.resources import default_resources
from sf_assets.orchestration.schedules import SCHEDULES
from sf_assets.orchestration.sensors import SENSORS

defs = dg.Definitions(
    assets=[studysets, recording, ground_truth, sorting, sorting_comparison, sorter_summary, sorting_records, workspace_sync],
    jobs=JOBS,
    sensors=SENSORS,
    schedules=SCHEDULES,
    resources=default_resources(),
    # One process per run: a run's steps (a sort and its comparison) run in it one after
    # the other, instead of a process per step.
    executor=dg.in_process_executor,
)
