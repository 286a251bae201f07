"""Slurm: the worker runs as a job step submitted with ``srun``.

``srun`` blocks until the step ends and streams its output, so the same
supervisor that watches a local worker watches it here: console, result
files and the timeout are handled by the same code.  Three things differ,
and :class:`SlurmLaunch` hands them to the supervisor:

* the command: ``srun`` (options from :class:`SlurmSettings`) around
  :mod:`sf_assets.engines.slurm_step`, which reaps the worker on the node
  and records its exit status and CPU time (``srun``'s own CPU time says
  nothing about the worker's);
* stopping: ``scancel --signal=TERM`` of the step first (the worker gets
  SIGTERM, as under the local engine, and its CPU time is still recorded);
  then srun is terminated, which makes Slurm kill the step at once; then
  whatever Slurm still lists under the step's unique name is cancelled.
  Checked on Slurm 22.05: SIGTERM to srun ends its step or job at once,
  SIGKILL to srun leaves it running (and a pending job pending), hence
  the final ``scancel``;
* the environment: Slurm variables of an enclosing job are dropped, so a
  pipeline that itself runs inside a Slurm job still submits new jobs.

Sorts in the campaign's own allocations do not come here: they go to the
sort service inside the allocation (:mod:`sf_assets.engines.slurm_campaign`,
:mod:`sf_assets.engines.slurm_service`).  This module runs a sort as a step
of allocations a user holds (``allocation_id``, placed by
:func:`~sf_assets.engines.slurm_allocations.place_step`), or, without a
placement, as a job of its own (``srun --exclusive`` unless shared nodes are
accepted, ``--gpus-per-node``, ``--partition``, ``--time``).
"""

from __future__ import annotations

import getpass
import hashlib
import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sf_assets.engines.job import SortJob, read_json_if_present
from sf_assets.engines.slurm_allocations import (
    StepPlacement,
    node_options,
    parse_allocation_ids,
    place_step,
    require_slurm_clients,
)
from sf_assets.engines.slurm_step import STEP_FILE
from sf_assets.engines.supervisor import WorkerProcess, stop_process_group

if TYPE_CHECKING:
    from sf_assets.engines.slurm_settings import SlurmSettings

# How long the step file may take to show up on the submitting host after
# srun returned (a shared filesystem may publish it late).
STEP_FILE_WAIT_S = 10.0
SLURM_CLIENT_TIMEOUT_S = 15.0


def slurm_time_limit(timeout_s: float | None) -> str | None:
    """``--time`` in whole minutes (Slurm's resolution), rounded up, so the job never ends before the sort's timeout.

    Parameters
    ----------
    timeout_s : float or None
        The sort's timeout in seconds; None or 0: none.

    Returns
    -------
    str or None
        Minutes, at least 1, for ``--time``; None to leave the partition's default.
    """
    if not timeout_s:
        return None
    return str(max(1, math.ceil(timeout_s / 60.0)))


def step_name(job: SortJob) -> str:
    """A job/step name unique to this sort's work folder: what ``scancel --name`` targets.

    Parameters
    ----------
    job : SortJob
        The sort (its label and work folder).

    Returns
    -------
    str
        ``sf-assets/<label>/<10 hex digits of the work folder's sha1>``.
    """
    digest = hashlib.sha1(str(Path(job.work_dir).resolve()).encode()).hexdigest()[:10]
    return f"sf-assets/{job.label}/{digest}"


def step_wrapper_command(python: str, work_dir: str | Path, worker: Sequence[str]) -> list[str]:
    """The command a Slurm step runs: the step wrapper around the worker.

    The wrapper (:mod:`sf_assets.engines.slurm_step`) records the step's node
    and pid and reaps the worker on the node, so the submit host can stop it.

    Parameters
    ----------
    python : str
        The interpreter on the nodes.
    work_dir : str or Path
        The sort's work folder (shared with the nodes).
    worker : Sequence[str]
        The worker's argv.

    Returns
    -------
    list[str]
        The step's argv.
    """
    return [python, "-m", "sf_assets.engines.slurm_step", str(work_dir), "--", *worker]


def srun_command(
    worker: Sequence[str],
    slurm: SlurmSettings,
    job: SortJob,
    timeout_s: float | None,
    placement: StepPlacement | None = None,
) -> list[str]:
    """The srun line that runs ``worker`` (argv) for ``job`` on the cluster.

    Parameters
    ----------
    worker : Sequence[str]
        The worker's argv; its first item (the Python interpreter, on the shared filesystem) also runs the
        node-side wrapper.
    slurm : SlurmSettings
        :class:`~sf_assets.engines.slurm_settings.SlurmSettings` (partition, shared nodes, GPUs per node, jobs
        per allocation).
    job : SortJob
        The sort (its work folder and label).
    timeout_s : float or None
        The run's timeout in seconds; becomes ``--time`` in minutes, rounded up.
    placement : StepPlacement or None
        The allocation step to run in; None: a job of its own.

    Returns
    -------
    list[str]
        ``srun`` with its options, then the step wrapper and the worker's argv.
    """
    command = ["srun", f"--job-name={step_name(job)}", "--ntasks=1", "--nodes=1", "--quiet"]
    if placement is None:
        command += node_options(slurm)
    else:
        # --exact: the step takes only its share, so Slurm runs at most
        # jobs_per_allocation of them at once and holds the others.
        command += [f"--jobid={placement.job_id}", "--exact", f"--cpus-per-task={placement.cpus_per_step}"]
        if placement.memory_mb_per_step is not None:
            command.append(f"--mem={placement.memory_mb_per_step}M")
        if slurm.gpus_per_node:
            command.append(f"--gpus-per-task={max(1, slurm.gpus_per_node // max(1, slurm.jobs_per_allocation))}")
    time_limit = slurm_time_limit(timeout_s)
    if time_limit:
        command.append(f"--time={time_limit}")
    command.append(f"--chdir={job.work_dir}")
    return command + step_wrapper_command(worker[0], job.work_dir, worker)


