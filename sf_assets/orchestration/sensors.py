"""Automation: sort what a new manifest or spec adds, and land results as sortings finish.

``studyset_sensor`` watches the manifest and spec named by the ``studyset``
resource (a path or a ``sha1://`` URI each).  When their bytes change it
registers the new recording and sorter partitions and takes on exactly the
(sorter, recording) pairs the spec newly assigns, in two stages, like the
command line (:func:`sf_assets.orchestration.planning.stages`):

* at once: a ``recordings_job`` run for each recording they need that is not
  current (nor already being materialized), a ``sorting_job`` run (sort and
  comparison) for each pair whose recording is current, and a
  ``studysets_job`` run for the new manifest;
* at a later tick, as soon as a waiting pair's recording is current: its
  ``sorting_job`` run.  The pairs waiting are kept in the cursor, so ticks go
  on while they wait even when the sources are unchanged.

Adding a sorter to the spec therefore sorts exactly that sorter's pairs;
nothing already sorted (or requested, or in the job cache) runs again.
Changing a sorter's params in the spec plans its pairs again: the job cache,
whose key holds the params, lets through the pairs the new params change.  A
pair another run is sorting at that moment waits in the cursor until that run
ends, then is planned again (its sort may have read the old params).  A
manifest or spec that does not validate skips the tick with the validation
message; the next tick reads the files again.  Every run carries
``sf-assets/trigger=studyset_sensor`` and ``sf-assets/sources=<digest>`` tags,
so one change's runs are one filter in the UI's run list.  A large change
is taken on :data:`MAX_NEW_PAIRS_PER_TICK` pairs per tick.

Why run requests and not an asset backfill: a backfill advances one level of
the graph per pass of Dagster's backfill daemon (every 30 s in Dagster,
10 s under the project's run coordinator: orchestration.run_coordinator), so
a new manifest would wait two passes for its first sort and a new sorter
one; run requests start at the tick (the sensor daemon's loop is 5 s).  Why not ``eager()`` on ``sorting``: the sorting grid
(sorter x recording) holds cells the spec never assigns, which eager would
request.  A UI backfill of a sorter's partitions remains the way to sort
them by hand (``BackfillPolicy.multi_run(1)``: one run per pair).

``results_automation`` evaluates the automation conditions
(``sorting_comparison`` eager, and the fan-ins under ``BehindItsInputsAfterALaunch``), so
comparisons, records, summary and workspace follow the sortings as they land.
"""
import dagster as dg

from sf_assets.orchestration.assets.results import sorter_summary, sorting_records
from sf_assets.orchestration.assets.sortings import sorting_comparison
from sf_assets.orchestration.assets.studysets import register_partitions
from sf_assets.orchestration.assets.workspace import workspace_sync
from sf_assets.core.campaign import Campaign
from sf_assets.core.errors import SfAssetsError
from sf_assets.core.manifest import Recording, parse_manifest
from sf_assets.core.spec import SorterSpec, parse_spec, validate_spec
from sf_assets.core.studyset_cursor import StudysetCursor, params_digest, sources_digest, uris_digest
from sf_assets.stores.inputs import manifest_source_of, read_source
from sf_assets.orchestration.launches import (
    CAMPAIGN_TAG,
    LEASE_TAG,
    SOURCES_TAG,
    TRIGGER_TAG,
    campaign_tag_value,
    queue_capacity,
)
from sf_assets.orchestration.jobs import comparison_job, recordings_job, sorting_job, studysets_job
from sf_assets.orchestration.partitions import pair_key, recording_key, sorter_key
from sf_assets.orchestration.assets.history import UNFINISHED_RUN_STATUSES
from sf_assets.orchestration.planning import plan_sorts, recordings_in_flight, stages
from sf_assets.orchestration.resources import KacheryResource, SortingEngineResource, StudysetResource
from sf_assets.stores.kachery import KacheryStore
from sf_assets.engines.slurm_campaign import anticipate_sorts

