"""Runs left STARTED by a launching process that died, and marking them failed.

Runs that ``launch_campaign`` executes carry :data:`LAUNCHER_TAG`, the
identity of the process executing them (see
:mod:`sf_assets.core.launcher_identity`).  At its start, every launch marks as
failed the STARTED runs whose process is certainly gone (same host, no
process with that PID and start time), so the UI stops showing their
partitions in progress and their history says what happened.  Runs launched
by Dagster's daemon have no such tag: its run monitoring looks after them.
"""
from __future__ import annotations

import dagster as dg

from sf_assets.core.launcher_identity import LauncherIdentity, this_process

LAUNCHER_TAG = "sf-assets/launcher"


def launcher_tags() -> dict[str, str]:
    """The tag naming this process, for a run it is about to execute."""
    return {LAUNCHER_TAG: str(this_process())}


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the in-progress runs whose executing process is gone; return their ids."""
    in_progress = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]))
    failed = []
    for run in in_progress:
        identity = LauncherIdentity.parse(run.tags.get(LAUNCHER_TAG, ""))
        if identity is None or not identity.is_gone():
            continue
        instance.report_run_failed(
            run,
            message=f"the process that executed this run ({identity}) ended without finishing it "
            "(killed?); marked failed by a later sf-assets launch",
        )
        failed.append(run.run_id)
    return failed
