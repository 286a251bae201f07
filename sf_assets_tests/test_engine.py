"""The local engine: worker + supervisor on a real recording, without Dagster."""
from __future__ import annotations

import os
from pathlib import Path

from sf_assets.core.manifest import parse_manifest
from sf_assets.engines.engine import EngineSettings, canary_timeout_s, run_sort
from sf_assets.engines.job import CanaryReport, SortJob, SortReport
from sf_assets.engines.supervisor import prepare_work_dir, supervise, worker_command

import sys


def _job(synthetic_studyset, tmp_path: Path, **changes) -> SortJob:
    manifest = parse_manifest(synthetic_studyset.manifest_path.read_bytes(), str(synthetic_studyset.manifest_path))
    rec = manifest.recordings()[0]
    base = dict(
        sorter_name="MountainSort5",
        si_sorter_name="mountainsort5",
        params={},
        recording_uri=rec.recording_uri,
        label=f"MountainSort5/{rec.study_name}/{rec.name}",
        kachery_dir=str(synthetic_studyset.store.root_dir),
        work_dir=str(tmp_path / "work"),
        canary_first_n_s=3.0,
    )
    base.update(changes)
    return SortJob(**base)


def test_canary_then_full_sort_in_one_worker(synthetic_studyset, tmp_path):
    job = _job(synthetic_studyset, tmp_path)
    events = list(run_sort(job, EngineSettings(work_root=str(tmp_path))))
    canary, report = events
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
    # The worker cannot even import the sorter in 0.5 s: the canary is "hung".
    events = list(supervise(job, worker_command(sys.executable, work_dir), canary_timeout_s=0.5))
    canary, report = events
    assert canary.status == "failed" and canary.failure_class == "resource"
    assert "did not finish within 0.5 s" in canary.message
    assert report.errored and report.failure_class == "resource"
    assert not (work_dir / "sorter").exists()
    assert report.exit_code is not None and report.exit_code < 0, "the worker was signalled"


def test_canary_timeout_has_a_floor_and_a_ceiling():
    assert canary_timeout_s(None) is None and canary_timeout_s(0) is None and canary_timeout_s(float("nan")) is None
    assert canary_timeout_s(5) == 120.0
    assert canary_timeout_s(50) == 200.0
    assert canary_timeout_s(600) == 300.0


def test_a_worker_killed_from_outside_is_an_errored_report(synthetic_studyset, tmp_path):
    job = _job(synthetic_studyset, tmp_path, canary_first_n_s=0.0)
    work_dir = prepare_work_dir(job)
    command = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    [report] = list(supervise(job, command))
    assert report.errored and "killed by signal SIGKILL" in report.error_message
    assert os.path.exists(report.console_path)


# ------------------------------------------------------------- warm workers


def _worker_file(job: SortJob) -> dict:
    import json

    from sf_assets.engines.job import WORKER_FILE

    return json.loads((Path(job.work_dir) / WORKER_FILE).read_text())


def test_a_warm_worker_takes_one_sort_after_another(synthetic_studyset, tmp_path):
    from sf_assets.engines.warm_worker import idle_worker_pids

    settings = EngineSettings(work_root=str(tmp_path))
    first = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / "first"), canary_first_n_s=0.0)
    second = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / "second"), canary_first_n_s=0.0)
    [_, first_report] = list(run_sort(first, settings))
    [_, second_report] = list(run_sort(second, settings))
    assert not first_report.errored and not second_report.errored
    taken = _worker_file(first), _worker_file(second)
    assert taken[0]["pid"] == taken[1]["pid"], "the second sort ran in the first sort's worker"
    assert (taken[0]["jobs_done"], taken[1]["jobs_done"]) == (0, 1)
    assert taken[0]["pid"] in idle_worker_pids(), "the worker waits for the next sort"
    # Each job has its own console and its own CPU time, not the worker's running total.
    first_console = Path(first_report.console_path).read_text()
    second_console = Path(second_report.console_path).read_text()
    assert "sorted MountainSort5/" in first_console and "sorted MountainSort5/" in second_console
    line = "[sf-assets worker] sorting "
    assert first_console.count(line) == second_console.count(line) == 1
    assert 0 < second_report.cpu_time_s < second_report.elapsed_s * (os.cpu_count() or 1) + 1
    assert first_report.num_units > 0 and second_report.num_units > 0


def test_a_timed_out_warm_worker_is_discarded(synthetic_studyset, tmp_path):
    from sf_assets.engines.warm_worker import idle_worker_pids

    warm = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / "warm"), canary_first_n_s=0.0)
    list(run_sort(warm, EngineSettings(work_root=str(tmp_path))))
    pid = _worker_file(warm)["pid"]
    assert pid in idle_worker_pids()
    # 0.6 s is too short for even a warm mountainsort5 on 60 s.
    slow = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / "slow"), canary_first_n_s=0.0)
    [_, report] = list(run_sort(slow, EngineSettings(work_root=str(tmp_path), timeout_min=0.01)))
    assert report.errored and report.timed_out
    assert _worker_file(slow)["pid"] == pid, "the timed-out sort ran on the warm worker"
    assert report.cpu_time_s is not None and report.cpu_time_s < report.elapsed_s * (os.cpu_count() or 1) + 1
    assert pid not in idle_worker_pids()
    assert not os.path.exists(f"/proc/{pid}"), "the worker was stopped and reaped"
    again = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / "again"), canary_first_n_s=0.0)
    [_, report] = list(run_sort(again, EngineSettings(work_root=str(tmp_path))))
    assert not report.errored and _worker_file(again)["pid"] != pid


