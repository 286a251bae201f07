"""When the fan-in results (summary, records, workspace) must run again.

A fan-in reads every landed sorting or comparison from the event log when its
run starts.  It is behind when any input landed after the start of the run
that made its latest materialization: that run could not have read it.
Dagster's ``any_deps_updated().since_last_handled()`` counts the fan-in's own
materialization as handling every update before it, so a comparison that
lands while the summary's run is in progress was never summarized
(reproduced by ``test_a_result_that_lands_during_the_fan_ins_run_requests_them_again``).

A run of the fan-in that failed read its inputs as much as one that
succeeded: it is asked for again once a newer input lands, or
:data:`FAILED_RUN_RETRY_S` after it ended, not at every tick
(``test_a_failed_fan_in_run_waits_for_a_new_input_or_its_retry_period``).
A run that failed or was cancelled before it started read nothing, and
the fan-in is not asked for during that period either: whatever stopped
it (a code location that does not load) would stop the next one.

A fan-in also waits for a launch to settle: while a
backfill still has sorts queued or running, summarizing after each result
cost a fan-in run every automation tick, on the cores the sorts need (on the
benchmark's two cores: six fan-in runs during an eight-sort backfill).  It
runs once some launch that landed an unread result has nothing left in flight,
and at least every :data:`REFRESH_WHILE_SORTING_S` during a long campaign.
Both are decided by one condition (:class:`BehindItsInputsAfterALaunch`) from
one read of the inputs' events since the fan-in's run started.
"""
from __future__ import annotations

import time

import dagster as dg

from sf_assets.orchestration.assets.history import UNFINISHED_RUN_STATUSES
from sf_assets.orchestration.launches import RunInFlight, launch_of, some_launch_settled

REFRESH_WHILE_SORTING_S = 60.0
"""During a campaign, the fan-ins catch up at least this often (seconds), so the UI shows progress."""
FAILED_RUN_RETRY_S = 300.0
"""A fan-in whose latest run failed is asked for again after this long (seconds) if it is still behind."""
ENDED_UNSUCCESSFULLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
LANDED_RUNS_LOOKED_AT = 500
"""The newest unread results whose launches are looked at per input (the refresh covers the rest)."""


def _latest_event_timestamp(instance: dg.DagsterInstance, key: dg.AssetKey) -> float:
    """The newest materialization or observation of ``key``, any partition (0.0: none)."""
    newest = 0.0
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        records = fetch(dg.AssetRecordsFilter(asset_key=key), limit=1, ascending=False).records
        if records:
            newest = max(newest, records[0].timestamp)
    return newest


def _read_from_timestamp(instance: dg.DagsterInstance, latest) -> float | None:
    """When the run behind ``latest`` (the fan-in's latest materialization event) started (None: none).

    A run whose start was not recorded counts from its creation: it cannot
    have read anything earlier.
    """
    if latest is None:
        return None
    record = instance.get_run_record_by_id(latest.run_id) if latest.run_id else None
    if record is None:
        return latest.timestamp  # reported without a run
    return record.start_time or record.create_timestamp.timestamp()


def _recent_unsuccessful_attempt(instance: dg.DagsterInstance, key: dg.AssetKey, latest) -> dg.RunRecord | None:
    """The fan-in's latest run, when it failed or was cancelled less than :data:`FAILED_RUN_RETRY_S` ago.

    Only a run that planned the fan-in after the run of ``latest`` (its latest
    materialization event) counts; its end (its creation, if it never ended
    cleanly) starts the period.
    """
    planned = instance.get_latest_planned_materialization_info(key)
    if planned is None:
        return None
    if latest is not None and planned.run_id == latest.run_id:
        return None
    attempt = instance.get_run_record_by_id(planned.run_id)
    if attempt is None or attempt.dagster_run.status not in ENDED_UNSUCCESSFULLY:
        return None
    ended = attempt.end_time or attempt.create_timestamp.timestamp()
    return attempt if time.time() - ended < FAILED_RUN_RETRY_S else None


RUNLESS = ""
"""The run id under which :func:`_landed_by_run` files an event no run made (a runless observation)."""


def _landed_by_run(instance: dg.DagsterInstance, keys, since: float) -> dict[str, set[str]]:
    """The inputs each run materialized or observed after ``since`` (the newest events of each input)."""
    landed: dict[str, set[str]] = {}
    for key in keys:
        for fetch in (instance.fetch_materializations, instance.fetch_observations):
            records = fetch(
                dg.AssetRecordsFilter(asset_key=key, after_timestamp=since), limit=LANDED_RUNS_LOOKED_AT, ascending=False
            ).records
            for record in records:
                landed.setdefault(record.run_id or RUNLESS, set()).add(key.to_user_string())
    return landed


