"""Asset jobs, one per partitions definition (a job cannot mix them).

The command line and the sensors launch one run per partition, so a failed
sort fails only its own run (a single-run backfill would mark every partition
materialized even when some failed).
"""
from __future__ import annotations

import dagster as dg

studysets_job = dg.define_asset_job("studysets_job", selection=["studysets"])
recordings_job = dg.define_asset_job("recordings_job", selection=["recording", "ground_truth"])
sorting_job = dg.define_asset_job("sorting_job", selection=["sorting", "sorting_comparison"])
comparison_job = dg.define_asset_job("comparison_job", selection=["sorting_comparison"])
results_job = dg.define_asset_job("results_job", selection=["sorter_summary", "sorting_records", "workspace_sync"])

JOBS = [studysets_job, recordings_job, sorting_job, comparison_job, results_job]
