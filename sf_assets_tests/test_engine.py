"""The local engine: worker + supervisor on a real recording, without Dagster."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sf_assets.engines.engine import EngineSettings, canary_timeout_s, run_sort
from sf_assets.engines.job import SUPERVISOR, CanaryReport, SortJob, SortReport
from sf_assets.engines.supervisor import SessionChild, prepare_work_dir, supervise, worker_command
from sf_assets_tests.sort_jobs import sort_job


def _job(synthetic_studyset, tmp_path: Path, **changes) -> SortJob:
    return sort_job(synthetic_studyset, **{"work_dir": tmp_path / "work", **changes})


def test_canary_then_full_sort_in_one_worker(synthetic_studyset, tmp_path):
    job = _job(synthetic_studyset, tmp_path)
    started, canary, report = list(run_sort(job, EngineSettings(work_root=str(tmp_path))))
    assert started["slot"] >= 0 and started["worker_pid"] > 0, "the host's sort service took it"
    assert isinstance(canary, CanaryReport) and canary.status == "passed" and canary.window_s == 3.0
    assert isinstance(report, SortReport) and not report.errored
    assert report.num_units > 0 and report.sorting_object_uri.startswith("sha1://")
    assert report.cpu_time_s and report.cpu_time_s > 0, "CPU time comes from the reaped worker"
    assert report.end_time > report.start_time
    console = Path(report.console_path).read_text()
    # One process: the canary line and the full sort's line share the console.
    assert "canary: passed" in console and "sorted MountainSort5/" in console
    assert not (Path(job.work_dir) / "_canary").exists()


def test_a_hung_canary_is_stopped_and_blocks_the_full_sort(synthetic_studyset, tmp_path):
    job = _job(synthetic_studyset, tmp_path)
    work_dir = prepare_work_dir(job)
    # The worker cannot even import the sorter in 0.1 s: the canary is "hung".
    events = list(supervise(job, worker_command(sys.executable, work_dir), canary_timeout_s=0.1))
    canary, report = events
    assert canary.status == "failed" and canary.failure_class == "resource"
    assert "did not finish within 0.1 s" in canary.message
    assert report.errored and report.failure_class == "resource"
    assert not (work_dir / "sorter").exists()
    assert report.exit_code is not None and report.exit_code < 0, "the worker was signalled"


def test_a_canary_finishing_after_the_supervisors_verdict_does_not_start_the_full_sort(synthetic_studyset, tmp_path):
    from sf_assets.engines.job import CANARY_FILE
    from sf_assets.engines.worker import EXIT_CANARY_STOPPED

    job = _job(synthetic_studyset, tmp_path)
    work_dir = prepare_work_dir(job)
    # The supervisor's verdict, written the moment its canary timeout ran out (as supervise does).
    verdict = {"status": "failed", "failure_class": "resource", "message": "did not finish", "decided_by": SUPERVISOR}
    (work_dir / CANARY_FILE).write_text(json.dumps(verdict))
    worker = subprocess.run(worker_command(sys.executable, work_dir), capture_output=True, text=True, timeout=300)
    assert worker.returncode == EXIT_CANARY_STOPPED, worker.stdout + worker.stderr
    assert not (work_dir / "sorter").exists(), "the full sort did not start"
    assert json.loads((work_dir / CANARY_FILE).read_text()) == verdict, "the verdict stands"
    assert "decided by the supervisor" in worker.stdout


def test_the_first_canary_written_stands_and_the_other_side_gets_it(tmp_path):
    from sf_assets.engines.job import settle_canary

    worker_side = CanaryReport(status="passed", num_units=3)
    supervisor_side = CanaryReport(status="failed", failure_class="resource", decided_by=SUPERVISOR)
    assert settle_canary(tmp_path, worker_side) is worker_side
    assert settle_canary(tmp_path, supervisor_side) == worker_side, "too late: the worker's canary stands"
    other = tmp_path / "other"
    other.mkdir()
    assert settle_canary(other, supervisor_side) is supervisor_side
    assert settle_canary(other, worker_side) == supervisor_side


def test_a_worker_started_with_stop_signals_ignored_is_stopped_by_sigterm_at_its_timeout(
    synthetic_studyset, tmp_path, ignoring_stop_signals
):
    job = _job(synthetic_studyset, tmp_path)
    work_dir = prepare_work_dir(job)
    # 1 s: past the worker's start (it gives back SIGTERM about 0.15 s in), in its imports or its
    # canary. At 3 s, a worker whose sorter loaded from a warm JIT cache had finished the sort (3.03 s).
    (report,) = [r for r in supervise(job, worker_command(sys.executable, work_dir), timeout_s=1.0) if isinstance(r, SortReport)]
    assert report.timed_out and report.errored
    assert report.exit_code == -signal.SIGTERM, "the worker ignored SIGTERM (sorted on through the grace, or SIGKILL ended it)"


def test_a_child_seen_exited_stays_unreaped_until_its_cpu_time_is_read():
    child = SessionChild(subprocess.Popen([sys.executable, "-c", "sum(range(3 * 10**7))"], start_new_session=True))
    assert child.exit_status(timeout=0.0) is None, "still running"
    while child.poll() is None:
        time.sleep(0.05)
    assert child.poll() == 0
    with open(f"/proc/{child.pid}/stat") as stat:
        assert stat.read().split(") ")[1][0] == "Z", "seen exited, left for wait4 to reap"
    code, cpu_s = child.exit_status(timeout=None)
    assert code == 0 and cpu_s > 0.05, "the kernel's account of the child's CPU time"
    assert not os.path.exists(f"/proc/{child.pid}"), "reaped"
    assert child.exit_status(timeout=None) == (0, None), "reaped once: asked again, the CPU time is gone"


def test_canary_timeout_has_a_floor_and_a_ceiling():
    assert canary_timeout_s(None) is None and canary_timeout_s(0) is None and canary_timeout_s(float("nan")) is None
    assert canary_timeout_s(5) == 120.0
    assert canary_timeout_s(50) == 200.0
    assert canary_timeout_s(600) == 300.0


def test_a_worker_killed_from_outside_is_an_errored_report(synthetic_studyset, tmp_path):
    job = _job(synthetic_studyset, tmp_path, canary_first_n_s=0.0)
    prepare_work_dir(job)
    command = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    [report] = list(supervise(job, command))
    assert report.errored and "killed by signal SIGKILL" in report.error_message
    assert os.path.exists(report.console_path)


def test_reuse_workers_off_gives_a_process_per_sort(synthetic_studyset, tmp_path):
    job = _job(synthetic_studyset, tmp_path, canary_first_n_s=0.0)
    [_, report] = list(run_sort(job, EngineSettings(work_root=str(tmp_path), reuse_workers=False)))
    assert not report.errored
    assert not (Path(job.work_dir) / "worker.json").exists()


def test_sort_threads_are_fixed_not_a_share_of_the_cores(synthetic_studyset, tmp_path, monkeypatch):
    """A sort's thread count comes from threads_per_sort alone, so a score does not depend on
    how many sorts ran beside it; a variable the user set wins."""
    from sf_assets.engines.threads import THREAD_LIMIT_VARS, slurm_step_threads, thread_limited_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = thread_limited_env(1, {"PATH": "/bin"})
    assert {var: env[var] for var in THREAD_LIMIT_VARS} == dict.fromkeys(THREAD_LIMIT_VARS, "1")
    assert thread_limited_env(0, {})["OMP_NUM_THREADS"] == "1", "never zero threads"
    assert thread_limited_env(1, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3", "the user's setting wins"
    # A Slurm step: its --cpus-per-task, else the CPUs it may run on.
    assert slurm_step_threads({"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert slurm_step_threads({}) == slurm_step_threads({"SLURM_CPUS_PER_TASK": ""}) == len(os.sched_getaffinity(0))
    # The worker (on the sort service, or fresh) sorts with it, whatever the number of slots.
    for reuse, slots in ((True, 3), (False, 0)):
        job = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / f"reuse-{reuse}"), canary_first_n_s=0.0)
        settings = EngineSettings(work_root=str(tmp_path), reuse_workers=reuse, service_slots=slots, threads_per_sort=1)
        *_, report = list(run_sort(job, settings))
        assert ", threads 1 (numba 1)\n" in Path(report.console_path).read_text()
        threads = report.details["provenance"]["threads"]
        assert (threads["applied"], threads["numba"]) == (1, 1)
        assert {pool["num_threads"] for pool in threads["threadpools"]} == {1}


@contextlib.contextmanager
def _prepared_job_on_a_warm_worker(synthetic_studyset, tmp_path):
    """A prepared job and a warm worker forked from a template of its own (closed after)."""
    from sf_assets.engines.threads import thread_limited_env
    from sf_assets.engines.warm_worker import WarmWorker
    from sf_assets.engines.worker_template import WorkerTemplate

    job = _job(synthetic_studyset, tmp_path, canary_first_n_s=0.0)
    prepare_work_dir(job)
    template = WorkerTemplate(thread_limited_env(1, os.environ))
    try:
        yield job, WarmWorker(template.env, template)
    finally:
        template.close()


def test_an_earlier_trys_exit_file_in_the_folder_is_not_taken_for_the_jobs(synthetic_studyset, tmp_path):
    # A Slurm retry empties the folder and sorts again; the lost allocation's worker may still
    # write its exit file there a moment later.  The watch must wait for this job's own.
    from sf_assets.engines.job import EXIT_FILE
    from sf_assets.engines.supervisor import watch

    with _prepared_job_on_a_warm_worker(synthetic_studyset, tmp_path) as (job, worker):
        run = worker.submit(Path(job.work_dir))
        stale = {"exit_code": 1, "cpu_time_s": 0.03, "token": "the lost try's"}
        (Path(job.work_dir) / EXIT_FILE).write_text(json.dumps(stale))
        *_, report = list(watch(job, run))
        worker.close()
    assert not report.errored, report.error_message
    assert report.num_units > 0 and report.elapsed_s > 0.1
    assert json.loads((Path(job.work_dir) / EXIT_FILE).read_text())["token"] == run.token


def test_a_warm_worker_dead_before_it_took_the_job_is_an_errored_report(synthetic_studyset, tmp_path):
    import signal

    from sf_assets.engines.supervisor import watch

    with _prepared_job_on_a_warm_worker(synthetic_studyset, tmp_path) as (job, worker):
        os.kill(worker.pid, signal.SIGSTOP)  # it cannot read the job, let alone open its console
        run = worker.submit(Path(job.work_dir))
        os.kill(worker.pid, signal.SIGKILL)
        [report] = list(watch(job, run))
    assert report.errored and "killed by signal SIGKILL" in report.error_message
    assert Path(report.console_path).read_text() == ""
    assert not os.path.exists(f"/proc/{worker.pid}"), "reaped"
