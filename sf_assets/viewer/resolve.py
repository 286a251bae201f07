"""Find what a label names, in the workspace database and the Dagster event log.

The Dagster layer of the viewer: it reads the latest ``sorting``,
``sorting_comparison`` and ``ground_truth`` events of the label's partitions
(the same reads the fan-in assets make) and never writes.
"""
from __future__ import annotations

import dagster as dg

from sf_assets.orchestration.assets.history import latest_partition_events, plain_metadata
from sf_assets.core.errors import ViewerError
from sf_assets.core.labels import GROUND_TRUTH, label_to_partition_key, recording_label
from sf_assets.core.workspace_plan import GROUND_TRUTH as GROUND_TRUTH_ENTRY
from sf_assets.core.workspace_plan import SORTING as SORTING_ENTRY
from sf_assets.stores.workspace import WorkspaceStore
from sf_assets.viewer.target import (
    ERRORED_SORTING,
    GROUND_TRUTH_KIND,
    SORTING,
    ViewTarget,
    split_label,
    unknown_label,
)

DEFAULT_WORKSPACE_NAME = "default"  # the one workspace_sync fills unless configured otherwise


def _latest(instance, asset: str, partitions: list[str] | None = None, observations: bool = False):
    return latest_partition_events(instance, dg.AssetKey(asset), include_observations=observations, partitions=partitions)


def resolve_target(label: str, store: WorkspaceStore, instance: dg.DagsterInstance, workspace_uri: str = "") -> ViewTarget:
    """The :class:`ViewTarget` of ``label``.

    Parameters
    ----------
    label : str
        ``SORTER/STUDY/RECORDING`` or ``Ground-Truth/STUDY/RECORDING``.
    store : WorkspaceStore
        The workspace database.
    instance : DagsterInstance
        Where the sortings, comparisons and ground truths were recorded.
    workspace_uri : str
        The workspace to look in; empty: the default workspace ``workspace_sync`` fills.

    Raises
    ------
    ViewerError
        Malformed or unknown label, or no workspace.
    WorkspaceError
        A workspace URI that does not exist.
    """
    first, study, recording = split_label(label)
    uri = workspace_uri or store.workspace_by_name(DEFAULT_WORKSPACE_NAME)
    if not uri:
        raise ViewerError(
            f"workspace database {store.where}: no workspace named {DEFAULT_WORKSPACE_NAME!r} yet "
            "(workspace_sync creates it when the first sortings land); pass -W workspace://... to choose one"
        )
    entries = {e.label: e for e in store.list_entries(uri)}
    where = f"workspace {uri} (database {store.where})"
    rec_label = recording_label(study, recording)
    rec_key = label_to_partition_key(rec_label)
    gt_events = _latest(instance, "ground_truth", [rec_key])
    snrs_uri = plain_metadata(gt_events[rec_key][1]).get("snrs_uri", "") if rec_key in gt_events else ""
    entry = entries.get(label)

    if first == GROUND_TRUTH:
        if entry is None or entry.kind != GROUND_TRUTH_ENTRY:
            raise unknown_label(label, _viewable(entries), where)
        comparisons = {}
        for _, event in _latest(instance, "sorting_comparison").values():
            md = plain_metadata(event)
            if (md.get("study"), md.get("recording")) == (study, recording):
                comparisons[md["sorter"]] = md["comparison_uri"]
        return ViewTarget(
            label=label,
            kind=GROUND_TRUTH_KIND,
            recording_uri=_recording_uri(entries, entry.details.get("recording_label", rec_label), uri),
            sorting_uri=entry.uri,
            comparisons=comparisons,
            snrs_uri=snrs_uri,
        )

    pair = str(dg.MultiPartitionKey({"recording": rec_key, "sorter": label_to_partition_key(first)}))
    if entry is None or entry.kind != SORTING_ENTRY:
        latest = _latest(instance, "sorting", [pair], observations=True).get(pair)
        md = plain_metadata(latest[1]) if latest else {}
        if md.get("errored"):
            return ViewTarget(
                label=label,
                kind=ERRORED_SORTING,
                console_out_uri=md.get("console_out_uri", ""),
                failure=md.get("failure_class", "unclassified"),
            )
        raise unknown_label(label, _viewable(entries), where)
    # The comparison belongs to this sorting only if it came after the materialization of this very object.
    sorted_events = [
        storage_id
        for storage_id, event in _materializations(instance, "sorting", pair)
        if plain_metadata(event).get("sorting_object_uri") == entry.uri
    ]
    comparison_uri = ""
    compared = _latest(instance, "sorting_comparison", [pair]).get(pair)
    if compared and sorted_events and compared[0] > max(sorted_events):
        comparison_uri = plain_metadata(compared[1]).get("comparison_uri", "")
    return ViewTarget(
        label=label,
        kind=SORTING,
        recording_uri=_recording_uri(entries, entry.details.get("recording_label", rec_label), uri),
        sorting_uri=entry.uri,
        comparison_uri=comparison_uri,
        snrs_uri=snrs_uri,
    )


def _materializations(instance, asset: str, partition: str):
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=100
    )
    return [(r.storage_id, r.event_log_entry) for r in result.records]


def _recording_uri(entries: dict, rec_label: str, workspace_uri: str) -> str:
    entry = entries.get(rec_label)
    if entry is None:
        raise ViewerError(f"workspace {workspace_uri}: holds no recording labelled {rec_label!r}")
    return entry.uri


def _viewable(entries: dict) -> list[str]:
    return [label for label, e in entries.items() if e.kind in (SORTING_ENTRY, GROUND_TRUTH_ENTRY)]
