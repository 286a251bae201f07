"""Automation: sort what a new manifest or spec adds, and land results as sortings finish.

``studyset_sensor`` watches the manifest and spec named by the ``studyset``
resource (a path or a ``sha1://`` URI each).  When their bytes change it
registers the new recording and sorter partitions and launches one asset
backfill of exactly the (sorter, recording) pairs the spec newly assigns:
their sortings and comparisons, the recordings and ground truths they need,
and the ``studysets`` root.  Adding a sorter to the spec is therefore a
backfill of that sorter's pairs; nothing already sorted (or requested) runs
again.  A manifest or spec that does not validate skips the tick with the
validation message; the next tick reads the files again.

Why a backfill and not eager automation: the sorting grid (sorter x
recording) holds cells the spec never assigns, so ``eager()`` on ``sorting``
would request them all; runs requested in one tick are not ordered, and one
job cannot mix the recordings and sorting partitions definitions.  An asset
backfill can: it materializes parents before children across partitions
definitions, runs one partition per run (``BackfillPolicy.multi_run(1)`` on
``sorting``), shows as one entry in the UI with the exact partitions it
targets, and its failed partitions can be retried from there.

``results_automation`` evaluates the automation conditions
(``sorting_comparison`` eager, and the fan-ins under ``AS_RESULTS_LAND``), so
comparisons, records, summary and workspace follow the sortings as they land.
"""
import dagster as dg
# No public API builds the AssetGraphSubset that the public RunRequest.for_asset_graph_subset
# takes (the one way a sensor requests a multi-asset, multi-partition backfill in Dagster 1.13).
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset

from sf_assets.orchestration.assets.recordings import ground_truth, recording
from sf_assets.orchestration.assets.results import sorter_summary, sorting_records
from sf_assets.orchestration.assets.sortings import SORTING_KEY, sorting, sorting_comparison
from sf_assets.orchestration.assets.studysets import register_partitions, studysets
from sf_assets.orchestration.assets.workspace import workspace_sync
from sf_assets.core.campaign import Campaign
from sf_assets.core.errors import SfAssetsError
from sf_assets.core.manifest import Recording, parse_manifest
from sf_assets.core.spec import SorterSpec, parse_spec, validate_spec
from sf_assets.core.studyset_cursor import StudysetCursor, sources_digest
from sf_assets.stores.inputs import manifest_source_of, read_source
from sf_assets.orchestration.partitions import pair_key, recording_key, sorter_key
from sf_assets.orchestration.planning import Plan, plan_sorts
from sf_assets.orchestration.resources import KacheryResource, SortingEngineResource, StudysetResource
from sf_assets.stores.kachery import KacheryStore

STUDYSET_SENSOR = "studyset_sensor"
TRIGGER_TAG = "sf-assets/trigger"
BACKFILL_TAGS = {TRIGGER_TAG: STUDYSET_SENSOR}
BACKFILLED_ASSETS = [studysets, recording, ground_truth, sorting, sorting_comparison]
"""What a studyset backfill may hold (the sensor's asset selection)."""


def read_sources(studyset: StudysetResource, store: KacheryStore) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    """The spec's and the manifest's (name, bytes); the manifest from the spec when not configured.

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
    """The campaign the sources validate to; raises SfAssetsError naming the bad source."""
    spec = parse_spec(spec_source[1], spec_source[0])
    manifest = parse_manifest(manifest_source[1], manifest_source[0])
    validate_spec(spec, manifest)
    return Campaign(manifest, spec)


def _pair(sorter_spec: SorterSpec, rec: Recording) -> tuple[str, str]:
    """A pair as the cursor keeps it: (sorter key, recording key)."""
    return sorter_key(sorter_spec.name), recording_key(rec)


def backfill_subset(plan: Plan, asset_graph) -> AssetGraphSubset:
    """The studysets root, the planned pairs' sortings and comparisons, and the recordings they need first."""
    wanted = {AssetKeyPartitionKey(studysets.key, None)}
    for sorter_spec, rec in plan.to_sort:
        key = pair_key(sorter_spec.name, rec)
        wanted |= {AssetKeyPartitionKey(SORTING_KEY, key), AssetKeyPartitionKey(sorting_comparison.key, key)}
    for rec_key in plan.recordings_to_run:
        wanted |= {AssetKeyPartitionKey(recording.key, rec_key), AssetKeyPartitionKey(ground_truth.key, rec_key)}
    return AssetGraphSubset.from_asset_partition_set(wanted, asset_graph)


@dg.sensor(
    name=STUDYSET_SENSOR,
    asset_selection=BACKFILLED_ASSETS,
    # The first sort of a changed spec should start within a minute: this interval, then the
    # backfill daemon's passes (every 30 s, fixed in Dagster) before the recordings and the sorts.
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the configured manifest and spec; registers new recording and sorter partitions "
    "and backfills exactly the (sorter, recording) pairs the spec newly assigns.",
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
        if digest == cursor.digest:
            return dg.SkipReason(f"{spec_source[0]} and {manifest_source[0]} are unchanged")
        campaign = parse_campaign(spec_source, manifest_source)
    except SfAssetsError as exc:
        return dg.SkipReason(" ".join(str(exc).splitlines()))

    # New: not requested by an earlier tick; of those, the planner leaves out what the job
    # cache holds and what another run or backfill is sorting already (the command line's, say).
    new_jobs = [(s, r) for s, r in campaign.jobs if _pair(s, r) not in cursor.requested]
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
    next_cursor = cursor.after_tick(digest, [_pair(s, r) for s, r in new_jobs]).encode()
    plan = plan_sorts(
        context.instance,
        campaign,
        sorting_engine.settings(),
        new_jobs,
        store=kachery.store(),
        use_job_cache=sorting_engine.use_job_cache,
    )
    if not plan.to_sort:
        return dg.SensorResult(
            cursor=next_cursor,
            skip_reason=f"no new (sorter, recording) pairs to sort among {len(campaign.jobs)} assigned "
            f"({len(plan.cached)} in the job cache, {len(plan.in_flight)} already queued or running)",
        )
    subset = backfill_subset(plan, context.repository_def.asset_graph)
    context.log.info(
        f"backfilling {len(plan.to_sort)} new (sorter, recording) pair(s) of {len(campaign.jobs)} assigned "
        f"({len(plan.cached)} in the job cache, {len(plan.in_flight)} already queued or running)"
    )
    return dg.SensorResult(
        run_requests=[dg.RunRequest.for_asset_graph_subset(subset, tags=BACKFILL_TAGS)],
        cursor=next_cursor,
    )


def _sample(keys: list[str], shown: int = 5) -> str:
    return "[" + ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "") + "]"


results_automation = dg.AutomationConditionSensorDefinition(
    "results_automation",
    target=dg.AssetSelection.assets(sorting_comparison, sorting_records, sorter_summary, workspace_sync),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    # The fan-ins' condition (BehindItsInputs) is Python of ours: it runs on the code server.
    use_user_code_server=True,
    description="Compares, records, summarizes and syncs to the workspace as sortings land.",
)

SENSORS = [studyset_sensor, results_automation]
