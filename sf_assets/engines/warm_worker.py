"""Keep sort workers warm between sorts, as ``run_sorter_jobs``' process pools do.

A fresh worker process per sort pays the sorter's imports and numba
compilation every time: about 20 s for spykingcircus2 and 40 s for
tridesclous2, more than the whole sort of a small recording.  A process that
launches many sorts (the pool processes of ``sf-assets run-sortings`` and
``demo``) therefore keeps its workers: each :class:`WarmWorker` runs
``python -m sf_assets.engines.worker --serve`` and takes one job after
another, so a sorter is compiled once per worker, not once per sort.

What a fresh process guarantees still holds:

* a timeout, a hung canary or an interrupted step stops the worker's whole
  process group, and the worker is discarded: the next sort gets a new one;
* a worker that dies (a crash, the kernel's OOM killer) fails only the job it
  was running, with its exit status and CPU time (the reaped process's, less
  what its earlier jobs used);
* each job's console output (file descriptors 1 and 2, so C code and child
  processes too) goes to that job's own console file;
* a worker serves at most :data:`MAX_JOBS_PER_WORKER` jobs, and is replaced
  when the environment it was started in changed.

A sorter's helper processes that outlive one job (loky's reusable workers,
with ``n_jobs > 1``) keep writing to the console of the job that started them.
Engines whose worker runs elsewhere (Slurm steps, containers) keep a fresh
process per sort.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from sf_assets.engines.job import CONSOLE_FILE, EXIT_FILE, WORKER_FILE, read_json_if_present
from sf_assets.engines.supervisor import abandon_process, poll_without_reaping, reap, stop_process_group

MAX_JOBS_PER_WORKER = 20
MAX_IDLE_WORKERS = 4


def environment_key(env: Mapping[str, str]) -> str:
    """What a worker inherits at its start; a worker started under another one is stale."""
    payload = repr((sys.executable, os.getcwd(), sorted(env.items())))
    return hashlib.sha1(payload.encode()).hexdigest()


class WarmWorker:
    """One ``worker --serve`` process, in its own session (so its group can be stopped)."""

    def __init__(self, env: Mapping[str, str]):
        self.key = environment_key(env)
        self.jobs_done = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sf_assets.engines.worker", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            env=dict(env),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return poll_without_reaping(self.proc) is None

    def submit(self, work_dir: Path) -> "WarmJob":
        # The job's console exists even if the worker dies before it opens it.
        (Path(work_dir) / CONSOLE_FILE).touch()
        self.proc.stdin.write(f"{work_dir}\n")
        self.proc.stdin.flush()
        return WarmJob(self, Path(work_dir))

    def close(self, wait_s: float = 5.0) -> None:
        """Ask an idle worker to exit (end of its command stream); stop it if it does not."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            stop_process_group(self.proc, 2.0)
            self.proc.wait()


class WarmJob:
    """A job on a warm worker; follows :class:`~sf_assets.engines.supervisor.WorkerRun`."""

    def __init__(self, worker: WarmWorker, work_dir: Path):
        self.worker, self.work_dir = worker, work_dir

    def _answer(self) -> dict | None:
        return read_json_if_present(self.work_dir / EXIT_FILE)

    def finished(self) -> bool:
        return (self.work_dir / EXIT_FILE).exists() or not self.worker.alive()

    def stop(self, grace_s: float) -> None:
        stop_process_group(self.worker.proc, grace_s)

    def outcome(self) -> tuple[int | None, float | None]:
        answer = self._answer()
        if answer is not None and self.worker.alive():
            self.worker.jobs_done += 1
            _POOL.checkin(self.worker)
            return answer["exit_code"], answer["cpu_time_s"]
        exit_code, total_cpu_s = reap(self.worker.proc)
        if answer is not None:  # answered, then died
            return answer["exit_code"], answer["cpu_time_s"]
        taken = read_json_if_present(self.work_dir / WORKER_FILE)
        if total_cpu_s is not None and taken is not None:
            total_cpu_s = max(0.0, total_cpu_s - taken["cpu_before_s"])
        return exit_code, total_cpu_s

    def abandon(self) -> None:
        abandon_process(self.worker.proc)


class WorkerPool:
    """The idle warm workers of this process; each job checks one out for itself."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list[WarmWorker] = []

    def checkout(self, env: Mapping[str, str]) -> WarmWorker:
        key = environment_key(env)
        stale = []
        with self._lock:
            worker = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.key == key and candidate.alive():
                    worker = candidate
                    break
                stale.append(candidate)
        for old in stale:
            old.close()
        return worker or WarmWorker(env)

    def checkin(self, worker: WarmWorker) -> None:
        with self._lock:
            keep = worker.jobs_done < MAX_JOBS_PER_WORKER and len(self._idle) < MAX_IDLE_WORKERS
            if keep:
                self._idle.append(worker)
        if not keep:
            worker.close()

    def prestart(self, env: Mapping[str, str]) -> None:
        """Start a worker for ``env`` now unless one is idle already."""
        with self._lock:
            if environment_key(env) in {w.key for w in self._idle}:
                return
        self.checkin(WarmWorker(env))

    def idle_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._idle]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()


_POOL = WorkerPool()
atexit.register(_POOL.close)


def start_warm_job(work_dir: Path, env: Mapping[str, str]) -> WarmJob:
    """Hand the prepared job in ``work_dir`` to an idle warm worker started with ``env``, or to a new one."""
    worker = _POOL.checkout(env)
    try:
        return worker.submit(work_dir)
    except (BrokenPipeError, OSError):  # died while idle, after the alive() check
        if worker.proc.poll() is None:
            stop_process_group(worker.proc, 1.0)
        return WarmWorker(env).submit(work_dir)


def prestart(env: Mapping[str, str]) -> None:
    """Start a warm worker now, so its start and imports overlap other work (a recording's fetch)."""
    _POOL.prestart(env)


def idle_worker_pids() -> list[int]:
    """For tests and diagnostics: the workers waiting for a job in this process."""
    return _POOL.idle_pids()
