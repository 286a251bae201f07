"""Runs on the Slurm node, between ``srun`` and the sort worker (a sort that is a job step of its own).

Sorts in the campaign's allocations go to the allocation's sort service
instead (:mod:`sf_assets.engines.slurm_service`); this wrapper serves the
sorts that are steps of allocations a user holds (``slurm_allocation_id``).

``srun`` relays the worker's console, but not what the local engine reads
from the kernel when it reaps the worker: its CPU time and how it ended.
This small parent process reaps the worker on the node (``os.wait4``, the
same accounting as the local engine) and writes both, with the Slurm job
and step ids, to :data:`STEP_FILE` in the work folder, which the submitting
side shares.  It then exits 0, so ``srun`` adds no "task exited" line of its
own and the console matches the local engine's.

Run as ``python -m sf_assets.engines.slurm_step WORK_DIR -- WORKER_ARGV...``.

A signal delivered to the step (``scancel --signal=TERM``, how the engine
stops a step gracefully) reaches every process of the step, as the local
supervisor's signal reaches the worker's process group; one sent to this
process alone is passed on to the worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from sf_assets.core.atomic import write_json_atomic
from sf_assets.engines.threads import slurm_step_threads, thread_limited_env

STEP_FILE = "slurm_step.json"
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)



def step_identity() -> dict[str, str | None]:
    """Where this step runs, from the variables Slurm sets for every task: what the submit host needs to stop it.

    Returns
    -------
    dict[str, str or None]
        ``job_id`` and ``step_id`` (None outside Slurm) and ``node`` (this host's name).
    """
    return {
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "step_id": os.environ.get("SLURM_STEP_ID"),
        "node": socket.gethostname(),
    }


def run_step(work_dir: Path, worker_argv: list[str]) -> dict:
    """Start the worker, pass signals on, reap it; records its identity first and its outcome last in the step file.

    Parameters
    ----------
    work_dir : Path
        The sort's work folder (shared with the submit host), where :data:`STEP_FILE` is written.
    worker_argv : list[str]
        The worker's argv; it runs with the step's CPUs as its threads.

    Returns
    -------
    dict
        What was written to the step file: the identity, ``worker_pid``,
        ``exit_code`` and ``cpu_time_s`` (the worker's user and system CPU seconds).
    """
    identity = step_identity()
    step_file = work_dir / STEP_FILE
    write_json_atomic(step_file, identity)
    started: list[subprocess.Popen] = []

    def forward(signum, _frame):
        for worker in started:
            try:
                os.kill(worker.pid, signum)
            except ProcessLookupError:
                pass

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    # The worker stays in the step's process group: every proctrack plugin
    # (pgid included) then tracks it, and a signal Slurm sends to the step
    # reaches the worker and the sorter's own subprocesses directly.
    # Several steps share an allocation's nodes: each sorts with its own CPUs' worth of threads.
    env = thread_limited_env(slurm_step_threads(os.environ), os.environ)
    worker = subprocess.Popen(worker_argv, env=env)
    started.append(worker)
    _, status, usage = os.wait4(worker.pid, 0)
    outcome = {
        **identity,
        "worker_pid": worker.pid,  # a fresh worker per step
        "exit_code": os.waitstatus_to_exitcode(status),
        "cpu_time_s": usage.ru_utime + usage.ru_stime,
    }
    write_json_atomic(step_file, outcome)
    return outcome


def main(argv: list[str] | None = None) -> int:
    """``python -m sf_assets.engines.slurm_step WORK_DIR -- WORKER_ARGV...``: what ``srun`` runs.

    Parameters
    ----------
    argv : list[str] or None
        The arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 once the worker has been reaped; 2 for bad usage.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m sf_assets.engines.slurm_step WORK_DIR -- WORKER_ARGV...", file=sys.stderr)
        return 2
    run_step(Path(argv[0]), argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
