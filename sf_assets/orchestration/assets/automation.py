"""When the fan-in results (summary, records, workspace) must run again.

A fan-in reads every landed sorting or comparison from the event log when its
run starts.  It is behind when any input landed after the start of the run
that made its latest materialization: that run could not have read it.
Dagster's ``any_deps_updated().since_last_handled()`` counts the fan-in's own
materialization as handling every update before it, so a comparison that
lands while the summary's run is in progress was never summarized
(reproduced by ``test_a_result_that_lands_during_the_fan_ins_run_requests_them_again``).
"""
from __future__ import annotations

import dagster as dg


def _latest_event_timestamp(instance: dg.DagsterInstance, key: dg.AssetKey) -> float:
    """The newest materialization or observation of ``key``, any partition (0.0: none)."""
    newest = 0.0
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        records = fetch(dg.AssetRecordsFilter(asset_key=key), limit=1, ascending=False).records
        if records:
            newest = max(newest, records[0].timestamp)
    return newest


def _read_from_timestamp(instance: dg.DagsterInstance, key: dg.AssetKey) -> float | None:
    """When the run behind ``key``'s latest materialization started (None: never materialized)."""
    latest = instance.get_latest_materialization_event(key)
    if latest is None:
        return None
    record = instance.get_run_record_by_id(latest.run_id) if latest.run_id else None
    return (record.start_time if record is not None and record.start_time else None) or latest.timestamp


class BehindItsInputs(dg.AutomationCondition):
    """True when an input landed after the start of the run that made the latest materialization."""

    @property
    def name(self) -> str:
        return "behind_its_inputs"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        instance = context.asset_graph_view.instance
        read_from = _read_from_timestamp(instance, context.key)
        parents = context.asset_graph.get(context.key).parent_keys
        newest = max((_latest_event_timestamp(instance, p) for p in parents), default=0.0)
        behind = newest > 0.0 and (read_from is None or newest > read_from)
        return dg.AutomationResult(context=context, true_subset=context.candidate_subset if behind else context.get_empty_subset())


# A request of the previous tick whose run has already materialized the fan-in no longer
# holds it back: a result that landed during that run is requested at this tick, not one
# tick later (seen on dagster dev: 27 s instead of 11 s after the last comparison).
_REQUEST_PENDING = dg.AutomationCondition.newly_requested() & ~dg.AutomationCondition.newly_updated()

AS_RESULTS_LAND = (BehindItsInputs() & ~dg.AutomationCondition.in_progress() & ~_REQUEST_PENDING).with_label(
    "behind its inputs, not already requested or running"
)
"""Run a fan-in when it is behind its inputs and not already requested or running."""
