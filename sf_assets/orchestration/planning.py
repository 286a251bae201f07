"""The one planner: which (sorter, recording) pairs need sorting, and what must run first.

The command line, the studyset sensor, the re-run schedule and the sorting
asset itself all decide with these functions, so a pair counts as done, cached
or in progress the same way whoever looks:

* assigned: the spec assigns the pair (the campaign's jobs);
* recording current: the recording and ground truth partitions are
  materialized from the manifest's current recording URI;
* job cache: the pair's latest sorting attempt succeeded from the same inputs
  (the cache key: recording content, sorter, params, image, engine version)
  and its stored sorting object and firings verify in kachery (sha1);
* in flight: a queued or running run, or an unfinished backfill, will sort it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg
# No public API: the filter DagsterInstance.get_backfills takes, and backfill statuses.
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

from sf_assets.orchestration.assets.history import UNFINISHED_RUN_STATUSES, latest_partition_events, plain_metadata
from sf_assets.orchestration.assets.keys import SORTING_KEY
from sf_assets.core.campaign import Campaign
from sf_assets.core.manifest import Recording
from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.core.spec import SorterSpec
from sf_assets.engines.engine import EngineSettings, cache_key, container_image_for
from sf_assets.engines.job_cache import job_cache_verdict
from sf_assets.engines.provenance import code_versions
from sf_assets.orchestration.partitions import PARTITION_TAG, pair_key, recording_key, single_partition_of
from sf_assets.stores.kachery import KacheryStore


@dataclass
class Plan:
    """What a launch of ``pairs`` has to do.

    Attributes
    ----------
    cached : list[str]
        pair keys whose current sorting the job cache holds (not sorted again).
    to_compare : list[str]
        cached pair keys whose comparison is missing, older than their sorting (a run stopped between the
        two) or made against another ground truth (the manifest corrected it): compared again, not sorted.
    in_flight : list[str]
        pair keys another run or backfill is about to sort (not launched twice).
    to_sort : list[tuple[SorterSpec, Recording]]
        the pairs to sort, in the spec's order.
    recordings_to_run : list[str]
        recording keys of ``to_sort`` and ``cached`` whose recording or ground truth is not current (a
        manifest that changed their URI): their runs go first.
    compare_after : dict[str, list[str]]
        ``{recording key: [pair key, ...]}``: cached pairs to compare again once that recording's run
        has materialized its (changed) ground truth.
    """

    cached: list[str] = field(default_factory=list)
    to_compare: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    to_sort: list[tuple[SorterSpec, Recording]] = field(default_factory=list)
    recordings_to_run: list[str] = field(default_factory=list)
    compare_after: dict[str, list[str]] = field(default_factory=dict)


def expected_cache_key(
    sorter_spec: SorterSpec,
    rec: Recording,
    settings: EngineSettings,
    versions: tuple[tuple[str, str | None], ...] | None = None,
) -> str:
    """The cache key a sorting of this pair made now would carry.

    Parameters
    ----------
    sorter_spec : SorterSpec
        The sorter and its params.
    rec : Recording
        The recording.
    settings : EngineSettings
        The engine (its container image and job cache name count).
    versions : tuple or None
        The code's versions (see :func:`~sf_assets.engines.provenance.code_versions`);
        None: the ones installed here now.

    Returns
    -------
    str
        The key.
    """
    entry = resolve_sorter(sorter_spec.name)
    image = container_image_for(entry, settings)
    if versions is None:
        versions = code_versions(entry.package, in_container=image is not None)
    return cache_key(entry, dict(sorter_spec.params or {}), rec.recording_uri, image, settings.job_cache, versions)


def is_cache_hit(metadata: dict | None, expected_key: str, store: KacheryStore) -> bool:
    """Does the pair's latest sorting event vouch for a current sorting of these inputs?

    See :func:`~sf_assets.engines.job_cache.job_cache_verdict`: the latest
    attempt succeeded with ``expected_key``, and its sorting object and firings
    verify in ``store``.

    Parameters
    ----------
    metadata : dict or None
        The pair's latest sorting event's metadata.
    expected_key : str
        :func:`expected_cache_key` now.
    store : KacheryStore
        Where the cached sorting must verify.

    Returns
    -------
    bool
        True for a hit.
    """
    return job_cache_verdict(metadata, expected_key, store).hit


def partitions_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Sorting partitions that a queued or running run, or an unfinished backfill, will sort.

    Parameters
    ----------
    instance : DagsterInstance
        Whose runs, backfills and event log are read.

    Returns
    -------
    set[str]
        Sorting partition keys.
    """
    busy = set()
    for record in instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED_RUN_STATUSES)):
        run = record.dagster_run
        if run.asset_selection is not None and SORTING_KEY not in run.asset_selection:
            continue
        partition = single_partition_of(run.tags)
        if partition is not None:
            busy.add(partition)
    for backfill in instance.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])):
        data = backfill.asset_backfill_data
        if data is not None and SORTING_KEY in data.target_subset.asset_keys:
            busy.update(data.target_subset.get_partitions_subset(SORTING_KEY).get_partition_keys())
    return busy


