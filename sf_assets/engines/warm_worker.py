"""Keep sort workers warm between sorts, as ``run_sorter_jobs``' process pools do.

A fresh worker process per sort pays the sorter's imports and numba
compilation every time: about 20 s for spykingcircus2 and 40 s for
tridesclous2, more than the whole sort of a small recording.  The host's sort
service (:mod:`sf_assets.engines.sort_service`) therefore keeps one worker per
slot: each :class:`WarmWorker` serves one job after another (the ``--serve``
loop of :mod:`sf_assets.engines.worker`), so a sorter is compiled once per
worker, not once per sort.  Workers are forked from the service's template
(:mod:`sf_assets.engines.worker_template`), which has already imported
spikeinterface, so a new worker costs milliseconds, not seconds of CPU.
A warm worker can also copy itself between two jobs (:meth:`WarmWorker.copy`,
:mod:`sf_assets.engines.worker_clone`): the copy starts with every sorter the
worker compiled, so another slot need not compile them again.

What a fresh process guarantees still holds:

* a timeout, a hung canary or an interrupted step stops the worker's whole
  process group, and the worker is discarded: the next sort gets a new one;
* a worker that dies (a crash, the kernel's OOM killer) fails only the job it
  was running, with its exit status and CPU time (the reaped process's, less
  what its earlier jobs used);
* each job's console output (file descriptors 1 and 2, so C code and child
  processes too) goes to that job's own console file;
* a worker serves at most :data:`MAX_JOBS_PER_WORKER` jobs;
* a job counts as ended only on its own exit file: each submission carries
  a token the worker writes back, so the exit file of an earlier try in the
  same folder (a lost Slurm allocation's worker, still finishing after the
  retry emptied the folder) is not taken for this job's.

A sorter's helper processes that outlive one job (loky's reusable workers,
with ``n_jobs > 1``) keep writing to the console of the job that started them.
Sorts on Slurm use the same service, run inside their allocation
(:mod:`sf_assets.engines.slurm_service`); local container sorts and Slurm
steps in allocations a user holds keep a fresh process per sort.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from sf_assets.engines.job import CONSOLE_FILE, EXIT_FILE, TOKEN_SEPARATOR, WORKER_FILE, read_json_if_present
from sf_assets.engines.supervisor import abandon_process, stop_process_group
from sf_assets.engines.worker_clone import fork_command
from sf_assets.engines.worker_template import WorkerTemplate

MAX_JOBS_PER_WORKER = 20
COPY_POLL_S = 0.02


class WarmWorker:
    """One serving worker, forked by the service's template, in its own session (so its group can be stopped)."""

    def __init__(self, env: Mapping[str, str], template: WorkerTemplate, proc=None):
        self.jobs_done = 0
        self.env = dict(env)
        self.proc = template.spawn(env) if proc is None else proc
        # A job's folder and a request for a copy may be written from two slots' threads.
        self._send_lock = threading.Lock()

    def _send(self, line: str) -> None:
        with self._send_lock:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()

    def copy(self, template: WorkerTemplate, gone: Callable[[], bool]) -> "WarmWorker | str":
        """A copy of this worker, with every sorter it compiled, made once its current job ends.

        The request waits in this worker's command stream behind the job it is
        running, so the copy is forked between two jobs
        (:mod:`sf_assets.engines.worker_clone`).

        Parameters
        ----------
        template : WorkerTemplate
            The template that forked this worker (it adopts the copy).
        gone : Callable[[], bool]
            Stop waiting when it says so (the client left).

        Returns
        -------
        WarmWorker or str
            The copy; or why there is none (refused, this worker died or was stopped first, the client left).
        """
        folder = Path(tempfile.mkdtemp(prefix="sf-assets-copy-"))  # the FIFO and the answer; removed after
        fifo, reply = folder / "commands.fifo", folder / "answer.json"
        os.mkfifo(fifo, 0o600)
        # Read and write: opening does not wait for the copy, and what is written before it opens waits in the FIFO.
        command_fd = os.open(fifo, os.O_RDWR)
        try:
            try:
                self._send(fork_command(fifo, reply, self.env))
            except (OSError, ValueError):  # its pipe broken, or closed by its release
                return "the worker died"
            while True:
                answer = read_json_if_present(reply)
                if answer is not None:
                    break
                if not self.alive():
                    return "the worker ended before it made the copy"
                if gone():
                    return "the client left"
                time.sleep(COPY_POLL_S)
            if "pid" not in answer:
                return answer.get("error", "no copy")
            copy = WarmWorker(self.env, template, proc=template.adopt(answer["pid"], command_fd))
            command_fd = -1
            return copy
        finally:
            # The FIFO goes first, while this end still holds it open: a copy opening it from now on
            # fails, instead of blocking for good on a FIFO with no writer left.
            shutil.rmtree(folder, ignore_errors=True)
            if command_fd >= 0:
                os.close(command_fd)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Is the worker process still running (and so able to take a job)?

        Returns
        -------
        bool
            True until it exits.
        """
        return self.proc.poll() is None

    def submit(self, work_dir: Path, on_idle: Callable[["WarmWorker"], None] | None = None) -> "WarmJob":
        """Hand the prepared job in ``work_dir`` to this worker.

        Parameters
        ----------
        work_dir : Path
            The prepared job's folder.
        on_idle : callable or None
            Called with this worker once the job ended and the worker survived it.

        Returns
        -------
        WarmJob
            The job, for :func:`~sf_assets.engines.supervisor.watch`.

        Raises
        ------
        OSError
            The worker died while idle (its command pipe is broken).
        """
        # The job's console exists even if the worker dies before it opens it.
        (Path(work_dir) / CONSOLE_FILE).touch()
        token = uuid.uuid4().hex
        self._send(f"{work_dir}{TOKEN_SEPARATOR}{token}\n")
        return WarmJob(self, Path(work_dir), on_idle, token)

    def close(self, wait_s: float = 5.0) -> None:
        """Ask an idle worker to exit (end of its command stream); stop it if it does not.

        Parameters
        ----------
        wait_s : float
            Seconds to wait before stopping it.
        """
        try:
            with self._send_lock:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            stop_process_group(self.proc, 2.0)
            self.proc.wait()


class WarmJob:
    """A job on a warm worker; follows :class:`~sf_assets.engines.supervisor.WorkerRun`.

    ``on_idle`` is called with the worker when the job ended and the worker
    survived it, ready for the next job (the sort service's slot keeps it).
    """

    def __init__(
        self,
        worker: WarmWorker,
        work_dir: Path,
        on_idle: Callable[[WarmWorker], None] | None = None,
        token: str | None = None,
    ):
        self.worker, self.work_dir, self._on_idle, self.token = worker, work_dir, on_idle, token

    def _answer(self) -> dict | None:
        """The exit file this submission's worker wrote (None while absent, or another try's)."""
        answer = read_json_if_present(self.work_dir / EXIT_FILE)
        return answer if answer is not None and answer.get("token") == self.token else None

    def finished(self) -> bool:
        """Has the job ended: the worker wrote its exit file, or died?

        Returns
        -------
        bool
            True once it has.
        """
        return self._answer() is not None or not self.worker.alive()

    def stop(self, grace_s: float) -> None:
        """End the job early (timeout, hung canary); its worker does not survive it.

        Parameters
        ----------
        grace_s : float
            Seconds between SIGTERM and SIGKILL.
        """
        stop_process_group(self.worker.proc, grace_s)

    def outcome(self) -> tuple[int | None, float | None]:
        """The job's result for the supervisor, once it has ended or been stopped.

        Returns
        -------
        tuple[int | None, float | None]
            (exit code, CPU seconds); None where unknown.
        """
        answer = self._answer()
        if answer is not None and self.worker.alive():
            self.worker.jobs_done += 1
            if self._on_idle is not None:
                self._on_idle(self.worker)
            return answer["exit_code"], answer["cpu_time_s"]
        exit_code, total_cpu_s = self.worker.proc.exit_status(timeout=None)
        if answer is not None:  # answered, then died
            return answer["exit_code"], answer["cpu_time_s"]
        taken = read_json_if_present(self.work_dir / WORKER_FILE)
        if total_cpu_s is not None and taken is not None:
            total_cpu_s = max(0.0, total_cpu_s - taken["cpu_before_s"])
        return exit_code, total_cpu_s

    def abandon(self) -> None:
        """Stop the worker quickly: the supervising step was interrupted, and a stopped worker is not reused."""
        abandon_process(self.worker.proc)