def a_landed_launch_is_done(instance: dg.DagsterInstance, keys, landed: dict[str, set[str]]) -> bool:
    """Has some launch that landed a result in ``keys`` nothing left that may land more?

    Parameters
    ----------
    instance : DagsterInstance
        The instance.
    keys : iterable of AssetKey
        The fan-in's inputs.
    landed : dict[str, set[str]]
        What :func:`_landed_by_run` found: the inputs each run landed since the fan-in's run started.

    Returns
    -------
    bool
        :func:`~sf_assets.orchestration.launches.some_launch_settled` over the runs in flight; True for a
        runless event (no launch to wait for).
    """
    if RUNLESS in landed:
        return True
    names = {key.to_user_string() for key in keys}
    landed_launches = [
        launch_of(r.dagster_run.run_id, r.dagster_run.tags)
        for r in instance.get_run_records(dg.RunsFilter(run_ids=sorted(landed)))
    ]
    in_flight = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED_RUN_STATUSES)):
        run = record.dagster_run
        feeds = {key.to_user_string() for key in run.asset_selection or ()} & names
        in_flight.append(
            RunInFlight(launch_of(run.run_id, run.tags), frozenset(feeds), frozenset(landed.get(run.run_id, ())))
        )
    return some_launch_settled(landed_launches, in_flight)


def fan_in_should_run(instance: dg.DagsterInstance, key: dg.AssetKey, inputs) -> bool:
    """Is the fan-in behind its inputs, and has a launch that fed it settled (or is it old)?

    Parameters
    ----------
    instance : DagsterInstance
        The instance.
    key : AssetKey
        The fan-in.
    inputs : iterable of AssetKey
        Its parents.

    Returns
    -------
    bool
        False for :data:`FAILED_RUN_RETRY_S` after a run of it that failed or was cancelled before
        starting.  Never read: True once any input has an event.  Else True when an input landed
        after the start of the run that last read them (its latest materialization's, or a recent
        run that failed), and that run is older than :data:`REFRESH_WHILE_SORTING_S` or
        :func:`a_landed_launch_is_done`.
    """
    inputs = list(inputs)
    latest = instance.get_latest_materialization_event(key)
    read_from = _read_from_timestamp(instance, latest)
    attempt = _recent_unsuccessful_attempt(instance, key, latest)
    if attempt is not None:
        if not attempt.start_time:
            return False  # it never ran (a launch that failed, a cancel in the queue): wait out the period
        read_from = max(read_from or 0.0, attempt.start_time)  # it read what had landed before it started
    if read_from is None:
        return any(_latest_event_timestamp(instance, p) > 0.0 for p in inputs)
    landed = _landed_by_run(instance, inputs, read_from)
    if not landed:
        return False
    return time.time() - read_from >= REFRESH_WHILE_SORTING_S or a_landed_launch_is_done(instance, inputs, landed)


class BehindItsInputsAfterALaunch(dg.AutomationCondition):
    """True when the fan-in is behind its inputs and a launch that fed it settled (:func:`fan_in_should_run`)."""

    @property
    def name(self) -> str:
        """The condition's name in the UI's automation view."""
        return "behind_its_inputs_after_a_launch"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        """All candidates when :func:`fan_in_should_run`, none otherwise (nothing asked without candidates).

        Parameters
        ----------
        context : AutomationContext
            Dagster's evaluation context for one asset.

        Returns
        -------
        AutomationResult
            The candidates kept.
        """
        keep = not context.candidate_subset.is_empty and fan_in_should_run(
            context.asset_graph_view.instance, context.key, context.asset_graph.get(context.key).parent_keys
        )
        return dg.AutomationResult(context=context, true_subset=context.candidate_subset if keep else context.get_empty_subset())


# A request of the previous tick whose run has already materialized the fan-in no longer
# holds it back: a result that landed during that run is requested at this tick, not one
# tick later (seen on dagster dev: 27 s instead of 11 s after the last comparison).
_REQUEST_PENDING = dg.AutomationCondition.newly_requested() & ~dg.AutomationCondition.newly_updated()

AS_RESULTS_LAND = (
    BehindItsInputsAfterALaunch() & ~dg.AutomationCondition.in_progress() & ~_REQUEST_PENDING
).with_label("behind its inputs, a launch settled, not already requested or running")
"""Run a fan-in when it is behind its inputs, a launch that fed it settled, and it is not already requested or running."""