def srun_environment(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the variables that would tie srun to an enclosing job.

    srun reads SLURM_JOB_ID, SLURM_NTASKS, SLURM_MEM_PER_CPU, ... as defaults
    for its options; inside a Slurm job they would turn every sort into a
    step of that job.  SLURM_CONF (which cluster) is kept.

    Parameters
    ----------
    base : Mapping[str, str]
        An environment, usually this process's.

    Returns
    -------
    dict[str, str]
        A copy without the ``SLURM_*`` variables but ``SLURM_CONF``.
    """
    return {key: value for key, value in base.items() if not key.startswith("SLURM_") or key == "SLURM_CONF"}


@dataclass(frozen=True)
class SlurmLaunch:
    """What the supervisor needs to run one sort through Slurm."""

    command: list[str]
    env: dict[str, str]
    work_dir: Path
    name: str

    @classmethod
    def for_job(
        cls,
        worker: Sequence[str],
        slurm: SlurmSettings,
        job: SortJob,
        timeout_s: float | None,
        placement: StepPlacement | None = None,
    ) -> "SlurmLaunch":
        """The launch of ``job``: in ``placement``, else in the least busy of ``slurm.allocation_id``, else a job.

        Parameters
        ----------
        worker : Sequence[str]
            The worker's argv (see :func:`srun_command`).
        slurm : SlurmSettings
            The Slurm settings; ``allocation_id`` names allocations a user holds.
        job : SortJob
            The sort.
        timeout_s : float or None
            The sort's timeout in seconds (``--time``).
        placement : StepPlacement or None
            Where to run; None: placed by :func:`~sf_assets.engines.slurm_allocations.place_step` when
            allocations are named, else a job of its own.

        Returns
        -------
        SlurmLaunch
            The srun line, its environment (without an enclosing job's variables), the work folder and the
            step's name.

        Raises
        ------
        EnvironmentSortFailure
            ``srun``, ``scancel`` or ``squeue`` is not on PATH, ``allocation_id`` is not a list of job ids, or a
            named allocation is not running.
        """
        env = srun_environment(os.environ)
        require_slurm_clients("srun", "scancel", "squeue", env=env)
        allocation_ids = parse_allocation_ids(slurm.allocation_id)
        if placement is None and allocation_ids:
            placement = place_step(allocation_ids, slurm.jobs_per_allocation, env)
        command = srun_command(worker, slurm, job, timeout_s, placement)
        return cls(command=command, env=env, work_dir=Path(job.work_dir), name=step_name(job))

    def _step(self) -> dict:
        return read_json_if_present(self.work_dir / STEP_FILE) or {}

    def stop(self, proc: WorkerProcess, grace_s: float) -> None:
        """End the step: SIGTERM to the worker through Slurm, then srun, then scancel by name.

        The worker gets SIGTERM first so that it stops as under the local engine and
        the node-side wrapper still records its CPU time.  Never raises: it runs
        while a sort is being stopped.

        Parameters
        ----------
        proc : WorkerProcess
            The ``srun`` process.
        grace_s : float
            Seconds the worker has to end after SIGTERM before srun is terminated.
        """
        step = self._step()
        if step.get("job_id") and "exit_code" not in step:
            target = f"{step['job_id']}.{step['step_id']}" if step.get("step_id") else step["job_id"]
            self._scancel("--signal=TERM", target)
            deadline = time.monotonic() + grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        stop_process_group(proc, grace_s=min(grace_s, 2.0))
        self.cancel_leftovers()

    def cancel_leftovers(self) -> None:
        """Cancel this sort's job, or its step in an allocation, if Slurm still lists it."""
        user = getpass.getuser()
        listed = self._run(["squeue", "--steps", "--noheader", "--format=%i %j", f"--user={user}"]).stdout
        steps = [line.split(" ", 1)[0] for line in listed.splitlines() if line.split(" ", 1)[-1] == self.name]
        if steps:
            self._scancel(*steps)
        self._scancel(f"--name={self.name}", f"--user={user}")

    def worker_outcome(self, exit_code: int | None, cpu_time_s: float | None) -> tuple[int | None, float | None]:
        """The worker's exit status and CPU time as recorded on the node, else srun's status and no CPU time.

        srun's own exit status and CPU time say nothing reliable about the worker's,
        so the step file written on the node wins; after a clean exit it is waited
        for up to :data:`STEP_FILE_WAIT_S`, as a shared filesystem may show it late.

        Parameters
        ----------
        exit_code : int or None
            srun's exit status.
        cpu_time_s : float or None
            The CPU seconds measured on the submit host (srun's; not used).

        Returns
        -------
        tuple[int or None, float or None]
            The exit status and the worker's CPU seconds (None when the node did not record them).
        """
        step = self._step()
        if exit_code == 0 and "exit_code" not in step:
            deadline = time.monotonic() + STEP_FILE_WAIT_S
            while "exit_code" not in step and time.monotonic() < deadline:
                time.sleep(0.2)
                step = self._step()
        if "exit_code" in step:
            return step["exit_code"], step.get("cpu_time_s")
        return exit_code, None

    def _scancel(self, *args: str) -> None:
        self._run(["scancel", "--quiet", *args])

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        """Run a Slurm client; never raises, as it runs while a sort is being stopped."""
        try:
            return subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=SLURM_CLIENT_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            return subprocess.CompletedProcess(argv, returncode=-1, stdout="", stderr=str(exc))