STUDYSET_SENSOR = "studyset_sensor"
SENSOR_DAEMON_LOOP_S = 5
"""Dagster's sensor daemon evaluates the sensors that are due once per loop of this many seconds."""
SENSOR_INTERVAL_S = SENSOR_DAEMON_LOOP_S - 1
"""Below the daemon's loop, so that every loop ticks: with an interval equal to the loop, a tick
recorded a few milliseconds into one loop is not yet due at the next one and waits a whole loop
more (automation ticks 10 s apart were measured); shorter would not tick sooner."""
TICK_PERIOD_S = max(SENSOR_INTERVAL_S, SENSOR_DAEMON_LOOP_S)
"""How often the sensors tick: the longest wait between a change and the tick that sees it."""
FAN_IN_RUN_TAGS = {"dagster/priority": "1"}
"""The results' runs leave the queue before the sorting runs queued ahead of them (Dagster's
queue takes higher priorities first): they take seconds, and without it the demo campaign
through the sensor showed no summary until its last sorts had left the queue (129 s)."""
MAX_NEW_PAIRS_PER_TICK = 16
"""New pairs taken on per tick; the rest wait for the next ticks (the sources count as changed until then).

The daemon creates each requested run before the tick ends, and on the
embedded SQLite instance a run costs 0.3-0.5 s (each run gets an event
database of its own): a tick that queued SpikeForest's 888 recordings at once
ran for minutes, one of 64 pairs for 32 s (``make bench-scale``).  16 pairs (at
most 16 recording runs and 16 sorting runs) keep a tick to seconds, and still
feed the queue far faster than sorts finish (PostgreSQL creates runs faster).
"""


def read_sources(studyset: StudysetResource, store: KacheryStore) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    """The spec's and the manifest's (name, bytes); the manifest from the spec when not configured.

    Parameters
    ----------
    studyset : StudysetResource
        The configured sources.
    store : KacheryStore
        For ``sha1://`` sources.

    Returns
    -------
    tuple[tuple[str, bytes], tuple[str, bytes]]
        The spec's and the manifest's name and bytes.

    Raises
    ------
    SfAssetsError
        A source that cannot be read, or a spec that does not parse (naming it).
    """
    spec_raw, spec_name = read_source(studyset.spec_source, store)
    manifest_source = studyset.manifest_source or manifest_source_of(parse_spec(spec_raw, spec_name))
    manifest_raw, manifest_name = read_source(manifest_source, store)
    return (spec_name, spec_raw), (manifest_name, manifest_raw)


def parse_campaign(spec_source: tuple[str, bytes], manifest_source: tuple[str, bytes]) -> Campaign:
    """The campaign the sources validate to; raises SfAssetsError naming the bad source.

    Parameters
    ----------
    spec_source : tuple[str, bytes]
        The spec's name and bytes.
    manifest_source : tuple[str, bytes]
        The manifest's name and bytes.

    Returns
    -------
    Campaign
        The campaign.

    Raises
    ------
    SfAssetsError
        Naming the bad source, key and what was expected.
    """
    spec = parse_spec(spec_source[1], spec_source[0])
    manifest = parse_manifest(manifest_source[1], manifest_source[0])
    validate_spec(spec, manifest)
    return Campaign(manifest, spec)


def command_line_launch_of(instance: dg.DagsterInstance, campaign: Campaign) -> str | None:
    """The lease of a command-line launch with runs in flight for this very campaign, if any.

    Parameters
    ----------
    instance : DagsterInstance
        The instance.
    campaign : Campaign
        The campaign the sensor's sources validate to.

    Returns
    -------
    str or None
        The launch's lease tag (its process), or None when no command line is sorting it.
    """
    runs = instance.get_run_records(
        dg.RunsFilter(statuses=UNFINISHED_RUN_STATUSES, tags={CAMPAIGN_TAG: campaign_tag_value(campaign.digest())}), limit=1
    )
    return next((r.dagster_run.tags.get(LEASE_TAG, "") for r in runs), None)


def _pair(sorter_spec: SorterSpec, rec: Recording) -> tuple[str, str]:
    """A pair as the cursor keeps it: (sorter key, recording key)."""
    return sorter_key(sorter_spec.name), recording_key(rec)