def recordings_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Recording partitions that a queued or running ``recordings_job`` run will materialize.

    Parameters
    ----------
    instance : DagsterInstance
        Whose runs, backfills and event log are read.

    Returns
    -------
    set[str]
        Recording partition keys.
    """
    runs = instance.get_runs(dg.RunsFilter(job_name="recordings_job", statuses=UNFINISHED_RUN_STATUSES))
    return {run.tags[PARTITION_TAG] for run in runs if PARTITION_TAG in run.tags}


def current_recordings(instance: dg.DagsterInstance, recordings: Iterable[Recording]) -> set[str]:
    """Recording partitions whose recording and ground truth were materialized from the current URI.

    Parameters
    ----------
    instance : DagsterInstance
        Whose runs, backfills and event log are read.
    recordings : Iterable[Recording]
        The recordings to look at.

    Returns
    -------
    set[str]
        Their partition keys that need no new run.
    """
    recordings = list(recordings)
    keys = [recording_key(r) for r in recordings]
    rec_events = latest_partition_events(instance, dg.AssetKey("recording"), partitions=keys)
    gt_events = latest_partition_events(instance, dg.AssetKey("ground_truth"), partitions=keys)
    current = set()
    for rec, key in zip(recordings, keys):
        if key in rec_events and key in gt_events:
            recording_md, gt_md = plain_metadata(rec_events[key][1]), plain_metadata(gt_events[key][1])
            if recording_md.get("recording_uri") == rec.recording_uri and gt_md.get("ground_truth_uri") == rec.sorting_true_uri:
                current.add(key)
    return current


def plan_sorts(
    instance: dg.DagsterInstance,
    campaign: Campaign,
    settings: EngineSettings,
    pairs: Iterable[tuple[SorterSpec, Recording]] | None = None,
    *,
    store: KacheryStore,
    use_job_cache: bool = True,
) -> Plan:
    """Decide, for ``pairs`` (default: every pair the spec assigns), what to sort and what first.

    ``store`` is where cached sortings must verify (see :func:`is_cache_hit`).

    Parameters
    ----------
    instance : DagsterInstance
        Whose runs, backfills and event log are read.
    campaign : Campaign
        The validated manifest and spec.
    settings : EngineSettings
        The engine, for the cache keys.
    pairs : Iterable[tuple[SorterSpec, Recording]] or None
        The pairs to plan.
    store : KacheryStore
        Where cached sortings must verify.
    use_job_cache : bool
        False: sort every pair again.

    Returns
    -------
    Plan
        What is cached, to compare again, in flight, to sort, and which recordings run first.
    """
    pairs = list(campaign.jobs if pairs is None else pairs)
    plan = Plan()
    if not pairs:
        return plan
    keys = [str(pair_key(s.name, r)) for s, r in pairs]
    # Errored attempts (observations) too: a pair whose latest attempt errored is not cached.
    latest = (
        latest_partition_events(instance, SORTING_KEY, include_observations=True, partitions=keys)
        if use_job_cache
        else {}
    )
    busy = partitions_in_flight(instance)
    for (sorter_spec, rec), key in zip(pairs, keys):
        if key in busy:
            plan.in_flight.append(key)
        elif key in latest and is_cache_hit(
            plain_metadata(latest[key][1]), expected_cache_key(sorter_spec, rec, settings), store
        ):
            plan.cached.append(key)
        else:
            plan.to_sort.append((sorter_spec, rec))
    recording_of = {key: rec for (_, rec), key in zip(pairs, keys)}
    # The recordings of what is sorted, and of what is cached: a manifest that changed a recording's
    # ground truth leaves its sortings cached, but their comparisons must be made against the new one.
    needed = {recording_key(r): r for _, r in plan.to_sort}
    needed.update({recording_key(recording_of[k]): recording_of[k] for k in plan.cached})
    current = current_recordings(instance, needed.values())
    plan.recordings_to_run = [k for k in needed if k not in current]
    if plan.cached:
        compared = latest_partition_events(instance, dg.AssetKey("sorting_comparison"), partitions=plan.cached)
        # Only comparisons from before they recorded their ground truth need its events (one query).
        legacy = {recording_key(recording_of[k]) for k in compared if "ground_truth_uri" not in plain_metadata(compared[k][1])}
        truths = latest_partition_events(instance, dg.AssetKey("ground_truth"), partitions=list(legacy)) if legacy else {}
        for k in plan.cached:
            rec = recording_of[k]
            if recording_key(rec) not in current:  # a new ground truth: compared once it is materialized
                plan.compare_after.setdefault(recording_key(rec), []).append(k)
            elif k not in compared or compared[k][0] < latest[k][0] or _against_another_truth(
                compared[k], rec, truths.get(recording_key(rec))
            ):
                plan.to_compare.append(k)
    return plan


def _against_another_truth(comparison: tuple, rec: Recording, truth: tuple | None) -> bool:
    """Was this comparison made against another ground truth than the manifest's (one it has since corrected)?

    A comparison says which it used (``ground_truth_uri``); one from before it said so counts as
    made against another when the ground truth was materialized after it.
    """
    used = plain_metadata(comparison[1]).get("ground_truth_uri")
    if used is None:
        return truth is not None and comparison[0] < truth[0]
    return used != rec.sorting_true_uri


@dataclass
class Stages:
    """A plan as runs: what can be submitted now, and which sorts wait for which recording.

    Attributes
    ----------
    recordings : list[str]
        recording keys whose ``recordings_job`` run goes first.
    comparisons : list[str]
        pair keys compared again (``comparison_job``): cached sortings only.
    sorts : list[str]
        pair keys whose ``sorting_job`` run can be submitted now (their recording is current).
    waiting : dict[str, list[str]]
        ``{recording key: [pair key, ...]}``: sorts to submit once that recording is current.
    compare_after : dict[str, list[str]]
        ``{recording key: [pair key, ...]}``: comparisons (``comparison_job``) to submit once that
        recording is current (its ground truth changed under cached sortings).
    """

    recordings: list[str]
    comparisons: list[str]
    sorts: list[str]
    waiting: dict[str, list[str]]
    compare_after: dict[str, list[str]] = field(default_factory=dict)


def stages(plan: Plan, also_sort: Iterable[tuple[SorterSpec, Recording]] = ()) -> Stages:
    """Order ``plan`` (and ``also_sort``, pairs to submit anyway) as the command line and the sensor submit it.

    A sort goes out as soon as its recording is current, never before: the
    run of a pair whose recording is still to run would fail on a missing
    input, and waiting for *all* recordings would leave cores idle.

    Parameters
    ----------
    plan : Plan
        From :func:`plan_sorts`.
    also_sort : Iterable[tuple[SorterSpec, Recording]]
        Pairs to submit anyway.

    Returns
    -------
    Stages
        Recordings, comparisons and sorts to submit now, and the sorts waiting for each recording.
    """
    waiting: dict[str, list[str]] = {key: [] for key in plan.recordings_to_run}
    sorts = []
    for sorter_spec, rec in [*plan.to_sort, *also_sort]:
        key = str(pair_key(sorter_spec.name, rec))
        if recording_key(rec) in waiting:
            waiting[recording_key(rec)].append(key)
        else:
            sorts.append(key)
    compare_after = {key: list(pairs) for key, pairs in plan.compare_after.items()}
    return Stages(list(plan.recordings_to_run), list(plan.to_compare), sorts, waiting, compare_after)
