"""Run the asset graph for a campaign on a Dagster instance, one run per partition.

This is what ``sf-assets demo``, ``run-sortings`` and ``sort-sf-recordings``
do: register partitions, materialize the recordings, sort every assigned
(sorter, recording) pair that the job cache does not already hold, then
materialize the fan-in results.  Each partition is its own Dagster run on the
configured instance, so every run, its logs and its canary check show in the
UI, and a failed sort fails only its own run.  Runs execute on ``workers``
processes (slots), forked from one server that imported Dagster, the code
location and spikeinterface once.  The sorts themselves run on the host's sort
service (:mod:`sf_assets.engines.sort_service`), as every other run's do.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from sf_assets.assets.history import latest_partition_events, plain_metadata
from sf_assets.core.campaign import Campaign
from sf_assets.core.dispatch import AffinityQueue, Task
from sf_assets.core.labels import sorting_label
from sf_assets.core.manifest import Recording
from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.core.spec import SorterSpec
from sf_assets.engines.engine import EngineSettings, cache_key, container_image_for
from sf_assets.engines.job_cache import job_cache_verdict
from sf_assets.stores.kachery import KacheryStore
from sf_assets.orphaned_runs import fail_orphaned_runs, launcher_tags
from sf_assets.partitions import pair_key, recording_key


_NOT_ENGINE_FIELDS = {
    "spec_source",
    "manifest_source",
    "kachery_dir",
    "kachery_local_only",
    "workspace_db_url",
    "workspace_uri",
    "dry_run",
    "outputs_dir",
    "log_level",
}


@dataclass(frozen=True)
class RunOptions:
    """Everything a run's resources are configured with (shown in each run's config)."""

    spec_source: str
    kachery_dir: str
    work_root: str
    workspace_db_url: str
    outputs_dir: str
    manifest_source: str = ""
    kachery_local_only: bool = True
    workspace_uri: str = ""
    dry_run: bool = False
    timeout_min: float = 0.0
    canary_first_n_s: float = 5.0
    use_container: bool = False
    container_engine: str = "docker"
    use_job_cache: bool = True
    job_cache: str = "default-job-cache"
    use_slurm: bool = False
    slurm_partition: str = ""
    slurm_accept_shared_nodes: bool = False
    slurm_jobs_per_allocation: int = 6
    slurm_max_simultaneous_allocations: int = 5
    slurm_gpus_per_node: int = 0
    slurm_allocation_id: str = ""
    slurm_idle_release_s: float = 60.0
    slurm_allocation_time_min: float = 0.0
    # Local sorts go to the host's sort service (warm workers); False: a fresh process per sort.
    reuse_workers: bool = True
    threads_per_sort: int = 1
    service_slots: int = 0
    service_idle_exit_s: float = 600.0
    service_dir: str = ""
    # Level of each run's console log in this process ("": Dagster's default, DEBUG); the
    # event log, and so the UI, always keeps everything. WARNING keeps per-step DEBUG lines
    # off the terminal.
    log_level: str = "WARNING"

    @classmethod
    def from_settings(cls, settings, **overrides) -> "RunOptions":
        base = dict(
            spec_source=settings.spec_source,
            manifest_source=settings.manifest_source or "",
            kachery_dir=str(settings.kachery_dir),
            kachery_local_only=settings.kachery_local_only,
            work_root=str(settings.work_root),
            workspace_db_url=settings.workspace_db_url,
            outputs_dir=str(settings.outputs_dir),
        )
        base.update(overrides)
        return cls(**base)

    def run_config(self) -> dict[str, Any]:
        o = self
        engine = {
            f.name: getattr(o, f.name)
            for f in dataclasses.fields(o)
            if f.name
            not in _NOT_ENGINE_FIELDS
        }
        loggers = {"loggers": {"console": {"config": {"log_level": o.log_level}}}} if o.log_level else {}
        return {
            **loggers,
            "resources": {
                "kachery": {"config": {"root_dir": o.kachery_dir, "local_only": o.kachery_local_only}},
                "studyset": {"config": {"spec_source": o.spec_source, "manifest_source": o.manifest_source}},
                "sorting_engine": {"config": engine},
                "workspace": {
                    "config": {"db_url": o.workspace_db_url, "workspace_uri": o.workspace_uri, "dry_run": o.dry_run}
                },
                "outputs": {"config": {"folder": o.outputs_dir}},
            }
        }

    def engine_settings(self) -> EngineSettings:
        from sf_assets.resources import SortingEngineResource

        return SortingEngineResource(**self.run_config()["resources"]["sorting_engine"]["config"]).settings()


@dataclass
class RunOutcome:
    job_name: str
    partition_key: str | None
    success: bool
    run_id: str | None
    elapsed_s: float
    error: str | None = None


@dataclass
class CampaignOutcome:
    recordings: list[RunOutcome] = field(default_factory=list)
    sortings: list[RunOutcome] = field(default_factory=list)
    results: list[RunOutcome] = field(default_factory=list)
    cached_pairs: list[str] = field(default_factory=list)
    skipped_pairs: list[str] = field(default_factory=list)

    @property
    def failed_sortings(self) -> list[RunOutcome]:
        return [o for o in self.sortings if not o.success]


def execute_partition_run(
    instance_ref: Any,
    job_name: str,
    partition_key: str | None,
    run_config: dict,
    tags: dict[str, str] | None = None,
) -> RunOutcome:
    """Execute one run of ``job_name`` (in this process) on the instance."""
    from sf_assets.definitions import defs

    started = time.monotonic()
    instance = dg.DagsterInstance.from_ref(instance_ref) if instance_ref else dg.DagsterInstance.get()
    job = defs.resolve_job_def(job_name)
    key = None
    if partition_key is not None and "|" in partition_key:
        key = job.partitions_def.get_partition_key_from_str(partition_key)
    result = job.execute_in_process(
        instance=instance,
        partition_key=key or partition_key,
        run_config=run_config,
        raise_on_error=False,
        tags={**(tags or {}), **launcher_tags()},
    )
    error = None
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        if failures:
            info = failures[0].step_failure_data.error
            error = _user_error_message(info) if info else "step failed"
        else:
            error = "run failed"
    return RunOutcome(job_name, partition_key, result.success, result.run_id, time.monotonic() - started, error)


def _user_error_message(info: Any) -> str:
    """The asset's own error (e.g. a RecordingError naming the URI), not Dagster's wrapper around it."""
    while info.cause is not None and info.cls_name == "DagsterExecutionStepExecutionError":
        info = info.cause
    return info.message.strip()


def _run_in_order(
    ref: Any,
    rec_keys: list[str],
    plan: list[tuple[str, str]],
    run_config: dict,
    tags: dict[str, str] | None,
    rec_done: Callable[[RunOutcome, int, int], None],
    sort_done: Callable[[RunOutcome, int, int], None],
) -> tuple[list[RunOutcome], list[RunOutcome], list[str]]:
    """One run at a time, in this process: every recording, then the sorts of those that loaded."""
    recordings: list[RunOutcome] = []
    for key in rec_keys:
        recordings.append(execute_partition_run(ref, "recordings_job", key, run_config, tags))
        rec_done(recordings[-1], len(recordings), len(rec_keys))
    failed = {o.partition_key for o in recordings if not o.success}
    skipped = [key for key, rec_key in plan if rec_key in failed]
    sort_keys = [key for key, rec_key in plan if rec_key not in failed]
    sortings: list[RunOutcome] = []
    for key in sort_keys:
        sortings.append(execute_partition_run(ref, "sorting_job", key, run_config, tags))
        sort_done(sortings[-1], len(sortings), len(sort_keys))
    return recordings, sortings, skipped


# What every slot imports before its first run: loaded once in the server that forks
# the slots rather than once in each (a second or two of CPU per slot otherwise).
SLOT_PRELOAD = (
    "sf_assets.definitions",
    "sf_assets.data",
    "sf_assets.core.comparison",
    "spikeinterface.preprocessing",
    "spikeinterface.comparison",
)


def _prepare_pool_process(environ: dict[str, str], cwd: str) -> None:
    """Take the launching process's environment and folder.

    A slot is forked from a server started by the first launch of this
    process, so it would otherwise see that launch's environment and folder.
    """
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    import sf_assets.definitions  # noqa: F401  (preloaded: no cost unless the server could not)


def _run_pipelined(
    ref: Any,
    rec_keys: list[str],
    plan: list[tuple[str, str]],
    run_config: dict,
    tags: dict[str, str] | None,
    rec_done: Callable[[RunOutcome, int, int], None],
    sort_done: Callable[[RunOutcome, int, int], None],
    slots: list[ProcessPoolExecutor],
) -> tuple[list[RunOutcome], list[RunOutcome], list[str]]:
    """Recording runs first, each pair's sorting run as soon as its recording is current.

    Each slot (see :func:`_started_slots`) serves both kinds of run; sorts
    start while other recordings are still being fetched (no barrier between
    phases).  A slot gets its next run only when it is idle,
    chosen by :class:`~sf_assets.core.dispatch.AffinityQueue`: sorts go where
    their sorter is already compiled, or wait for that slot when compiling it
    elsewhere would take longer.  The sorts of a recording whose run
    failed are skipped.
    """
    from sf_assets.partitions import split_pair_key

    waiting: dict[str, list[Task]] = {key: [] for key in rec_keys}
    queue = AffinityQueue()
    for i, key in enumerate(rec_keys):
        queue.add(Task(key, i - len(rec_keys)))
    for i, (key, rec_key) in enumerate(plan):
        task = Task(key, i, sorter=split_pair_key(key)[0])
        if rec_key in waiting:
            waiting[rec_key].append(task)
        else:
            queue.add(task)
    recordings: list[RunOutcome] = []
    sortings: list[RunOutcome] = []
    skipped: list[str] = []
    busy: dict[Future, int] = {}

    def dispatch() -> None:
        for slot in sorted(set(range(len(slots))) - set(busy.values())):
            task = queue.take(slot)
            if task is None:
                continue
            job_name = "recordings_job" if task.is_recording else "sorting_job"
            busy[slots[slot].submit(execute_partition_run, ref, job_name, task.key, run_config, tags)] = slot

    dispatch()
    while busy:
        done, _ = wait(busy, return_when=FIRST_COMPLETED)
        for future in done:
            outcome = future.result()
            queue.finished(busy.pop(future), outcome.elapsed_s)
            if outcome.job_name == "recordings_job":
                recordings.append(outcome)
                follow = waiting.pop(outcome.partition_key)
                if outcome.success:
                    for task in follow:
                        queue.add(task)
                else:
                    skipped.extend(task.key for task in follow)
                rec_done(outcome, len(recordings), len(rec_keys))
            else:
                sortings.append(outcome)
                sort_done(outcome, len(sortings), len(plan) - len(skipped))
        dispatch()
    return recordings, sortings, skipped


def _slot_ready() -> None:
    """Nothing: submitted once so that a slot's process starts now."""


