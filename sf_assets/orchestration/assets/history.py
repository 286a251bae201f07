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

PAGE = 1000


def _metadata_value(value: Any) -> Any:
    return getattr(value, "value", value)


def plain_metadata(event: dg.EventLogEntry) -> dict[str, Any]:
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
    """Latest event per partition: {partition: (storage_id, entry)}."""
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


def latest_metadata(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str) -> dict[str, Any] | None:
    """Metadata of the latest materialization of one partition, or None."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    )
    if not result.records:
        return None
    return plain_metadata(result.records[0].event_log_entry)


def latest_attempt_metadata(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str
) -> dict[str, Any] | None:
    """Metadata of one partition's latest event, materialization or observation (an errored attempt), or None."""
    latest = None
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        result = fetch(dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1)
        if result.records and (latest is None or result.records[0].storage_id > latest.storage_id):
            latest = result.records[0]
    return None if latest is None else plain_metadata(latest.event_log_entry)
