"""Read what earlier materializations recorded, straight from the event log.

Fan-in assets (summary, records, workspace sync) and the job cache need the
latest metadata of many partitions.  Reading the event log, instead of loading
inputs through an IO manager, lets them read only the pairs the spec assigns
(an input over all partitions would wait forever for unassigned cells) and
see errored sorts, which are recorded as observations.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dagster as dg

from sf_assets.core.records import SortingRecord
from sf_assets.orchestration.assets.keys import SORTING_KEY

PAGE = 1000
UNFINISHED_RUN_STATUSES = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]
"""A run in one of these may still land materializations (queued, starting or running)."""


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)


def plain_metadata(event: dg.EventLogEntry) -> dict[str, Any]:
    """An event's metadata as plain Python values, as the planner, the records and the viewer read it.

    Parameters
    ----------
    event : EventLogEntry
        A materialization or an observation.

    Returns
    -------
    dict
        Metadata key -> value (``MetadataValue`` wrappers removed).
    """
    data = event.dagster_event.event_specific_data
    m = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
    return {k: _metadata_value(v) for k, v in (m.metadata or {}).items()}


def latest_partition_events(
    instance: dg.DagsterInstance,
    asset_key: dg.AssetKey,
    *,
    include_observations: bool = False,
    partitions: Iterable[str] | None = None,
) -> dict[str, tuple[int, dg.EventLogEntry]]:
    """Latest event per partition: {partition: (storage_id, entry)}.

    Parameters
    ----------
    instance : DagsterInstance
        Whose runs, backfills and event log are read.
    asset_key : AssetKey
        The asset.
    include_observations : bool
        Also consider observations (errored sorts).
    partitions : Iterable[str] or None
        Only these partitions (None: all).

    Returns
    -------
    dict[str, tuple[int, EventLogEntry]]
        Partitions without events are absent.
    """
    wanted = None if partitions is None else set(partitions)
    latest: dict[str, tuple[int, dg.EventLogEntry]] = {}
    fetchers = [instance.fetch_materializations]
    if include_observations:
        fetchers.append(instance.fetch_observations)
    for fetch in fetchers:
        cursor = None
        while True:
            result = fetch(dg.AssetRecordsFilter(asset_key=asset_key), limit=PAGE, cursor=cursor)
            for record in result.records:
                partition = record.partition_key
                if partition is None or (wanted is not None and partition not in wanted):
                    continue
                seen = latest.get(partition)
                if seen is None or record.storage_id > seen[0]:
                    latest[partition] = (record.storage_id, record.event_log_entry)
            if not result.has_more:
                break
            cursor = result.cursor
    return latest


def latest_partition_record(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str, *, include_observations: bool = False
) -> dg.EventLogRecord | None:
    """One partition's newest event: the one place that decides which event is the latest.

    Parameters
    ----------
    instance : DagsterInstance
        Whose event log is read.
    asset_key : AssetKey
        The asset.
    partition : str
        The partition key.
    include_observations : bool
        Also consider observations (an errored sort is recorded as one).

    Returns
    -------
    EventLogRecord or None
        The event with the highest storage id, or None when there is none.
    """
    fetchers = [instance.fetch_materializations]
    if include_observations:
        fetchers.append(instance.fetch_observations)
    latest = None
    for fetch in fetchers:
        result = fetch(dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1)
        if result.records and (latest is None or result.records[0].storage_id > latest.storage_id):
            latest = result.records[0]
    return latest


def latest_metadata(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str, *, include_observations: bool = False
) -> dict[str, Any] | None:
    """Metadata of one partition's latest event, to compare a new attempt with the last one.

    Parameters
    ----------
    instance : DagsterInstance
        Whose event log is read.
    asset_key : AssetKey
        The asset.
    partition : str
        The partition key.
    include_observations : bool
        Also consider observations: the latest attempt, errored ones included.

    Returns
    -------
    dict or None
        The metadata values as plain Python values; None when there is no event.
    """
    latest = latest_partition_record(instance, asset_key, partition, include_observations=include_observations)
    return None if latest is None else plain_metadata(latest.event_log_entry)


def latest_sorting_record(instance: dg.DagsterInstance, partition: str) -> SortingRecord | None:
    """The ``run_sortings.py`` record of a sorting partition's latest attempt, sorted or errored.

    Parameters
    ----------
    instance : DagsterInstance
        Whose event log is read.
    partition : str
        The sorting partition key (sorter x recording).

    Returns
    -------
    SortingRecord or None
        None when the partition has no event carrying a record.

    Raises
    ------
    RecordError
        If the stored record is malformed (naming the partition).
    """
    metadata = latest_metadata(instance, SORTING_KEY, partition, include_observations=True)
    if metadata is None or "record" not in metadata:
        return None
    return SortingRecord.from_json_dict(metadata["record"], where=f"sorting[{partition}]")
