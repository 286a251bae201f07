"""One sort on the campaign's Slurm allocations: a slot, a job step, and a retry if the allocation dies.

:func:`run_slurm_sort` is what the engine runs for every sort with Slurm
on.  It claims a slot in the pool of allocations shared by every process
that sorts with the same settings (:mod:`sf_assets.engines.slurm_pool`),
runs the sort as a job step sized at 1/N of that allocation, under the same
supervisor as every engine (so ``-T``, the console, the canary and the CPU
time hold as locally; the timeout clock starts once the step is placed, not
while it waits for a slot), and releases the slot when the sort ends,
however it ends.

An allocation that ends under a running sort (``scancel``, walltime, node
failure) fails that sort only: the sort is run again from a clean work
folder in another slot, up to :data:`MAX_ATTEMPTS` times.  Nothing of the
lost attempt is kept: the worker stores a sorting only once it has
finished, and the asset registers nothing but the final report.  Failures
of the sort itself (the worker's own error, a classified canary failure, the
timeout) are never retried: they would fail the same way again.

:func:`campaign_allocations` is what a launch wraps around its campaign: on
exit and on interrupt it ends the allocations no sort holds, instead of
leaving them to their holders' idle time.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sf_assets.core.errors import EnvironmentSortFailure
from sf_assets.engines.job import CONSOLE_FILE, CanaryReport, SortJob, SortReport
from sf_assets.engines.slurm import SlurmLaunch, srun_environment
from sf_assets.engines.slurm_allocations import step_placement
from sf_assets.engines.slurm_pool import OWNER_ENV, Pool, Slot, acquire_slot, claim_owner, release_idle
from sf_assets.engines.slurm_step import SLOT_ENV
from sf_assets.engines.supervisor import prepare_work_dir, supervise

MAX_ATTEMPTS = 3
# The failure class of a sort whose allocations all ended under it.
ALLOCATION_LOST = "allocation_lost"


def pool_for(settings) -> Pool:
    """The pool of allocations for ``settings`` (an :class:`~sf_assets.engines.engine.EngineSettings`)."""
    return Pool.for_settings(settings.work_root, settings.slurm, settings.timeout_min, srun_environment(os.environ))


def run_slurm_sort(job: SortJob, settings, worker: Sequence[str]) -> Iterator[CanaryReport | SortReport]:
    """Run ``worker`` (argv) for ``job`` on Slurm; yields the canary report once, then the sort report.

    ``job.work_dir`` must have been prepared.  With ``settings.slurm.allocation_id``
    set, the sort is a step of one of those allocations (held by the user) and
    is not retried; otherwise it runs in the pool's allocations.
    """
    slurm = settings.slurm
    if slurm.allocation_id:
        yield from _supervised(job, SlurmLaunch.for_job(worker, slurm, job, settings.timeout_s), settings.timeout_s)
        return
    pool = pool_for(settings)
    canary_sent = False
    lost: list[str] = []
    report: SortReport | None = None
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            prepare_work_dir(job)  # nothing of the lost attempt is kept
        slot = acquire_slot(pool, job.label, settings.timeout_s)
        try:
            try:
                placement = step_placement(slot.job_id, pool.slots, pool.env)
            except EnvironmentSortFailure as exc:  # it ended between the claim and the step
                lost.append(f"{slot.job_id} ({exc})")
                continue
            launch = SlurmLaunch.for_job(worker, slurm, job, settings.timeout_s, placement)
            launch = dataclasses.replace(launch, env={**launch.env, SLOT_ENV: slot.name})
            for event in _supervised(job, launch, settings.timeout_s):
                if isinstance(event, CanaryReport):
                    if not canary_sent:
                        canary_sent = True
                        yield event
                else:
                    report = event
            ended = _allocation_ended(report, slot)
        finally:
            slot.release()
        if ended is None or claim_owner().is_gone():  # the launch that wanted this sort is gone
            if lost:
                report = dataclasses.replace(report, details={**report.details, "slurm_allocations_lost": lost})
            yield report
            return
        lost.append(f"{slot.job_id} ({ended})")
    yield _lost_report(job, report, lost)


def _lost_report(job: SortJob, last: SortReport | None, lost: list[str]) -> SortReport:
    """The report of a sort whose every attempt lost its allocation."""
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


@contextmanager
def campaign_allocations(settings) -> Iterator[Pool | None]:
    """Around a campaign: on exit or interrupt, end the allocations of its pool that no sort holds.

    ``settings`` is an :class:`~sf_assets.engines.engine.EngineSettings`; without
    Slurm, or with allocations the user holds, nothing happens.  Run processes
    started inside the block place their sorts for this process: if it is
    killed, their claims go stale and the allocations end one idle time later,
    even while those processes still run.
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
