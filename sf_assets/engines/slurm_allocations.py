"""Slurm allocations shared by many sorts: ``salloc`` holds nodes, sorts run as job steps.

This is how ``--slurm-jobs-per-allocation`` (N) and
``--slurm-max-simultaneous-allocations`` (M) are honoured with Slurm's own
tools, not with a scheduler of ours:

* :func:`slurm_allocations` asks Slurm for M allocations with
  ``salloc --no-shell --nodes=1 --ntasks=N`` (plus the partition,
  ``--exclusive``, ``--gpus-per-node`` and ``--time``) and cancels them with
  ``scancel`` on exit, whatever happened in between;
* :func:`place_step` puts one sort into the allocation that runs the fewest
  steps (from ``squeue --steps``) and sizes the step at 1/N of the
  allocation's CPUs (and memory, where Slurm tracks it) with ``srun --exact``,
  so Slurm itself holds an (N+1)-th step until one finishes.

Placement reads the queue, so sorts started by different processes (Dagster
steps, runs) share allocations without talking to each other; two sorts
placed at the same instant may pick the same allocation, and Slurm then
simply makes one wait.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sf_assets.core.errors import EnvironmentSortFailure

if TYPE_CHECKING:
    from sf_assets.engines.slurm_settings import SlurmSettings

ALLOCATION_JOB_NAME = "sf-assets-allocation"
# Steps that are not sorts: the batch script, the allocation's own holder, the prolog container.
SERVICE_STEPS = ("batch", "extern", "interactive")
GRANTED = re.compile(r"Granted job allocation (\d+)")
CLIENT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class StepPlacement:
    """Where and how big one sort's job step is.

    Attributes
    ----------
    job_id : str
        the allocation (salloc job id) the step runs in.
    cpus_per_step : int
        the allocation's CPUs divided by the jobs per allocation.
    memory_mb_per_step : int | None
        the same share of its memory, or None when Slurm does not track memory there.
    """

    job_id: str
    cpus_per_step: int
    memory_mb_per_step: int | None


def parse_allocation_ids(text: str | None) -> list[str]:
    """``"12,13"`` -> ``["12", "13"]``; refuses anything but Slurm job ids, before any of them reaches ``srun``.

    Parameters
    ----------
    text : str or None
        Job ids separated by commas (``SlurmSettings.allocation_id``); None or "": none.

    Returns
    -------
    list[str]
        The ids in their order, blanks dropped.

    Raises
    ------
    EnvironmentSortFailure
        A part is not a number.
    """
    ids = [part.strip() for part in (text or "").split(",") if part.strip()]
    bad = [part for part in ids if not part.isdigit()]
    if bad:
        raise EnvironmentSortFailure(
            f"slurm allocation id {text!r}: {bad} are not Slurm job ids (expected numbers separated by commas)"
        )
    return ids


def node_options(slurm: SlurmSettings) -> list[str]:
    """The partition, ``--exclusive`` unless shared nodes are accepted, and ``--gpus-per-node``.

    What every job that holds a node gets: an allocation (``salloc``,
    ``sbatch``) or a sort that is a job of its own (``srun``).

    Parameters
    ----------
    slurm : SlurmSettings
        ``partition``, ``accept_shared_nodes``, ``gpus_per_node``.

    Returns
    -------
    list[str]
        The options, in that order; empty when none applies.
    """
    options = []
    if slurm.partition:
        options.append(f"--partition={slurm.partition}")
    if not slurm.accept_shared_nodes:
        options.append("--exclusive")
    if slurm.gpus_per_node:
        options.append(f"--gpus-per-node={slurm.gpus_per_node}")
    return options


def salloc_command(slurm: SlurmSettings, time_limit_min: int | None) -> list[str]:
    """The ``salloc`` that holds one node for up to ``jobs_per_allocation`` concurrent sorts.

    Parameters
    ----------
    slurm : SlurmSettings
        ``jobs_per_allocation`` (the ``--ntasks``) and the node options (:func:`node_options`).
    time_limit_min : int or None
        The allocation's ``--time`` in minutes; None or 0: the partition's default.

    Returns
    -------
    list[str]
        The ``salloc --no-shell`` argv.
    """
    command = [
        "salloc",
        "--no-shell",
        f"--job-name={ALLOCATION_JOB_NAME}",
        "--nodes=1",
        f"--ntasks={slurm.jobs_per_allocation}",
        *node_options(slurm),
    ]
    if time_limit_min:
        command.append(f"--time={int(time_limit_min)}")
    return command


def require_slurm_clients(*names: str, env: Mapping[str, str] | None = None) -> None:
    """Fail early, with the names, when Slurm commands are missing from PATH, instead of at the first sort.

    Parameters
    ----------
    *names : str
        The commands needed (``srun``, ``scancel``, ...).
    env : Mapping[str, str] or None
        The environment whose ``PATH`` is searched (None: this process's).

    Raises
    ------
    EnvironmentSortFailure
        Naming the commands not found and the PATH searched.
    """
    path = (env or os.environ).get("PATH")
    missing = [name for name in names if shutil.which(name, path=path) is None]
    if missing:
        raise EnvironmentSortFailure(
            f"the Slurm engine needs {', '.join(missing)} on PATH (the Slurm client commands); not found in {path!r}"
        )


def _client(argv: Sequence[str], env: Mapping[str, str] | None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=CLIENT_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise EnvironmentSortFailure(f"the Slurm engine needs `{argv[0]}` on PATH; it was not found") from exc


def cancel_jobs(job_ids: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """``scancel`` the given jobs (allocations); already-finished ones are fine.

    Parameters
    ----------
    job_ids : Sequence[str]
        Slurm job ids; empty: nothing is run.
    env : Mapping[str, str] or None
        Environment of ``scancel`` (None: this process's).

    Raises
    ------
    EnvironmentSortFailure
        ``scancel`` is not on PATH.
    """
    if job_ids:
        _client(["scancel", "--quiet", *job_ids], env)


@contextmanager
def slurm_allocations(
    slurm: SlurmSettings,
    *,
    time_limit_min: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[list[str]]:
    """Hold ``slurm.max_simultaneous_allocations`` allocations while the block runs.

    All requests go out at once; the block starts when every one is granted.
    On exit (normally, on error, on interrupt) every allocation is cancelled,
    and a request still waiting is withdrawn.

    Parameters
    ----------
    slurm : SlurmSettings
        :class:`~sf_assets.engines.slurm_settings.SlurmSettings` (partition, shared nodes, jobs per
        allocation, allocation count, GPUs per node).
    time_limit_min : int or None
        The allocations' ``--time`` in minutes (the whole campaign's wall time, not one sort's); None: the
        partition's default.
    env : Mapping[str, str] or None
        Environment of the Slurm commands (None: this process's).

    Yields
    ------
    list[str]
        The allocations' job ids, once Slurm has granted all of them; join them
        with commas for ``SlurmSettings.allocation_id``.

    Raises
    ------
    EnvironmentSortFailure
        ``salloc`` or ``scancel`` is not on PATH, or Slurm refused a request (its message is quoted).
    """
    count = max(1, int(slurm.max_simultaneous_allocations))
    command = salloc_command(slurm, time_limit_min)
    require_slurm_clients("salloc", "scancel", env=env)
    requests = [
        subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
        )
        for _ in range(count)
    ]
    answers: dict[int, str] = {}
    try:
        for index, request in enumerate(requests):
            answers[index] = request.communicate()[1]
        job_ids = [_granted(answer) for answer in answers.values()]
        if None in job_ids:
            refusals = "; ".join(
                f"exit {r.returncode}: {answers[i].strip()}" for i, r in enumerate(requests) if job_ids[i] is None
            )
            raise EnvironmentSortFailure(f"`{' '.join(command)}` was refused by Slurm: {refusals}")
        yield job_ids
    finally:
        for index, request in enumerate(requests):
            if request.poll() is None:
                request.terminate()  # a pending salloc withdraws its request when terminated
            if index not in answers:
                answers[index] = request.communicate()[1]
        cancel_jobs([job_id for job_id in map(_granted, answers.values()) if job_id], env)


def _granted(salloc_stderr: str) -> str | None:
    """The job id salloc reports once it holds the allocation."""
    match = GRANTED.search(salloc_stderr)
    return match.group(1) if match else None


def _allocation_resources(job_id: str, env: Mapping[str, str] | None) -> tuple[int, int | None]:
    """(CPUs, memory MB or None) that Slurm granted the allocation, from ``scontrol show job``."""
    proc = _client(["scontrol", "--oneliner", "show", "job", job_id], env)
    fields = dict(item.split("=", 1) for item in proc.stdout.split() if "=" in item)
    if proc.returncode != 0 or fields.get("JobState") != "RUNNING":
        state = fields.get("JobState") or proc.stderr.strip() or "unknown"
        raise EnvironmentSortFailure(
            f"slurm allocation {job_id} cannot take a sort: its state is {state}, expected RUNNING"
        )
    tres = dict(item.split("=", 1) for item in fields.get("TRES", "").split(",") if "=" in item)
    return int(fields["NumCPUs"]), _memory_mb(tres.get("mem"))


def _memory_mb(value: str | None) -> int | None:
    if not value:
        return None
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    unit = value[-1].upper()
    return int(float(value[:-1]) * scale[unit]) if unit in scale else int(float(value))


def running_steps(job_ids: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, int]:
    """How many sort steps each allocation runs now (``squeue --steps``), to place the next sort.

    The batch script, the allocation's holder and other service steps do not count.

    Parameters
    ----------
    job_ids : Sequence[str]
        The allocations.
    env : Mapping[str, str] or None
        Environment of ``squeue`` (None: this process's).

    Returns
    -------
    dict[str, int]
        Steps per allocation; 0 for one Slurm does not list.

    Raises
    ------
    EnvironmentSortFailure
        ``squeue`` is not on PATH.
    """
    counts = {job_id: 0 for job_id in job_ids}
    proc = _client(["squeue", "--steps", "--noheader", "--format=%i", f"--jobs={','.join(job_ids)}"], env)
    for step in proc.stdout.split():
        job_id, _, step_id = step.partition(".")
        if job_id in counts and step_id not in SERVICE_STEPS:
            counts[job_id] += 1
    return counts


def place_step(
    allocation_ids: Sequence[str], jobs_per_allocation: int, env: Mapping[str, str] | None = None
) -> StepPlacement:
    """Choose the least busy allocation and size one step at 1/N of it.

    Parameters
    ----------
    allocation_ids : Sequence[str]
        The allocations a user holds (not empty).
    jobs_per_allocation : int
        N, the sorts one allocation runs at once.
    env : Mapping[str, str] or None
        Environment of the Slurm commands (None: this process's).

    Returns
    -------
    StepPlacement
        The allocation with the fewest running steps (the first on a tie) and the step's share.

    Raises
    ------
    EnvironmentSortFailure
        A Slurm command is missing, or the chosen allocation is not running.
    """
    counts = running_steps(allocation_ids, env)
    return step_placement(min(allocation_ids, key=lambda job: counts[job]), jobs_per_allocation, env)


def step_placement(job_id: str, jobs_per_allocation: int, env: Mapping[str, str] | None = None) -> StepPlacement:
    """One step in allocation ``job_id``, sized at 1/N of its CPUs (and memory, where tracked).

    Parameters
    ----------
    job_id : str
        The allocation.
    jobs_per_allocation : int
        N; below 1 counts as 1.
    env : Mapping[str, str] or None
        Environment of ``scontrol`` (None: this process's).

    Returns
    -------
    StepPlacement
        At least 1 CPU and, where Slurm tracks memory, at least 1 MB per step.

    Raises
    ------
    EnvironmentSortFailure
        ``scontrol`` is missing, or the allocation's state is not RUNNING (the state is named).
    """
    cpus, memory_mb = _allocation_resources(job_id, env)
    share = max(1, int(jobs_per_allocation))
    return StepPlacement(
        job_id=job_id,
        cpus_per_step=max(1, cpus // share),
        memory_mb_per_step=None if memory_mb is None else max(1, memory_mb // share),
    )
