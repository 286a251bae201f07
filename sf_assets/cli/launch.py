"""The command line's launches: runs submitted to the instance's queue, like every other launcher.

This is what ``sf-assets demo``, ``run-sortings`` and ``sort-sf-recordings``
do: register partitions, ask the planner (:mod:`sf_assets.orchestration.planning`) what to
sort, then submit one run per partition to the configured Dagster instance
through the webserver's own GraphQL ``launchRun`` mutation (executed in this
process against the code location): the recordings first, each pair's sorting
run (sort and comparison) as soon as its recording is current, the fan-in
results last.  From there the runs take the path every run takes: the run
queue (its concurrency limits, one run per partition at a time), the
project's run launcher, a process forked in the host's sort service, warm sort
workers.  So a command-line run shows in the UI as it runs and can be
terminated there, and a launch beside a UI backfill shares the host's sort
slots instead of oversubscribing the cores.

When no Dagster daemon serves the instance (no ``make ui``), the launch
dequeues its runs itself with Dagster's own queue logic, so one command still
does everything.  Its runs carry a lease (its process's identity): when the
command line dies, the sort service ends its runs, and a queued run of a dead
launch is canceled as soon as it is dequeued.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dagster as dg

from sf_assets.core.campaign import Campaign
from sf_assets.core.errors import SfAssetsError
from sf_assets.core.labels import sorting_label
from sf_assets.core.launcher_identity import this_process
from sf_assets.core.manifest import Recording
from sf_assets.core.spec import SorterSpec
from sf_assets.engines.engine import EngineSettings
from sf_assets.orchestration.partitions import pair_key
from sf_assets.cli.environment import start_in_background
from sf_assets.cli.progress import CampaignCounts

if TYPE_CHECKING:
    from sf_assets.orchestration.planning import Plan


def _engine_fields() -> list[tuple[str, type, Any]]:
    """The ``sorting_engine`` resource's config fields, declared once, there (``work_root`` is above)."""
    from sf_assets.orchestration.resources import SortingEngineResource

    return [
        (name, info.annotation, dataclasses.field(default=info.default))
        for name, info in SortingEngineResource.model_fields.items()
        if name != "work_root"
    ]


class _RunOptionsMethods:
    """Everything a run's resources are configured with (shown in each run's config).

    The stores' settings are declared here; the engine's fields are the
    ``sorting_engine`` resource's own (:class:`sf_assets.orchestration.resources.SortingEngineResource`),
    added by :func:`dataclasses.make_dataclass`, so the two cannot drift apart.
    ``log_level`` is the level of each run's console log ("": Dagster's default); the
    event log, and so the UI, always keeps everything.
    """

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
        engine = {"work_root": o.work_root, **{name: getattr(o, name) for name, _, _ in _engine_fields()}}
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
        from sf_assets.orchestration.resources import SortingEngineResource

        return SortingEngineResource(**self.run_config()["resources"]["sorting_engine"]["config"]).settings()



RunOptions = dataclasses.make_dataclass(
    "RunOptions",
    [
        ("spec_source", str),
        ("kachery_dir", str),
        ("work_root", str),
        ("workspace_db_url", str),
        ("outputs_dir", str),
        ("manifest_source", str, dataclasses.field(default="")),
        ("kachery_local_only", bool, dataclasses.field(default=True)),
        ("workspace_uri", str, dataclasses.field(default="")),
        ("dry_run", bool, dataclasses.field(default=False)),
        *_engine_fields(),
        ("log_level", str, dataclasses.field(default="WARNING")),
    ],
    bases=(_RunOptionsMethods,),
    frozen=True,
)
RunOptions.__module__ = __name__
RunOptions.__doc__ = _RunOptionsMethods.__doc__


@dataclass
class RunOutcome:
    """How one run of the launch ended, for its progress line and the exit code."""

    job_name: str
    partition_key: str | None
    success: bool
    run_id: str | None
    elapsed_s: float
    error: str | None = None


