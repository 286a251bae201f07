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
