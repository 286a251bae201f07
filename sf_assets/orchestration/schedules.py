"""The periodic re-run: errored sortings, and sortings made by an older sort engine.

Everything else is left alone: a sorting whose latest event is a
materialization by the current code version is never requested, nor is a
pair the spec does not assign, nor one that a queued or running run, or an
unfinished backfill, is about to sort.

"Errored" means the partition's latest event is a failed materialization
(the sort failed, or its run failed or was cancelled) or an errored
observation (the sorting asset records a failed sort's record as an
observation before failing).
"Older" means the latest materialization's ``dagster/code_version`` tag
differs from the sorting asset's current code version
(``SORT_ENGINE_VERSION``): the job cache key holds that version too, so the
re-run really sorts again.  Each re-run is one ``sorting_job`` run of one
partition (sorting and its comparison).
"""
import dagster as dg

from sf_assets.orchestration.assets.keys import SORTING_KEY
from sf_assets.orchestration.assets.sortings import sorting
from sf_assets.core.campaign import Campaign
from sf_assets.core.errors import SfAssetsError
from sf_assets.orchestration.jobs import sorting_job
from sf_assets.orchestration.partitions import pair_key
from sf_assets.orchestration.planning import partitions_in_flight
from sf_assets.orchestration.resources import KacheryResource, StudysetResource

RERUN_SCHEDULE = "rerun_sortings_schedule"
RERUN_CRON = "0 3 * * *"
CODE_VERSION_TAG = "dagster/code_version"
REASON_TAG = "sf-assets/rerun-reason"
ERRORED = "errored"
OLD_CODE_VERSION = "older code version"
_MATERIALIZED, _OBSERVED, _FAILED = "materialized", "observed", "failed"


def _latest_ids(instance: dg.DagsterInstance, event_type: dg.DagsterEventType, partitions: set[str]) -> dict[str, int]:
    return dict(instance.event_log_storage.get_latest_storage_id_by_partition(SORTING_KEY, event_type, partitions))


def _events(fetch, storage_ids: list[int]) -> dict[int, dg.EventLogEntry]:
    """The events of ``storage_ids`` (materializations or observations of sorting), by id."""
    events: dict[int, dg.EventLogEntry] = {}
    for start in range(0, len(storage_ids), 500):
        batch = storage_ids[start : start + 500]
        result = fetch(dg.AssetRecordsFilter(asset_key=SORTING_KEY, storage_ids=batch), limit=len(batch))
        events.update((record.storage_id, record.event_log_entry) for record in result.records)
    return events


def _is_errored(observation: dg.EventLogEntry) -> bool:
    flag = (observation.asset_observation.metadata or {}).get("errored")
    return getattr(flag, "value", flag) is True


def _code_version(materialization: dg.EventLogEntry) -> str | None:
    return (materialization.asset_materialization.tags or {}).get(CODE_VERSION_TAG)


def sortings_to_rerun(instance: dg.DagsterInstance, campaign: Campaign, code_version: str) -> dict[str, str]:
    """The assigned sorting partitions to sort again, each with its reason.

    Parameters
    ----------
    instance : DagsterInstance
        Whose event log is read.
    campaign : Campaign
        Only its assigned (sorter, recording) pairs are considered.
    code_version : str
        The sorting asset's current code version.

    Returns
    -------
    dict
        ``{partition key: reason}``, reason ``"errored"`` or
        ``"older code version"``; in the spec's order.
    """
    assigned = [str(pair_key(s.name, r)) for s, r in campaign.jobs]
    if not assigned:
        return {}
    wanted = set(assigned)
    materialized = _latest_ids(instance, dg.DagsterEventType.ASSET_MATERIALIZATION, wanted)
    observed = _latest_ids(instance, dg.DagsterEventType.ASSET_OBSERVATION, wanted)
    failed = _latest_ids(instance, dg.DagsterEventType.ASSET_FAILED_TO_MATERIALIZE, wanted)
    latest: dict[str, tuple[int, str]] = {}  # partition -> (storage id, kind) of its latest event
    for kind, ids in ((_MATERIALIZED, materialized), (_OBSERVED, observed), (_FAILED, failed)):
        for partition, storage_id in ids.items():
            if partition not in latest or storage_id > latest[partition][0]:
                latest[partition] = (storage_id, kind)
    observations = _events(instance.fetch_observations, [i for i, kind in latest.values() if kind == _OBSERVED])
    materializations = _events(
        instance.fetch_materializations, [i for i, kind in latest.values() if kind == _MATERIALIZED]
    )
    busy = partitions_in_flight(instance)
    reruns = {}
    for partition in assigned:
        if partition not in latest or partition in busy:
            continue
        storage_id, kind = latest[partition]
        if kind == _FAILED or (kind == _OBSERVED and _is_errored(observations[storage_id])):
            reruns[partition] = ERRORED
        elif kind == _MATERIALIZED and _code_version(materializations[storage_id]) != code_version:
            reruns[partition] = OLD_CODE_VERSION
    return reruns


@dg.schedule(
    name=RERUN_SCHEDULE,
    cron_schedule=RERUN_CRON,
    job=sorting_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily: sort again the assigned pairs whose latest sort errored or failed, or was made by an "
    "older version of the sort engine. Nothing else runs.",
)
def rerun_sortings_schedule(
    context: dg.ScheduleEvaluationContext, studyset: StudysetResource, kachery: KacheryResource
):
    """Request again the assigned sortings whose latest attempt errored or ran an older code version."""
    try:
        campaign = studyset.campaign(kachery)
    except SfAssetsError as exc:
        return dg.SkipReason(" ".join(str(exc).splitlines()))
    code_version = sorting.code_versions_by_key[SORTING_KEY]
    reruns = sortings_to_rerun(context.instance, campaign, code_version)
    if not reruns:
        return dg.SkipReason(f"all {len(campaign.jobs)} assigned sortings are current or not yet run")
    return [
        dg.RunRequest(run_key=partition, partition_key=partition, tags={REASON_TAG: reason})
        for partition, reason in reruns.items()
    ]


SCHEDULES = [rerun_sortings_schedule]