@dg.sensor(
    name=STUDYSET_SENSOR,
    jobs=[studysets_job, recordings_job, sorting_job, comparison_job],
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the configured manifest and spec; registers new recording and sorter partitions, "
    "and sorts exactly the (sorter, recording) pairs the spec newly assigns, each as soon as its recording "
    "is current.",
)
def studyset_sensor(
    context: dg.SensorEvaluationContext,
    studyset: StudysetResource,
    kachery: KacheryResource,
    sorting_engine: SortingEngineResource,
):
    """Register new partitions and backfill the pairs a changed manifest or spec newly assigns."""
    try:
        cursor = StudysetCursor.decode(context.cursor)
    except ValueError as exc:
        return dg.SkipReason(str(exc))
    try:
        spec_source, manifest_source = read_sources(studyset, kachery.store())
        digest = sources_digest([spec_source, manifest_source])
        if digest == cursor.digest and not cursor.pending:
            return dg.SkipReason(f"{spec_source[0]} and {manifest_source[0]} are unchanged")
        campaign = parse_campaign(spec_source, manifest_source)
    except SfAssetsError as exc:
        return dg.SkipReason(" ".join(str(exc).splitlines()))

    lease = command_line_launch_of(context.instance, campaign)
    if lease is not None:
        # Its waiting pairs (sorts whose recording is still running) are in its memory, not in
        # the queue: planning now would request them a second time.  The cursor stays, so the
        # first tick after it ends plans what it left (nothing, unless it was stopped).
        return dg.SkipReason(f"a command-line launch ({lease}) is sorting this campaign; its pairs are left to it")
    changed = digest != cursor.digest
    if changed:
        # Registered here, in bulk, rather than returned as partition requests: the daemon
        # checks a request's keys one query at a time (about 2 s for SpikeForest's 888
        # recordings). Adding partitions is idempotent, so a tick that fails after this
        # line leaves nothing wrong behind: the next one requests the same pairs.
        new_recordings, new_sorters = register_partitions(context.instance, campaign)
        if new_recordings or new_sorters:
            context.log.info(
                f"registered {len(new_recordings)} recording partition(s) {_sample(new_recordings)} and "
                f"{len(new_sorters)} sorter partition(s) {_sample(new_sorters)}"
            )
    # A sorter whose params the spec changed: its pairs are planned again (the job cache keeps
    # what its new params would not change).
    params_now = {sorter_key(s.name): params_digest(s.params) for s in campaign.spec.sorters}
    retuned = cursor.changed_sorters(params_now)
    if retuned:
        context.log.info(f"params changed for {_sample(sorted(retuned))}: their pairs are planned again")
        cursor = cursor.forget(sorters=retuned)
    # Likewise a recording whose URIs the manifest corrected: its recording (or ground truth) runs
    # again, and its pairs are sorted again (a new recording) or compared again (a new ground truth).
    uris_now = {recording_key(r): uris_digest(r.recording_uri, r.sorting_true_uri) for r in campaign.recordings()}
    moved = cursor.changed_recordings(uris_now)
    if moved:
        context.log.info(f"URIs changed for {_sample(sorted(moved))}: their pairs are planned again")
        cursor = cursor.forget(recordings=moved)
    # New: not taken on by an earlier tick. Pending: taken on, waiting for their recording's run
    # or held by another run. Of both, the planner leaves out what the job cache holds and what
    # another run or backfill is sorting already (the command line's, say).
    untaken = [(s, r) for s, r in campaign.jobs if _pair(s, r) not in cursor.requested]
    new_jobs = untaken[:MAX_NEW_PAIRS_PER_TICK]
    complete = len(untaken) == len(new_jobs)
    waited = [(s, r) for s, r in campaign.jobs if _pair(s, r) in cursor.pending]
    plan = plan_sorts(
        context.instance,
        campaign,
        sorting_engine.settings(),
        new_jobs + waited,
        store=kachery.store(),
        use_job_cache=sorting_engine.use_job_cache,
    )
    order = stages(plan)
    running = recordings_in_flight(context.instance)
    asked_before = {recording_key(r) for s, r in waited if _pair(s, r) in cursor.waiting}
    to_materialize = [k for k in order.recordings if k not in running and k not in asked_before]
    stalled = [k for k in order.recordings if k not in running and k in asked_before]
    still_waiting = [_pair(s, r) for s, r in plan.to_sort if recording_key(r) in order.waiting]
    # Cached pairs whose ground truth the manifest corrected wait too: once it is materialized, the
    # plan finds their comparison made against another ground truth and requests it again.
    recompare = {key for keys in order.compare_after.values() for key in keys}
    still_waiting += [_pair(s, r) for s, r in new_jobs + waited if str(pair_key(s.name, r)) in recompare]
    # A pair another run is sorting as this tick takes it on may be sorting on params the spec has
    # since changed (a params edit, or a backfill launched before the edit): it is held in the
    # cursor, and once that run has ended the plan sorts it again unless the job cache shows it
    # sorted what the spec asks now (a pair whose run ended without storing a sorting is sorted again).
    in_flight = set(plan.in_flight)
    rechecked = {  # cursor pair: partition key
        _pair(s, r): key for s, r in new_jobs + waited if (key := str(pair_key(s.name, r))) in in_flight
    }

    tags = {TRIGGER_TAG: STUDYSET_SENSOR, SOURCES_TAG: digest[:12]}
    work = bool(order.sorts or to_materialize or order.comparisons)
    # The studysets root records the manifest the sorts were planned from, as a launch does.
    requests = [dg.RunRequest(job_name=studysets_job.name, tags=tags)] if changed and work and complete else []
    requests += [dg.RunRequest(job_name=recordings_job.name, partition_key=k, tags=tags) for k in to_materialize]
    requests += [dg.RunRequest(job_name=comparison_job.name, partition_key=k, tags=tags) for k in order.comparisons]
    requests += [dg.RunRequest(job_name=sorting_job.name, partition_key=k, tags=tags) for k in order.sorts]
    # Until every new pair is taken on, the sources count as changed: the next tick takes more.
    acted_on = digest if complete else cursor.digest
    next_cursor = cursor.after_tick(
        acted_on,
        [_pair(s, r) for s, r in new_jobs],
        waiting=still_waiting,
        held=rechecked,
        params=params_now,
        # The URIs of every recording with a pair taken on (a cursor from before they were kept learns them now).
        uris={k: uris_now[k] for k in {r for _, r in cursor.requested} | {recording_key(r) for _, r in new_jobs} if k in uris_now},
    ).encode()

    # On Slurm, the allocations the sorts to come need are requested now, and kept at each tick while
    # some wait for their recording: they start while the recordings are materialized and the runs
    # reach their sorts (nothing without Slurm).
    # Not the pairs of a recording whose run ended without it (stalled: they may wait for good), and
    # no more than the run queue runs at once.
    coming = len(order.sorts) + sum(
        1 for _s, r in plan.to_sort if recording_key(r) in order.waiting and recording_key(r) not in stalled
    )
    capacity = queue_capacity(context.instance)
    requested = anticipate_sorts(
        sorting_engine.settings(),
        min(coming, capacity) if capacity else coming,
        {s.name: s for s, _ in plan.to_sort}.values(),
        on_error=context.log.warning,
    )
    if requested:
        context.log.info(f"Slurm: requested {len(requested)} allocation(s) for the sorts to come: {', '.join(requested)}")
    counts = (
        f"{len(campaign.jobs)} assigned: {len(plan.cached)} in the job cache, "
        f"{len(plan.in_flight)} already queued or running elsewhere"
    )
    if stalled:
        context.log.warning(
            f"{len(stalled)} recording(s) {_sample(stalled)} are not current although their run was requested "
            "and has ended: see their runs; their sorts wait until they are materialized (e.g. from the UI)"
        )
    if not work:
        reason = f"no new (sorter, recording) pairs to sort among {counts}"
        if not complete:
            reason += f"; {len(untaken) - len(new_jobs)} new pair(s) left for the next ticks"
        if still_waiting:
            reason = (
                f"{len(still_waiting)} pair(s) waiting for {len(order.waiting)} recording(s) "
                f"{_sample(list(order.waiting))}" + (f", {len(stalled)} of them not materialized by their run" if stalled else "")
            )
        if rechecked:
            reason += f"; {_rechecked_note(rechecked)}"
        return dg.SensorResult(cursor=next_cursor, skip_reason=reason)
    context.log.info(
        f"sorting {len(order.sorts)} pair(s) now, {len(still_waiting)} once their recording is current "
        f"({len(to_materialize)} recording run(s) requested); {len(order.comparisons)} comparison(s) "
        f"redone; of {counts}"
        + ("" if complete else f"; {len(untaken) - len(new_jobs)} new pair(s) left for the next ticks")
        + (f"; {_rechecked_note(rechecked)}" if rechecked else "")
    )
    return dg.SensorResult(run_requests=requests, cursor=next_cursor)


def _sample(keys: list[str], shown: int = 5) -> str:
    return "[" + ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "") + "]"


def _rechecked_note(rechecked: dict[tuple[str, str], str]) -> str:
    return f"{len(rechecked)} pair(s) {_sample(list(rechecked.values()))} held by another run: planned again once it ends"


results_automation = dg.AutomationConditionSensorDefinition(
    "results_automation",
    target=dg.AssetSelection.assets(sorting_comparison, sorting_records, sorter_summary, workspace_sync),
    default_status=dg.DefaultSensorStatus.RUNNING,
    # Every loop of the sensor daemon (5 s): results land at most one loop after the last sort.
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    run_tags=FAN_IN_RUN_TAGS,
    # The fan-ins' condition (BehindItsInputsAfterALaunch) is Python of ours: it runs on the code server.
    use_user_code_server=True,
    description="Compares, records, summarizes and syncs to the workspace as sortings land.",
)

SENSORS = [studyset_sensor, results_automation]