@dataclass
class CampaignOutcome:
    """Every run a launch made, by kind, and the pairs it did not need to sort."""

    recordings: list[RunOutcome] = field(default_factory=list)
    sortings: list[RunOutcome] = field(default_factory=list)
    results: list[RunOutcome] = field(default_factory=list)
    comparisons: list[RunOutcome] = field(default_factory=list)
    cached_pairs: list[str] = field(default_factory=list)
    skipped_pairs: list[str] = field(default_factory=list)

    @property
    def failed_sortings(self) -> list[RunOutcome]:
        """The sorting runs that failed: each makes the command exit 1."""
        return [o for o in self.sortings if not o.success]


LOCATION_NAME = "sf_assets.definitions"
"""The code location's name in ``workspace.yaml`` (a ``python_module`` entry is named after its module)."""
REPOSITORY_NAME = "__repository__"
DAEMON_HEARTBEAT_FRESH_S = 90.0
"""A queue daemon whose last heartbeat is older than this is taken to be gone (it beats every 30 s)."""
POLL_S = 0.2

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""


class LaunchError(SfAssetsError):
    """The instance cannot take the launch's runs (its run launcher, an invalid config)."""


@contextlib.contextmanager
def code_location(instance: dg.DagsterInstance):
    """The project's code location loaded in this process, as the webserver and daemon load it.

    Parameters
    ----------
    instance : DagsterInstance
        The instance the location's runs are submitted to.

    Yields
    ------
    WorkspaceProcessContext
        The workspace context holding the location (closed on exit).
    """
    # No public API loads a code location in-process (the daemon's own workspace context).
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=LOCATION_NAME, working_directory=os.getcwd()),
        location_name=LOCATION_NAME,
    )
    # No public API loads a code location for launching runs outside the webserver and daemons.
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        yield context


def queue_daemon_is_running(instance: dg.DagsterInstance) -> bool:
    """Does a Dagster daemon (``make ui``, ``dagster-daemon run``) dequeue this instance's runs?

    Parameters
    ----------
    instance : DagsterInstance
        The instance.

    Returns
    -------
    bool
        True when the queue daemon's heartbeat is recent.
    """
    heartbeat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    return heartbeat is not None and time.time() - heartbeat.timestamp < DAEMON_HEARTBEAT_FRESH_S