@contextlib.contextmanager
def _started_slots(count: int):
    """``count`` run slots, their processes started now; shut down on exit.

    Each slot is a process of its own (a one-process pool).  Slots are forked from
    multiprocessing's fork server, which imports :data:`SLOT_PRELOAD` once (a
    single-threaded process: forking it is safe, unlike forking a launch that
    may run threads), and are started before the launch's own studysets run so
    that starting them overlaps it.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(SLOT_PRELOAD))
    initargs = (dict(os.environ), os.getcwd())
    slots = [
        ProcessPoolExecutor(1, mp_context=context, initializer=_prepare_pool_process, initargs=initargs)
        for _ in range(count)
    ]
    try:
        for pool in slots:
            pool.submit(_slot_ready)
        yield slots
    finally:
        for pool in slots:
            pool.shutdown(wait=True, cancel_futures=True)


def cached_pairs(
    instance: dg.DagsterInstance, campaign: Campaign, options: RunOptions, pairs: Iterable[tuple[SorterSpec, Recording]]
) -> set[str]:
    """Pairs whose latest sorting succeeded with the same cache key as now and verifies in kachery."""
    pairs = list(pairs)
    if not options.use_job_cache or not pairs:
        return set()
    settings = options.engine_settings()
    store = KacheryStore(options.kachery_dir, options.kachery_local_only)
    latest = latest_partition_events(instance, dg.AssetKey("sorting"), include_observations=True)
    hits = set()
    for sorter_spec, rec in pairs:
        key = str(pair_key(sorter_spec.name, rec))
        if key not in latest:
            continue
        md = plain_metadata(latest[key][1])
        entry = resolve_sorter(sorter_spec.name)
        expected = cache_key(entry, dict(sorter_spec.params or {}), rec.recording_uri, container_image_for(entry, settings))
        if job_cache_verdict(md, expected, store).hit:  # else its sorting run says why
            hits.add(key)
    return hits


def _materialized_recordings(instance: dg.DagsterInstance, campaign: Campaign) -> set[str]:
    """Recording partitions whose recording and ground truth are current."""
    from sf_assets.core.uris import parse_uri

    current = set()
    rec_events = latest_partition_events(instance, dg.AssetKey("recording"))
    gt_events = latest_partition_events(instance, dg.AssetKey("ground_truth"))
    for rec in campaign.recordings():
        key = recording_key(rec)
        if key in rec_events and key in gt_events:
            md = plain_metadata(rec_events[key][1])
            if md.get("recording_uri") == rec.recording_uri:
                current.add(key)
    return current


@contextlib.contextmanager
def slurm_allocations_for(options: RunOptions):
    """With --use-slurm, end the campaign's idle Slurm allocations when the launch ends or is interrupted.

    The allocations themselves are requested by the sorts as they arrive
    (:mod:`sf_assets.engines.slurm_pool`); without Slurm nothing happens.
    """
    from sf_assets.engines.slurm_campaign import campaign_allocations

    with campaign_allocations(options.engine_settings()):
        yield options


def launch_campaign(
    instance: dg.DagsterInstance,
    campaign: Campaign,
    options: RunOptions,
    *,
    workers: int = 2,
    pairs: list[tuple[SorterSpec, Recording]] | None = None,
    run_results: bool = True,
    progress: Callable[[str], None] | None = None,
    on_sorting_done: Callable[[RunOutcome], None] | None = None,
    tags: dict[str, str] | None = None,
) -> CampaignOutcome:
    """Materialize the campaign (or the given pairs) and its results; ``tags`` go on every run."""
    from sf_assets.assets.studysets import register_partitions

    say = progress or (lambda _msg: None)
    outcome = CampaignOutcome()
    run_config = options.run_config()
    orphans = fail_orphaned_runs(instance)
    if orphans:
        say(f"{len(orphans)} run(s) left started by a launch that died marked failed: {', '.join(orphans)}")
    register_partitions(instance, campaign)

    pairs = list(campaign.jobs if pairs is None else pairs)
    hits = cached_pairs(instance, campaign, options, pairs)
    outcome.cached_pairs = sorted(hits)
    to_sort = [(s, r) for s, r in pairs if str(pair_key(s.name, r)) not in hits]
    if hits:
        say(f"job cache {options.job_cache!r}: {len(hits)} sorting(s) unchanged, not sorted again")

    needed = {recording_key(r): r for _, r in to_sort}
    current = _materialized_recordings(instance, campaign)
    rec_keys = [k for k in needed if k not in current]
    plan = [(str(pair_key(s.name, r)), recording_key(r)) for s, r in to_sort]

    def rec_done(o: RunOutcome, i: int, n: int) -> None:
        say(f"[recordings {i}/{n}] {o.partition_key}: {'ok' if o.success else 'FAILED: ' + (o.error or '')}")

    def sort_done(o: RunOutcome, i: int, n: int) -> None:
        from sf_assets.partitions import split_pair_key

        sorter_name, label = split_pair_key(o.partition_key)
        state = "ok" if o.success else "FAILED: " + (o.error or "")
        say(f"[sortings {i}/{n}] {sorter_name}/{label}: {state} ({o.elapsed_s:.1f} s)")
        if on_sorting_done:
            on_sorting_done(o)

    ref = instance.get_ref()
    num_slots = min(workers, len(rec_keys) + len(plan)) if workers > 1 else 0
    with slurm_allocations_for(options), _started_slots(num_slots) as slots:
        outcome.results.append(execute_partition_run(ref, "studysets_job", None, run_config, tags))
        if slots:
            runs = _run_pipelined(ref, rec_keys, plan, run_config, tags, rec_done, sort_done, slots)
        else:
            runs = _run_in_order(ref, rec_keys, plan, run_config, tags, rec_done, sort_done)
    outcome.recordings, outcome.sortings, outcome.skipped_pairs = runs
    if run_results:
        outcome.results.append(execute_partition_run(ref, "results_job", None, run_config, tags))
    return outcome


def pair_labels(pairs: Iterable[tuple[SorterSpec, Recording]]) -> list[str]:
    return [sorting_label(s.name, r.study_name, r.name) for s, r in pairs]
