"""One sort on the campaign's Slurm allocations: a slot, the allocation's sort service, a retry if it dies.

:func:`run_slurm_sort` is what the engine runs for every sort with Slurm
on.  It claims a slot in the pool of allocations shared by every process
that sorts with the same settings (:mod:`sf_assets.engines.slurm_pool`),
sends the sort to the sort service that the allocation's holder runs
(:mod:`sf_assets.engines.slurm_service`; the local path's service, so
``-T``, the console, the canary, the CPU time, crash isolation and the
connection-as-lease hold as locally, and the slot's warm worker keeps its
sorter compiled; the timeout clock starts once a slot takes the sort, not
while it waits), and releases the claim when the sort ends, however it ends.

An allocation that ends under a running sort (``scancel``, walltime, node
failure, its service dying) fails that sort only: the sort is run again in
another slot, up to :data:`MAX_ATTEMPTS` times, each time in a new folder
inside the attempt's, so that what a lost try's processes may still write
(a node written off but still up) never mixes with the retry's files.
Nothing of the lost attempt is kept: the worker stores a sorting only once
it has finished, and the asset registers nothing but the final report.
Failures of the sort itself (the worker's own error, a classified canary
failure, the timeout) are never retried: they would fail the same way again;
nor is a service that refuses the request or cannot be reached from this host.

:func:`campaign_allocations` is what a launch wraps around its campaign: on
exit and on interrupt it ends the allocations no sort holds, instead of
leaving them to their holders' idle time.  :func:`anticipate_sorts` (and
:class:`Anticipation`, which repeats it) is what a launch that planned its
sorts calls before they start: the allocations they need are requested and
reserved then, not when the first sort asks.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sf_assets.core.atomic import write_json_atomic
from sf_assets.core.errors import EnvironmentSortFailure
from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.engines.warm_up import worth_warming
from sf_assets.engines.job import CONSOLE_FILE, CanaryReport, SortJob, SortReport
from sf_assets.engines.service_client import SortRefused, SortServiceError, sort_over
from sf_assets.engines.slurm import SlurmLaunch, srun_environment
from sf_assets.engines.slurm_pool import (
    OWNER_ENV,
    Pool,
    Slot,
    acquire_slot,
    anticipate,
    claim_owner,
    heartbeat_interval_s,
    release_idle,
)
from sf_assets.engines.slurm_service import (
    SLOT_FILE,
    AllocationServiceGone,
    connect_to_allocation,
    published_address,
    service_log_tail,
)
from sf_assets.engines.supervisor import prepare_work_dir, supervise
from sf_assets.engines.work_dirs import retry_dir

MAX_ATTEMPTS = 3
# The failure class of a sort whose allocations all ended under it.
ALLOCATION_LOST = "allocation_lost"
# How often a sort waiting on an allocation's service checks that the allocation still runs.
ALIVE_CHECK_S = 2.0


def pool_for(settings) -> Pool:
    """The pool of allocations for these engine settings, shared by every process that sorts with them.

    Parameters
    ----------
    settings : EngineSettings
        :class:`~sf_assets.engines.engine.EngineSettings` with ``slurm`` set (``work_root``,
        ``timeout_min``).

    Returns
    -------
    Pool
        The pool of the allocation shape, its folder created; the Slurm clients run without an enclosing
        job's variables.
    """
    return Pool.for_settings(settings.work_root, settings.slurm, settings.timeout_min, srun_environment(os.environ))


def run_slurm_sort(
    job: SortJob, settings, worker: Sequence[str], canary_timeout_s: float | None = None
) -> Iterator[dict | CanaryReport | SortReport]:
    """Sort ``job`` on Slurm; yields the slot's description, the canary report once, then the sort report.

    ``job.work_dir`` must have been prepared.  In the pool's allocations the
    sort goes to the allocation's sort service (a warm slot) and is run again,
    each time in a new folder inside the attempt's
    (:func:`~sf_assets.engines.work_dirs.retry_dir`), up to :data:`MAX_ATTEMPTS`
    times, when its allocation ends under it; with ``settings.slurm.allocation_id`` set
    (allocations a user holds, which run no service) it is a job step running
    ``worker`` (argv) afresh, and is not retried.

    Parameters
    ----------
    job : SortJob
        The sort, its work folder prepared.
    settings : EngineSettings
        :class:`~sf_assets.engines.engine.EngineSettings` with ``slurm`` set; ``timeout_s`` is the sort's
        timeout.
    worker : Sequence[str]
        The worker's argv, for a step in allocations a user holds.
    canary_timeout_s : float or None
        Seconds after which the canary counts as hung.

    Yields
    ------
    dict or CanaryReport or SortReport
        A dict each time a service slot takes the sort, the canary report once
        (from the first attempt that decides it), and last the sort report: the
        sort's own, or one with failure class :data:`ALLOCATION_LOST` naming the
        allocations lost.

    Raises
    ------
    SortRefused
        The allocation's service refused the request (another would too).
    EnvironmentSortFailure
        A Slurm client is missing, Slurm refused an allocation, or the launch this sort was for has ended.
    """
    slurm = settings.slurm
    if slurm.allocation_id:
        yield from _supervised(job, SlurmLaunch.for_job(worker, slurm, job, settings.timeout_s), settings.timeout_s)
        return
    pool = pool_for(settings)
    canary_sent = False
    lost: list[str] = []
    report: SortReport | None = None
    attempt_dir = Path(job.work_dir)
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            # A folder of its own: the lost try's worker or service may still write into theirs.
            job = dataclasses.replace(job, work_dir=str(retry_dir(attempt_dir, attempt)))
            prepare_work_dir(job)
        requested_at = time.time()
        slot = acquire_slot(
            pool, job.label, settings.timeout_s, sorter=job.si_sorter_name, warm_up=_warm_up_for(job)
        )
        report = None
        try:
            try:
                for event in sort_in_allocation(job, slot, settings.timeout_s, canary_timeout_s, requested_at):
                    if isinstance(event, CanaryReport):
                        if not canary_sent:
                            canary_sent = True
                            yield event
                    elif isinstance(event, SortReport):
                        report = event
                    else:
                        yield event
                ended = "no report" if report is None else _allocation_ended(report, slot)
            except SortRefused:
                raise  # the service is up and said no: another allocation would say the same
            except (AllocationServiceGone, SortServiceError, OSError) as exc:
                ended = f"{slot.state() or 'gone from squeue'}: {exc}"
        finally:
            slot.release()
        if report is not None and ended is None:  # the sort's own outcome: never retried
            if lost:
                report = dataclasses.replace(report, details={**report.details, "slurm_allocations_lost": lost})
            yield report
            return
        lost.append(f"{slot.job_id} ({ended})")
        if claim_owner().is_gone():
            break  # nobody wants this sort any more: it asks for no other allocation
    yield _lost_report(job, report, lost)


def sort_in_allocation(
    job: SortJob,
    slot: Slot,
    timeout_s: float | None,
    canary_timeout_s: float | None,
    requested_at: float | None = None,
) -> Iterator[dict | CanaryReport | SortReport]:
    """Send ``job`` to the sort service of ``slot``'s allocation; what it answers, as the local service's client.

    Records where the sort ran in :data:`~sf_assets.engines.slurm_service.SLOT_FILE`
    in its work folder (allocation, service slot, node, worker process), how
    it ended (exit status, CPU seconds) and when (epoch seconds) it asked for
    a slot, had its claim, reached the service and was taken by a slot: what
    placing it on Slurm cost.  A slot that takes the sort marks the allocation
    warm for its sorter.

    Parameters
    ----------
    job : SortJob
        The sort, its work folder prepared.
    slot : Slot
        The claimed slot; its allocation runs.
    timeout_s : float or None
        The sort's timeout in seconds, counted from when a service slot takes it.
    canary_timeout_s : float or None
        Seconds after which the canary counts as hung.
    requested_at : float or None
        When the sort asked for a slot (epoch seconds); None: when the claim was had.

    Yields
    ------
    dict or CanaryReport or SortReport
        As :func:`~sf_assets.engines.service_client.sort_over`: the slot's
        description, the canary report, the sort report.

    Raises
    ------
    AllocationServiceGone
        The allocation ended before its service could be reached.
    EnvironmentSortFailure
        The service's published address refused connections while the allocation ran: this host cannot
        reach the node.
    SortServiceError
        The allocation or its service went away before the sort's report
        (:class:`~sf_assets.engines.service_client.SortRefused` when it refused the request).
    """
    pool = slot.pool

    def running() -> bool:
        try:
            return slot.state(max_age_s=ALIVE_CHECK_S) == "RUNNING"
        except EnvironmentSortFailure:
            return True  # squeue did not answer this time: no news is not a lost allocation

    claimed_at = time.time()
    conn = connect_to_allocation(pool.root, slot.job_id, running)
    address = published_address(pool.root, slot.job_id)
    placement_file = Path(job.work_dir) / SLOT_FILE
    placement: dict = {
        "job_id": slot.job_id,
        "claim": slot.name,
        "node": address[0] if address else None,
        "requested_at": requested_at or claimed_at,
        "claimed_at": claimed_at,
        "connected_at": time.time(),
    }
    write_json_atomic(placement_file, placement)
    events = sort_over(
        conn,
        Path(job.work_dir),
        timeout_s=timeout_s,
        canary_timeout_s=canary_timeout_s,
        describe_end=lambda: service_log_tail(pool.root, slot.job_id),
        still_there=running,
        check_every_s=ALIVE_CHECK_S,
    )
    for event in events:
        if isinstance(event, dict):
            placement.update(
                slot=f"{slot.job_id}-{event['slot']}",
                worker_pid=event["worker_pid"],
                warm=event["warm"],
                copy_of=event.get("copy_of"),
                started_at=time.time(),
            )
            write_json_atomic(placement_file, placement)
            pool.mark_warm(slot.job_id, job.si_sorter_name)
        elif isinstance(event, SortReport):
            placement.update(exit_code=event.exit_code, cpu_time_s=event.cpu_time_s)
            write_json_atomic(placement_file, placement)
        yield event


def _lost_report(job: SortJob, last: SortReport | None, lost: list[str]) -> SortReport:
    """The report of a sort whose every attempt lost its allocation (or whose launch is gone after one did)."""
    if last is None:  # no attempt got as far as a step
        now = time.time()
        last = SortReport(
            errored=True,
            start_time=now,
            end_time=now,
            elapsed_s=0.0,
            cpu_time_s=None,
            console_path=str(Path(job.work_dir) / CONSOLE_FILE),
        )
    return dataclasses.replace(
        last,
        errored=True,
        failure_class=ALLOCATION_LOST,
        sorting_object_uri=None,
        num_units=None,
        error_message=f"the Slurm allocation ended under the sort {len(lost)} times: {'; '.join(lost)}",
        details={**last.details, "slurm_allocations_lost": lost},
    )


def _allocation_ended(report: SortReport, slot: Slot) -> str | None:
    """How the sort's allocation ended under it (its Slurm state), or None if the sort's own outcome stands."""
    if not report.errored or report.timed_out:
        return None
    state = slot.state()
    if state == "RUNNING" and not slot.pool.is_closing(slot.job_id):
        return None
    return state or "gone from squeue"


def _supervised(job: SortJob, launch: SlurmLaunch, timeout_s: float | None) -> Iterator[CanaryReport | SortReport]:
    return supervise(
        job,
        launch.command,
        timeout_s=timeout_s,
        env=launch.env,
        stop=launch.stop,
        worker_outcome=launch.worker_outcome,
    )


def _warm_up_request(sorters: Iterable[tuple[str, dict]], jit_cache_dir: str | None) -> dict | None:
    """What a new allocation's service warms its template with: the ``(name, params)`` sorters that gain by it.

    Those :func:`~sf_assets.engines.warm_up.worth_warming` says so of; None when there is none.
    """
    chosen: dict[str, dict] = {}
    for name, params in sorters:
        entry = resolve_sorter(name)
        if worth_warming(entry):
            chosen.setdefault(name, {"sorter_name": name, "si_sorter_name": entry.si_name, "params": dict(params or {})})
    return {"sorters": list(chosen.values()), "jit_cache_dir": jit_cache_dir} if chosen else None


def _warm_up_for(job: SortJob) -> dict | None:
    """The warm-up of an allocation ``job`` requests itself: its own sorter, unless it runs in a container."""
    return None if job.container_image else _warm_up_request([(job.sorter_name, job.params)], job.jit_cache_dir)


def planned_warm_up(settings, sorter_specs: Iterable) -> dict | None:
    """What the allocations requested for a planned launch warm their templates with: its sorters' code.

    Parameters
    ----------
    settings : EngineSettings
        The launch's engine settings.
    sorter_specs : Iterable[SorterSpec]
        The sorters of its sorts (name and params as in the spec).

    Returns
    -------
    dict or None
        The warm-up request (None: no sorter runs in this environment).
    """
    if settings.use_container:  # every sort runs in its image, not in the warm workers' process
        return None
    return _warm_up_request([(spec.name, spec.params) for spec in sorter_specs], settings.jit_cache_dir)


def anticipate_sorts(
    settings, sorts: int, sorter_specs: Iterable = (), on_error: Callable[[str], None] | None = None
) -> list[str]:
    """Request (and reserve) the allocations a planned launch's ``sorts`` still to come need (:func:`~sf_assets.engines.slurm_pool.anticipate`).

    What a launch that planned its sorts does before starting their runs, and
    again while some are still to come: the command line's
    (:class:`Anticipation`), and the studyset sensor's at each tick.  Without
    Slurm, with allocations the user holds, or with no sort to come, nothing
    is requested.  Slurm refusing (or not answering) is left for the sorts to
    report, each with its own message, as when they request allocations
    themselves.

    Parameters
    ----------
    settings : EngineSettings
        :class:`~sf_assets.engines.engine.EngineSettings` of the launch.
    sorts : int
        The sorts still to come.
    sorter_specs : Iterable[SorterSpec]
        Their sorters: the allocations requested now warm their templates with them
        (:mod:`sf_assets.engines.warm_up`).
    on_error : callable or None
        Gets a line when the request failed (the launch goes on: its sorts request allocations themselves).

    Returns
    -------
    list[str]
        The job ids requested now.
    """
    if settings.slurm is None or settings.slurm.allocation_id or sorts <= 0:
        return []
    try:
        return anticipate(
            pool_for(settings), sorts, planned_warm_up(settings, sorter_specs), needed_s=settings.timeout_s
        )
    except Exception as exc:  # noqa: BLE001 - a sensor tick or a launch must not end on it
        if on_error is not None:
            on_error(f"Slurm: the allocations for the sorts to come were not requested now ({type(exc).__name__}: {exc})")
        return []


class Anticipation:
    """A launch's sorts still to come, kept on Slurm: :func:`anticipate_sorts` at most once per heartbeat interval.

    Parameters
    ----------
    settings : EngineSettings
        The launch's engine settings (nothing happens without Slurm).
    say : callable or None
        Gets a line naming the allocations each call requested.
    sorter_specs : Iterable[SorterSpec]
        The sorters of its sorts, which the allocations' templates warm up with.
    """

    def __init__(self, settings, say=None, sorter_specs: Iterable = ()) -> None:
        self.settings = settings
        self.say = say
        self.sorter_specs = list(sorter_specs)
        self.next_at = 0.0

    def __call__(self, sorts: int) -> None:
        """Request and reserve what ``sorts`` sorts still to come need, unless done less than an interval ago.

        Parameters
        ----------
        sorts : int
            The sorts still to come (0: nothing; the reservations then lapse after the idle time).
        """
        slurm = self.settings.slurm
        now = time.monotonic()
        if slurm is None or sorts <= 0 or now < self.next_at:
            return
        self.next_at = now + heartbeat_interval_s(slurm.idle_release_s)
        requested = anticipate_sorts(self.settings, sorts, self.sorter_specs, on_error=self.say)
        if requested and self.say is not None:
            self.say(f"Slurm: requested {len(requested)} allocation(s) for {sorts} sort(s) to come: {', '.join(requested)}")


@contextmanager
def campaign_allocations(settings) -> Iterator[Pool | None]:
    """Around a campaign: on exit or interrupt, end the allocations of its pool that no sort holds.

    Without Slurm, or with allocations the user holds, nothing happens.  Run
    processes started inside the block place their sorts for this process: if
    it is killed, their claims go stale and the allocations end one idle time
    later, even while those processes still run.  If Slurm cannot be reached
    on exit, the holders end the allocations after their idle time, and the
    block's own error is the one raised.

    Parameters
    ----------
    settings : EngineSettings
        :class:`~sf_assets.engines.engine.EngineSettings` of the campaign.

    Yields
    ------
    Pool or None
        The campaign's pool, or None when it has none.
    """
    if settings.slurm is None or settings.slurm.allocation_id:
        yield None
        return
    pool = pool_for(settings)
    previous = os.environ.get(OWNER_ENV)
    # Run processes started from here on (the launch's slots) place their sorts for this process.
    os.environ[OWNER_ENV] = str(claim_owner())
    try:
        yield pool
    finally:
        if previous is None:
            os.environ.pop(OWNER_ENV, None)
        else:
            os.environ[OWNER_ENV] = previous
        try:
            release_idle(pool)
        except EnvironmentSortFailure:
            # Slurm cannot be reached now (the sorts said so already): the holders
            # end the allocations after the idle time, and the launch's own error
            # (or interrupt) is the one to report.
            pass
