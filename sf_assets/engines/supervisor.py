"""Start the sort worker, watch it, and turn what it leaves behind into reports.

The supervisor is the same for every engine; an engine only decides the
command line that starts the worker (plain ``python -m ...``, or wrapped in
``srun`` for Slurm).  It owns the parts that must hold whatever happens
inside the worker:

* the timeout: the worker's whole process group is terminated, then killed;
* the console: the worker's stdout and stderr go to one file, kept even when
  the sort crashes;
* the CPU time, read from the kernel's accounting of the reaped child
  (``os.wait4``), so a crashed or killed worker still has one;
* interrupts: if the supervising step is stopped, the worker goes with it.

:func:`supervise` is a generator: it yields the :class:`CanaryReport` as soon
as the worker decides it, so a Dagster step can emit the canary check result
before the full sort has finished, then the final :class:`SortReport`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from sf_assets.engines.job import (
    CANARY_FILE,
    CONSOLE_FILE,
    JOB_FILE,
    RESULT_FILE,
    SUPERVISOR,
    CanaryReport,
    SortJob,
    SortReport,
    read_json_if_present,
    settle_canary,
)
from sf_assets.engines.work_dirs import IN_USE_FILE

# How often a waiting step looks at its job's folder: a sort's end is noticed at most this late.
POLL_INTERVAL_S = 0.05
KILL_GRACE_S = 10.0


class WorkerProcess(Protocol):
    """A sort worker's process as the supervisor handles it, whoever started it.

    Two kinds: :class:`SessionChild`, a child of this process (a fresh worker
    per sort, every Slurm step's ``srun``), and
    :class:`~sf_assets.engines.worker_template.ForkedWorker`, forked by the
    sort service's template, which reaps it and reports its exit.  Neither may
    lose the worker's CPU time: asking whether it exited never reaps it.
    """

    pid: int

    def poll(self) -> int | None:
        """Has it exited?  Never reaps, so :meth:`exit_status` still reads the CPU time.

        Returns
        -------
        int or None
            The exit code, or None while it runs.
        """

    def exit_status(self, timeout: float | None = 0.0) -> tuple[int | None, float | None] | None:
        """``(exit code, CPU seconds)`` once it has exited; None if it is still running after ``timeout``.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait (None: until it exits).

        Returns
        -------
        tuple or None
            The exit code (negative: the signal that ended it; None when unknown) and CPU seconds (None when unknown).
        """


class SessionChild:
    """A worker this process started with ``subprocess.Popen``, reaped with ``wait4`` for its CPU time.

    ``Popen.poll`` would reap the child and lose the kernel's account of its
    CPU time, so :meth:`poll` looks without reaping and :meth:`exit_status`
    reaps it once, reading that account.
    """

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.pid = popen.pid

    def poll(self) -> int | None:
        """Has it exited?  Leaves it unreaped (``waitid`` with ``WNOWAIT``).

        Returns
        -------
        int or None
            Its exit status, or None while it runs.
        """
        try:
            result = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped already
            return self.popen.returncode
        return None if result is None else result.si_status

    def exit_status(self, timeout: float | None = 0.0) -> tuple[int | None, float | None] | None:
        """Reap it and return ``(exit code, CPU seconds user+system)``; None if it still runs after ``timeout``.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait (None: until it exits).

        Returns
        -------
        tuple or None
            The exit code and CPU seconds (None when it was reaped before, by an earlier call or by Popen).
        """
        if timeout is not None:
            deadline = time.monotonic() + timeout
            while self.poll() is None:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(POLL_INTERVAL_S)
        try:
            _, status, usage = os.wait4(self.pid, 0)
        except ChildProcessError:  # already reaped
            return self.popen.returncode, None
        self.popen.returncode = os.waitstatus_to_exitcode(status)
        return self.popen.returncode, usage.ru_utime + usage.ru_stime


class SortCancelled(Exception):
    """The step that asked for the sort stopped waiting for it (its run was terminated or died)."""


def prepare_work_dir(job: SortJob) -> Path:
    """Empty the attempt's own folder (keeping its claim), creating it if missing; write the job.

    The folder belongs to one sort attempt (see :mod:`sf_assets.engines.work_dirs`);
    emptying it only clears what an earlier try of the same attempt left
    (a Slurm step whose allocation was lost), never another attempt's files.

    Parameters
    ----------
    job : SortJob
        The sort; its ``work_dir`` is the folder.

    Returns
    -------
    Path
        The folder.
    """
    work_dir = Path(job.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for entry in work_dir.iterdir():
        if entry.name == IN_USE_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (work_dir / JOB_FILE).write_text(job.to_json())
    return work_dir


def worker_command(python: str, work_dir: Path) -> list[str]:
    """The command that runs one job in a fresh worker process.

    Parameters
    ----------
    python : str
        The interpreter.
    work_dir : Path
        The prepared job's folder.

    Returns
    -------
    list[str]
        The argv.
    """
    return [python, "-m", "sf_assets.engines.worker", str(work_dir)]


def stop_process_group(proc: WorkerProcess, grace_s: float) -> None:
    """SIGTERM the worker's process group, SIGKILL it after ``grace_s``.

    The worker is left unreaped, so its ``exit_status`` still reads its CPU time.

    Parameters
    ----------
    proc : WorkerProcess
        The worker, leader of its own session.
    grace_s : float
        Seconds between SIGTERM and SIGKILL.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return
            time.sleep(0.1)


def _as_reported(exit_code: int | None, cpu_time_s: float | None) -> tuple[int | None, float | None]:
    return exit_code, cpu_time_s


def abandon_process(proc: WorkerProcess, stop: Callable[[WorkerProcess, float], None] = stop_process_group) -> None:
    """Stop ``proc`` quickly (the step was interrupted) and reap it if it is gone.

    Parameters
    ----------
    proc : WorkerProcess
        The worker.
    stop : callable
        How to stop it (:func:`stop_process_group`, or the Slurm step's stop).
    """
    stop(proc, 2.0)
    if proc.poll() is not None:
        proc.exit_status(timeout=None)


class WorkerRun(Protocol):
    """A worker busy with one job, as :func:`watch` sees it, whatever started it."""

    def finished(self) -> bool:
        """Has the job ended (the worker answered, or died)?

        Returns
        -------
        bool
            True once it has.
        """

    def stop(self, grace_s: float) -> None:
        """End the job early (timeout, hung canary); its worker does not survive it.

        Parameters
        ----------
        grace_s : float
            Seconds between SIGTERM and SIGKILL.
        """

    def outcome(self) -> tuple[int | None, float | None]:
        """The job's (exit code, CPU seconds), once it has ended or been stopped.

        Returns
        -------
        tuple[int | None, float | None]
            (exit code, CPU seconds); None where unknown.
        """

    def abandon(self) -> None:
        """The supervising step was interrupted: stop the job and clean up, quickly."""


class ProcessRun:
    """A fresh process that runs one job and exits (the default, and every Slurm step)."""

    def __init__(self, proc: SessionChild, stop, worker_outcome):
        self.proc, self._stop, self._worker_outcome = proc, stop, worker_outcome

    def finished(self) -> bool:
        """Has the process exited? It is not reaped here: :meth:`outcome` reads its CPU time.

        Returns
        -------
        bool
            True once it has.
        """
        return self.proc.poll() is not None

    def stop(self, grace_s: float) -> None:
        """End the job early (timeout, hung canary); its worker does not survive it.

        Parameters
        ----------
        grace_s : float
            Seconds between SIGTERM and SIGKILL.
        """
        self._stop(self.proc, grace_s)

    def outcome(self) -> tuple[int | None, float | None]:
        """The job's result for the supervisor, once it has ended or been stopped.

        Returns
        -------
        tuple[int | None, float | None]
            (exit code, CPU seconds); None where unknown.
        """
        return self._worker_outcome(*self.proc.exit_status(timeout=None))

    def abandon(self) -> None:
        """Stop the process quickly and reap it: the supervising step was interrupted."""
        abandon_process(self.proc, self._stop)


def supervise(
    job: SortJob,
    command: Sequence[str],
    *,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    stop: Callable[[WorkerProcess, float], None] = stop_process_group,
    canary_timeout_s: float | None = None,
    worker_outcome: Callable[[int | None, float | None], tuple[int | None, float | None]] = _as_reported,
) -> Iterator[CanaryReport | SortReport]:
    """Run ``command`` (which starts the worker on ``job``) to completion.

    Parameters
    ----------
    job : SortJob
        the sort; its ``work_dir`` must have been prepared with :func:`prepare_work_dir`.
    command : Sequence[str]
        argv that starts ``sf_assets.engines.worker`` on the work folder.
    timeout_s, canary_timeout_s : float | None
        see :func:`watch`.
    env : dict[str, str] | None
        the command's environment (None: this process's).
    stop : Callable[[WorkerProcess, float], None]
        ends the command early (timeout, interrupt) within about ``grace_s``; an engine whose worker runs
        elsewhere (Slurm) supplies one that also ends the remote work.
    worker_outcome : Callable[[int | None, float | None], tuple[int | None, float | None]]
        maps the command's (exit code, CPU seconds) to the worker's, for an engine whose command only relays
        the worker.

    Yields
    ------
    The canary report (once, when it appears) and finally the sort report.
    """
    with open(Path(job.work_dir) / CONSOLE_FILE, "wb") as console:
        start_time, started = time.time(), time.monotonic()
        proc = SessionChild(
            subprocess.Popen(
                list(command),
                stdout=console,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        )
        yield from watch(
            job,
            ProcessRun(proc, stop, worker_outcome),
            timeout_s=timeout_s,
            canary_timeout_s=canary_timeout_s,
            start=(start_time, started),
        )


def watch(
    job: SortJob,
    run: WorkerRun,
    *,
    timeout_s: float | None = None,
    canary_timeout_s: float | None = None,
    start: tuple[float, float] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[CanaryReport | SortReport]:
    """Follow a started job to its end and turn what it left in its folder into reports.

    Parameters
    ----------
    job : SortJob
        The sort.
    run : WorkerRun
        The worker busy with it.
    timeout_s : float or None
        Wall-clock limit for canary plus full sort; None or 0: none.
    canary_timeout_s : float or None
        The canary must be decided within this many seconds of the start;
        some sorters hang instead of failing on a degenerate window
        (mountainsort5 on a pure sine wave), and a hung canary is a failed
        one: the full sort does not start.
    start : tuple[float, float] or None
        (epoch time, monotonic time) the job started; default now.
    cancelled : callable or None
        Asked at every poll; True ends the job at once as an interrupt does
        (the sort service's client went away).

    Yields
    ------
    CanaryReport or SortReport
        The canary's report as soon as it is decided, then the sort's.
    """
    work_dir = Path(job.work_dir)
    start_time, started = start or (time.time(), time.monotonic())
    canary: CanaryReport | None = None
    timed_out = hung = False
    try:
        while True:
            done = run.finished()
            if canary is None:
                canary = _read_canary(work_dir)
                if canary is not None:
                    yield canary
            if done:
                break
            if cancelled is not None and cancelled():
                raise SortCancelled("the sort's client went away")
            if timeout_s and time.monotonic() - started > timeout_s:
                timed_out = True
                run.stop(KILL_GRACE_S)
                break
            if canary is None and canary_timeout_s and time.monotonic() - started > canary_timeout_s:
                # The worker settles its canary the same way: whichever is first decides, so a
                # canary finishing at this very moment cannot go on to the full sort.
                verdict = _hung_canary(canary_timeout_s)
                canary = settle_canary(work_dir, verdict)
                yield canary
                if canary is not verdict:  # the worker's came first: it stands
                    continue
                hung = True
                run.stop(KILL_GRACE_S)
                break
            time.sleep(POLL_INTERVAL_S)
    except BaseException:
        # The step was interrupted (run cancelled, Ctrl-C): never leave a
        # sorter running behind it.
        run.abandon()
        raise
    exit_code, cpu_time_s = run.outcome()
    end_time = time.time()
    if canary is None:
        canary = _read_canary(work_dir)
        if canary is not None:
            yield canary
    yield _final_report(
        work_dir,
        canary,
        exit_code,
        cpu_time_s,
        timed_out,
        timeout_s,
        start_time,
        end_time,
        time.monotonic() - started,
        hung=hung,
    )


def _hung_canary(canary_timeout_s: float) -> CanaryReport:
    return CanaryReport(
        status="failed",
        failure_class="resource",
        elapsed_s=canary_timeout_s,
        retry_advice="skip this recording, or retry with a smaller job",
        message=f"the canary did not finish within {canary_timeout_s:g} s: the sorter hangs on this recording",
        decided_by=SUPERVISOR,
    )


def _read_canary(work_dir: Path) -> CanaryReport | None:
    data = read_json_if_present(work_dir / CANARY_FILE)
    return None if data is None else CanaryReport(**data)


def _final_report(
    work_dir, canary, exit_code, cpu_time_s, timed_out, timeout_s, start_time, end_time, elapsed_s, hung=False
):
    # A hung canary is decided here: a worker that still finished during the stop's grace
    # (a slow machine) does not turn a canary already reported as hung into a sorting.
    result = {} if hung else (read_json_if_present(work_dir / RESULT_FILE) or {})
    console_path = str(work_dir / CONSOLE_FILE)
    # What the worker says of any attempt, sorted or not: provenance, and the JIT cache's use where it had one.
    worker_details = {"provenance": result.get("provenance")}
    if result.get("jit_cache"):
        worker_details["jit_cache"] = result["jit_cache"]
    common = dict(
        start_time=start_time,
        end_time=end_time,
        elapsed_s=elapsed_s,
        cpu_time_s=cpu_time_s,
        console_path=console_path,
        canary=canary,
        exit_code=exit_code,
    )
    if timed_out:
        return SortReport(
            errored=True,
            timed_out=True,
            error_message=f"timed out after {timeout_s:g} s; the sort was terminated",
            failure_class="timeout",
            **common,
        )
    if exit_code == 0 and result.get("errored") is False:
        return SortReport(
            errored=False,
            sorting_object_uri=result["sorting_object_uri"],
            num_units=result["num_units"],
            details={"sort_elapsed_s": result.get("sort_elapsed_s"), **worker_details},
            **common,
        )
    if canary is not None and canary.blocks_full_sort and not result:  # hung canary, stopped here
        result = {"error_message": canary.message, "failure_class": canary.failure_class, "stage": "canary"}
    message = result.get("error_message") or _describe_exit(exit_code)
    return SortReport(
        errored=True,
        error_message=message,
        failure_class=result.get("failure_class"),
        details={"stage": result.get("stage", "crash"), **worker_details},
        **common,
    )


def _describe_exit(exit_code: int | None) -> str:
    if exit_code is not None and exit_code < 0:
        return f"the sort worker was killed by signal {signal.Signals(-exit_code).name}"
    return f"the sort worker exited with code {exit_code} without reporting a result"