def test_a_warm_worker_killed_mid_sort_fails_only_that_sort(synthetic_studyset, tmp_path):
    import signal
    import time

    job = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / "killed"), canary_first_n_s=0.0)
    events = run_sort(job, EngineSettings(work_root=str(tmp_path)))
    worker_file = Path(job.work_dir) / "worker.json"
    import threading

    def kill_when_taken():
        deadline = time.monotonic() + 60
        while not worker_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(_worker_file(job)["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_when_taken)
    killer.start()
    *_, report = list(events)  # the canary report ("off") may come first
    killer.join()
    assert report.errored and "killed by signal SIGKILL" in report.error_message
    next_job = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / "next"), canary_first_n_s=0.0)
    [_, report] = list(run_sort(next_job, EngineSettings(work_root=str(tmp_path))))
    assert not report.errored


def test_an_interrupted_step_stops_its_warm_worker(synthetic_studyset, tmp_path):
    job = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / "interrupted"))
    events = run_sort(job, EngineSettings(work_root=str(tmp_path)))
    canary = next(events)  # the canary is in; the full sort is running
    assert canary.status == "passed"
    pid = _worker_file(job)["pid"]
    events.close()  # what a cancelled Dagster step does to the generator
    assert not os.path.exists(f"/proc/{pid}"), "the worker was stopped and reaped"


def test_reuse_workers_off_gives_a_process_per_sort(synthetic_studyset, tmp_path):
    job = _job(synthetic_studyset, tmp_path, canary_first_n_s=0.0)
    [_, report] = list(run_sort(job, EngineSettings(work_root=str(tmp_path), reuse_workers=False)))
    assert not report.errored
    assert not (Path(job.work_dir) / "worker.json").exists()


def test_local_workers_get_their_share_of_the_cores(synthetic_studyset, tmp_path, monkeypatch):
    from sf_assets.engines.engine import local_worker_env
    from sf_assets.engines.threads import THREAD_LIMIT_VARS, slurm_step_threads

    cores = os.cpu_count() or 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = local_worker_env(cores, {"PATH": "/bin"})
    assert {var: env[var] for var in THREAD_LIMIT_VARS} == dict.fromkeys(THREAD_LIMIT_VARS, "1")
    assert local_worker_env(1, {})["NUMBA_NUM_THREADS"] == str(cores)
    assert local_worker_env(cores * 4, {})["OMP_NUM_THREADS"] == "1", "never zero threads"
    assert local_worker_env(1, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3", "the user's setting wins"
    # A Slurm step: its --cpus-per-task, else the CPUs it may run on.
    assert slurm_step_threads({"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert slurm_step_threads({}) == slurm_step_threads({"SLURM_CPUS_PER_TASK": ""}) == len(os.sched_getaffinity(0))
    # The worker (warm or fresh) sorts with it.
    for reuse in (True, False):
        job = _job(synthetic_studyset, tmp_path, work_dir=str(tmp_path / f"reuse-{reuse}"), canary_first_n_s=0.0)
        settings = EngineSettings(work_root=str(tmp_path), reuse_workers=reuse, parallel_sorts=cores)
        [_, report] = list(run_sort(job, settings))
        assert ", threads 1 (numba 1)\n" in Path(report.console_path).read_text()
        threads = report.details["provenance"]["threads"]
        assert (threads["applied"], threads["numba"]) == (1, 1)
        assert {pool["num_threads"] for pool in threads["threadpools"]} == {1}


def test_a_prestarted_warm_worker_takes_the_first_sort(synthetic_studyset, tmp_path):
    from sf_assets.engines.engine import local_worker_env
    from sf_assets.engines.warm_worker import _POOL, idle_worker_pids, prestart

    _POOL.close()
    settings = EngineSettings(work_root=str(tmp_path), parallel_sorts=3)
    prestart(local_worker_env(settings.parallel_sorts))
    [pid] = idle_worker_pids()
    job = _job(synthetic_studyset, tmp_path, canary_first_n_s=0.0)
    [_, report] = list(run_sort(job, settings))
    assert not report.errored and _worker_file(job) == {**_worker_file(job), "pid": pid, "jobs_done": 0}


def test_a_warm_worker_dead_before_it_took_the_job_is_an_errored_report(synthetic_studyset, tmp_path):
    import signal

    from sf_assets.engines.engine import local_worker_env
    from sf_assets.engines.supervisor import watch
    from sf_assets.engines.warm_worker import WarmWorker

    job = _job(synthetic_studyset, tmp_path, canary_first_n_s=0.0)
    prepare_work_dir(job)
    worker = WarmWorker(local_worker_env(2))
    os.kill(worker.pid, signal.SIGSTOP)  # it cannot read the job, let alone open its console
    run = worker.submit(Path(job.work_dir))
    os.kill(worker.pid, signal.SIGKILL)
    [report] = list(watch(job, run))
    assert report.errored and "killed by signal SIGKILL" in report.error_message
    assert Path(report.console_path).read_text() == ""
    assert not os.path.exists(f"/proc/{worker.pid}"), "reaped"