@contextlib.contextmanager
def dequeuing(context, instance: dg.DagsterInstance, settings: EngineSettings):
    """Dequeue the instance's runs from this process while no daemon does (Dagster's own queue logic).

    Only one launch on this host dequeues an instance at a time (a lock in the host's private
    sf-assets folder): two dequeuers would each see a pair's concurrency slot free and start two
    runs of it.  A launch that finds the lock taken leaves its runs to the holder, and takes over
    if the holder ends first.

    The holder also does what the daemon's run monitoring would (where ``dagster.yaml`` enables
    it), every ``poll_interval_seconds``: a run whose run process is gone is failed, and so is a
    run left starting past ``start_timeout_seconds`` (its launcher killed between Dagster marking
    it starting and the sort service taking it), so it does not hold its partition's place in the
    queue for good.

    Parameters
    ----------
    context : WorkspaceProcessContext
        The code location, for the runs' launch.
    instance : DagsterInstance
        The instance whose queue is dequeued.
    settings : EngineSettings
        Where the host's private folder (and so the lock) is.

    Yields
    ------
    None
        While the launch waits for its runs.
    """
    if queue_daemon_is_running(instance):
        yield
        return
    # No public API: Dagster's queue logic exists only as its daemon; running it here keeps the
    # coordinator's concurrency limits (max_concurrent_runs, per-partition) exactly as configured.
    import fcntl
    import hashlib

    from dagster import serialize_value
    from dagster._daemon.daemon import MonitoringDaemon
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    from sf_assets.engines.service_address import host_folder

    identity = hashlib.sha1(serialize_value(instance.get_ref()).encode()).hexdigest()[:16]
    lock_fd = os.open(host_folder(settings.service()) / f"dequeue-{identity}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    stop = threading.Event()

    def loop() -> None:
        holding, monitored_at = False, -math.inf
        monitoring = instance.run_monitoring_enabled
        with (
            QueuedRunCoordinatorDaemon(interval_seconds=1) as daemon,
            MonitoringDaemon(interval_seconds=instance.run_monitoring_poll_interval_seconds) as monitor,
        ):
            while not stop.is_set():
                if not holding:
                    try:
                        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        holding = True
                    except BlockingIOError:
                        stop.wait(POLL_S)
                        continue
                list(daemon.run_iteration(context))
                if monitoring and time.monotonic() - monitored_at >= monitor.interval_seconds:
                    monitored_at = time.monotonic()
                    try:
                        list(monitor.run_iteration(context))  # errors per run are logged and yielded
                    except Exception as error:  # noqa: BLE001 - the instance unreachable: try at the next pass
                        logging.getLogger(__name__).warning("sf-assets: run monitoring pass failed: %r", error)
                stop.wait(POLL_S)

    thread = threading.Thread(target=loop, name="sf-assets-dequeue", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
        os.close(lock_fd)  # releases the lock


@functools.cache
def _graphql_schema():
    """The webserver's GraphQL schema, built once per process as the webserver builds it.

    ``dagster_graphql.cli.execute_query`` builds it anew for every query: about
    0.4 s of CPU per launched run, taken from the sorts on a small machine.
    """
    from dagster_graphql.schema import create_schema

    return create_schema()


def execute_graphql(context, query: str, variables: dict) -> dict:
    """Run one GraphQL operation against the code location, as a request to the webserver would.

    Parameters
    ----------
    context : WorkspaceProcessContext
        The code location and instance.
    query : str
        The operation.
    variables : dict
        Its variables.

    Returns
    -------
    dict
        The answer: ``data`` and, where it failed, ``errors``.
    """
    import asyncio

    result = asyncio.run(
        _graphql_schema().execute_async(query, context_value=context.create_request_context(), variable_values=variables)
    )
    return result.formatted


@dataclass
class Submitter:
    """Creates and queues runs of the project's jobs, as the UI's Launch button does."""

    context: Any
    run_config: dict
    tags: dict[str, str]

    def submit(self, job_name: str, partition_key: str | None = None) -> str:
        """Submit one run through the GraphQL ``launchRun`` mutation, as the UI's Launch button does.

        Parameters
        ----------
        job_name : str
            The job to run.
        partition_key : str or None
            Its partition (a pair key ``recording|sorter`` is tagged with both dimensions).

        Returns
        -------
        str
            The run id.
        """
        tags = dict(self.tags)
        if partition_key is not None:
            tags["dagster/partition"] = partition_key
            if "|" in partition_key:  # a (recording, sorter) pair: its dimensions, as Dagster tags them
                rec_part, sorter_part = partition_key.split("|", 1)
                tags["dagster/partition/recording"] = rec_part
                tags["dagster/partition/sorter"] = sorter_part
        params = {
            "selector": {"repositoryLocationName": LOCATION_NAME, "repositoryName": REPOSITORY_NAME, "jobName": job_name},
            "runConfigData": self.run_config,
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        answer = execute_graphql(self.context, LAUNCH_RUN, {"executionParams": params})
        result = (answer.get("data") or {}).get("launchRun") or {}
        if result.get("__typename") == "LaunchRunSuccess":
            return result["run"]["runId"]
        detail = result.get("message") or "; ".join(e["message"] for e in result.get("errors", [])) or answer
        load_error = self.context.create_request_context().get_code_location_error(LOCATION_NAME)
        if load_error is not None:
            detail = f"the code location {LOCATION_NAME} failed to load: {load_error.message}"
        raise LaunchError(f"{job_name} {partition_key or ''}: the instance refused the run: {detail}")


def run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    """The asset's own error for a failed run (e.g. a RecordingError naming the URI), else the run's.

    Parameters
    ----------
    instance : DagsterInstance
        The instance.
    run_id : str
        A failed run.

    Returns
    -------
    str
        The error message a user reads first.
    """
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        info = record.event_log_entry.dagster_event.step_failure_data.error
        if info is not None:
            return _user_error_message(info)
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records:
        return record.event_log_entry.dagster_event.message or "run failed"
    return "run failed"


def _user_error_message(info: Any) -> str:
    """The asset's own error, not Dagster's wrapper around it."""
    while info.cause is not None and info.cls_name == "DagsterExecutionStepExecutionError":
        info = info.cause
    return info.message.strip()


FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass
class _Tracked:
    job_name: str
    partition_key: str | None


class RunTracker:
    """This launch's runs: how many are unfinished, and which ended since the last look."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self.runs: dict[str, _Tracked] = {}

    def add(self, run_id: str, job_name: str, partition_key: str | None) -> None:
        """Follow a submitted run until it finishes.

        Parameters
        ----------
        run_id : str
            The run.
        job_name : str
            Its job, for its outcome.
        partition_key : str or None
            Its partition, for its outcome.
        """
        self.runs[run_id] = _Tracked(job_name, partition_key)

    def finished(self) -> list[RunOutcome]:
        """The followed runs that finished since the last look (each reported once).

        Returns
        -------
        list[RunOutcome]
            Their outcomes, with the error of each failed one.
        """
        if not self.runs:
            return []
        records = self.instance.get_run_records(dg.RunsFilter(run_ids=list(self.runs)))
        done = []
        for record in records:
            run = record.dagster_run
            if run.status not in FINISHED:
                continue
            tracked = self.runs.pop(run.run_id)
            ok = run.status == dg.DagsterRunStatus.SUCCESS
            elapsed = (record.end_time or time.time()) - (record.start_time or record.create_timestamp.timestamp())
            error = None if ok else ("canceled" if run.status == dg.DagsterRunStatus.CANCELED else run_error(self.instance, run.run_id))
            done.append(RunOutcome(tracked.job_name, tracked.partition_key, ok, run.run_id, elapsed, error))
        return done

    def stop_all(self) -> None:
        """Cancel what is still queued and terminate what runs (the launch was interrupted)."""
        for run_id in list(self.runs):
            run = self.instance.get_run_by_id(run_id)
            if run is None or run.status in FINISHED:
                continue
            if run.status in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED):
                self.instance.report_run_canceled(run, message="Canceled: the command line that launched it was interrupted.")
            else:
                self.instance.run_launcher.terminate(run_id)


@contextlib.contextmanager
def slurm_allocations_for(options: RunOptions):
    """With --use-slurm, end the campaign's idle Slurm allocations when the launch ends or is interrupted.

    The allocations themselves are requested when the campaign is planned
    (:class:`~sf_assets.engines.slurm_campaign.Anticipation`, in
    :func:`launch_campaign`) and by the sorts that find no free slot as they
    arrive (:mod:`sf_assets.engines.slurm_pool`); without Slurm nothing happens.

    Parameters
    ----------
    options : RunOptions
        The launch's options (``use_slurm`` and the allocation shape).

    Yields
    ------
    RunOptions
        ``options``, while the launch runs.
    """
    from sf_assets.engines.slurm_campaign import campaign_allocations

    with campaign_allocations(options.engine_settings()):
        yield options


def launch_campaign(
    instance: dg.DagsterInstance,
    campaign: Campaign,
    options: RunOptions,
    *,
    workers: int = 4,
    pairs: list[tuple[SorterSpec, Recording]] | None = None,
    run_results: bool = True,
    progress: Callable[[str], None] | None = None,
    on_plan: Callable[["Plan"], None] | None = None,
    on_sorting_done: Callable[[RunOutcome], None] | None = None,
    on_counts: Callable[["CampaignCounts"], None] | None = None,
    tags: dict[str, str] | None = None,
) -> CampaignOutcome:
    """Sort the campaign (or the given pairs) on ``instance``; ``tags`` go on every run.

    ``workers`` bounds how many of this launch's sorts run at once on the
    host's sort service (``sorts_at_once``); the launch keeps up to the run
    queue's ``max_concurrent_runs`` runs queued or running, so when a sort
    ends the next one is already waiting in the service, where sorter
    affinity picks it.  The instance's run queue and the service's slots
    bound the rest.
    ``progress`` gets a line per finished run, ``on_counts`` the launch's counts
    after every look at its runs (for a live display).

    Parameters
    ----------
    instance : DagsterInstance
        The instance the runs are submitted to and queued on.
    campaign : Campaign
        The validated manifest and spec.
    options : RunOptions
        Every run's resource configuration.
    workers : int
        This launch's runs queued or running at once.
    pairs : list[tuple[SorterSpec, Recording]] or None
        The pairs to sort (None: every pair the spec assigns).
    run_results : bool
        Also run the summary, the records and the workspace sync at the end.
    progress : callable or None
        Gets one line per finished run.
    on_plan : callable or None
        Gets the plan (what is cached, in flight, to sort) before any run starts.
    on_sorting_done : callable or None
        Gets each sorting run's outcome as it finishes.
    on_counts : callable or None
        Gets the launch's counts after every look at its runs.
    tags : dict[str, str] or None
        Tags for every run.

    Returns
    -------
    CampaignOutcome
        Every run's outcome, and the pairs cached or skipped.

    Raises
    ------
    LaunchError
        If the instance refuses a run, or its run launcher launches only through a code server.
    """
    from sf_assets.orchestration.assets.studysets import register_partitions
    from sf_assets.orchestration.planning import plan_sorts, stages
    from sf_assets.stores.kachery import KacheryStore
    from sf_assets.orchestration.launches import CAMPAIGN_TAG, LEASE_TAG, campaign_tag_value, queue_capacity
    from sf_assets.engines.slurm_campaign import Anticipation

    if type(instance.run_launcher) is dg.DefaultRunLauncher:
        # It launches only through a code server, which a command-line launch does not start.
        raise LaunchError(
            "the Dagster instance uses Dagster's default run launcher; sf-assets launches need the project's "
            "(run_launcher: sf_assets.orchestration.run_launcher.SortServiceRunLauncher, as in the checkout's dagster.yaml) "
            "or another that starts runs itself (DockerRunLauncher)"
        )
    from sf_assets.orchestration.run_launcher import SortServiceRunLauncher

    if isinstance(instance.run_launcher, SortServiceRunLauncher):
        # Errors surface where the first run is launched; this only starts the service sooner.
        start_in_background(instance.run_launcher.start_service)
    say = progress or (lambda _msg: None)
    outcome = CampaignOutcome()
    register_partitions(instance, campaign)
    store = KacheryStore(options.kachery_dir, options.kachery_local_only)
    plan = plan_sorts(
        instance, campaign, options.engine_settings(), pairs, store=store, use_job_cache=options.use_job_cache
    )
    outcome.cached_pairs = sorted(plan.cached)
    if on_plan:
        on_plan(plan)
    if plan.cached:
        say(f"job cache {options.job_cache!r}: {len(plan.cached)} sorting(s) unchanged, not sorted again")
    if plan.to_compare:
        say(f"{len(plan.to_compare)} of them without a current comparison: compared again")
    if plan.in_flight:
        say(f"{len(plan.in_flight)} sorting(s) already queued or running elsewhere: waiting for them in the queue")
    in_flight = {str(key) for key in plan.in_flight}
    elsewhere = [(s, r) for s, r in (campaign.jobs if pairs is None else pairs) if str(pair_key(s.name, r)) in in_flight]
    to_sort = list(plan.to_sort) + elsewhere
    order = stages(plan, also_sort=elsewhere)
    waiting = order.waiting
    ready: list[tuple[str, str | None]] = [("recordings_job", key) for key in order.recordings]
    ready += [("comparison_job", key) for key in order.comparisons]
    ready += [("sorting_job", key) for key in order.sorts]
    total_sorts = len(to_sort)
    lease = {LEASE_TAG: str(this_process()), CAMPAIGN_TAG: campaign_tag_value(campaign.digest())}
    options = dataclasses.replace(options, sorts_at_once=max(1, workers))
    # Sorts on Slurm or in containers run outside the sort service, which enforces sorts_at_once:
    # for them, runs in flight are what bounds it.
    uses_service = options.engine_settings().uses_sort_service
    in_flight_cap = max(1, workers, queue_capacity(instance) if uses_service else 0)
    with (
        code_location(instance) as context,
        slurm_allocations_for(options) as options,
        dequeuing(context, instance, options.engine_settings()),
    ):
        submitter = Submitter(context, options.run_config(), {**(tags or {}), **lease})
        tracker = RunTracker(instance)
        # On Slurm: the allocations the sorts need, requested now and kept while some are still to come;
        # no more of them than this launch runs at once.
        anticipation = Anticipation(options.engine_settings(), say, {s.name: s for s, _ in to_sort}.values())
        sorts_submitted = 0
        try:
            anticipation(min(total_sorts, in_flight_cap))
            tracker.add(submitter.submit("studysets_job"), "studysets_job", None)
            while ready or tracker.runs:
                while ready and len(tracker.runs) < in_flight_cap + 1:  # +1: the studysets run
                    job_name, key = ready.pop(0)
                    tracker.add(submitter.submit(job_name, key), job_name, key)
                    sorts_submitted += job_name == "sorting_job"
                anticipation(min(total_sorts - len(outcome.skipped_pairs) - sorts_submitted, in_flight_cap))
                time.sleep(POLL_S)
                for done in tracker.finished():
                    if done.job_name == "recordings_job":
                        outcome.recordings.append(done)
                        follow = waiting.pop(done.partition_key, [])
                        recompare = order.compare_after.pop(done.partition_key, [])
                        if done.success:
                            ready[:0] = [("sorting_job", key) for key in follow]
                            ready[:0] = [("comparison_job", key) for key in recompare]
                        else:
                            outcome.skipped_pairs.extend(follow)
                        state = "ok" if done.success else "FAILED: " + (done.error or "")
                        say(f"[recordings {len(outcome.recordings)}/{len(plan.recordings_to_run)}] {done.partition_key}: {state}")
                    elif done.job_name == "comparison_job":
                        outcome.comparisons.append(done)
                    elif done.job_name == "sorting_job":
                        outcome.sortings.append(done)
                        _report_sorting(say, done, len(outcome.sortings), total_sorts - len(outcome.skipped_pairs))
                        if on_sorting_done:
                            on_sorting_done(done)
                    else:
                        outcome.results.append(done)
                if on_counts:
                    on_counts(
                        CampaignCounts(
                            recordings_done=len(outcome.recordings),
                            recordings_total=len(plan.recordings_to_run),
                            sortings_done=len(outcome.sortings),
                            sortings_total=total_sorts - len(outcome.skipped_pairs),
                            failed=sum(1 for o in outcome.recordings + outcome.sortings if not o.success),
                            in_flight=len(tracker.runs) + len(ready),
                        )
                    )
            if run_results:
                tracker.add(submitter.submit("results_job"), "results_job", None)
                while tracker.runs:
                    time.sleep(POLL_S)
                    outcome.results.extend(tracker.finished())
        except BaseException:
            tracker.stop_all()
            raise
    return outcome


def _report_sorting(say: Callable[[str], None], done: RunOutcome, i: int, n: int) -> None:
    from sf_assets.orchestration.partitions import split_pair_key

    sorter_name, label = split_pair_key(done.partition_key)
    state = "ok" if done.success else "FAILED: " + (done.error or "")
    say(f"[sortings {i}/{n}] {sorter_name}/{label}: {state} ({done.elapsed_s:.1f} s)")


def pair_labels(pairs: Iterable[tuple[SorterSpec, Recording]]) -> list[str]:
    """The sorting labels of ``pairs``, for messages and the records file's order.

    Parameters
    ----------
    pairs : Iterable[tuple[SorterSpec, Recording]]
        (sorter, recording) pairs.

    Returns
    -------
    list[str]
        ``SORTER/STUDY/RECORDING`` labels, in the pairs' order.
    """
    return [sorting_label(s.name, r.study_name, r.name) for s, r in pairs]
