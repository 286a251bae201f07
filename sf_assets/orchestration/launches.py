"""Which launch a run belongs to: the runs that one action of a user started together.

A command line's runs share its lease tag, a backfill's runs its id, the
studyset sensor's runs for one manifest and spec their sources digest, and a
schedule's runs its name; any other run (one materialization from the UI, a
test's run) is a launch of its own.  Two things are decided per launch: how
many of its sorts run at once (``sorts_at_once``, enforced by the sort
service) and when the fan-in results catch up (after a launch's last result,
not after each one: ``sf_assets.orchestration.assets.automation``).
"""
from __future__ import annotations

from collections.abc import Mapping

LEASE_TAG = "sf-assets/lease"
"""A command-line launch's runs: the launching process (see ``sf_assets.orchestration.run_launcher``)."""
TRIGGER_TAG = "sf-assets/trigger"
"""What requested a run that no backfill or command line did (the studyset sensor)."""
SOURCES_TAG = "sf-assets/sources"
"""The first 12 hex digits of the sources' digest the studyset sensor requested the run for."""
BACKFILL_TAG = "dagster/backfill"
SCHEDULE_TAG = "dagster/schedule_name"

_LAUNCH_TAGS = (LEASE_TAG, BACKFILL_TAG, SOURCES_TAG, SCHEDULE_TAG)


def launch_of(run_id: str, tags: Mapping[str, str]) -> str:
    """The launch a run belongs to, named by the first launch tag it has.

    Parameters
    ----------
    run_id : str
        The run's id: the launch of a run that has no launch tag.
    tags : Mapping[str, str]
        The run's tags.

    Returns
    -------
    str
        ``"<tag>=<value>"`` of its lease, backfill, sensor sources or
        schedule, in that order; else ``"run=<run_id>"``.
    """
    for tag in _LAUNCH_TAGS:
        if tags.get(tag):
            return f"{tag}={tags[tag]}"
    return f"run={run_id}"
