"""A command line that dequeues its own runs (no daemon) also monitors them, as the daemon would.

Without it, a run its launcher left starting (killed between Dagster marking the run starting
and the sort service taking it) stayed STARTING for good, holding its partition's place in the
queue (one run per partition at a time).
"""
from __future__ import annotations

import shutil
import tempfile

import dagster as dg
import pytest
from dagster._core.launcher.base import WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

from harness.instances import project_instance, run_once_it_leaves_starting
from sf_assets.cli.launch import code_location, dequeuing
from sf_assets.engines.engine import EngineSettings

MONITORING = {"run_monitoring": {"enabled": True, "start_timeout_seconds": 2, "poll_interval_seconds": 1}}


@pytest.fixture
def settings(tmp_path):
    service_dir = tempfile.mkdtemp(prefix="sfm-", dir="/tmp")  # where the dequeuing lock is
    yield EngineSettings(work_root=str(tmp_path / "sorts"), service_dir=service_dir)
    shutil.rmtree(service_dir, ignore_errors=True)


def test_a_run_left_starting_is_failed_by_the_command_line_that_dequeues(tmp_path, settings):
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster"), overrides=MONITORING) as instance:
        instance.add_run(DagsterRun(job_name="sorting_job", run_id="left-starting", status=dg.DagsterRunStatus.NOT_STARTED))
        starting = dg.DagsterEvent(dg.DagsterEventType.RUN_STARTING.value, job_name="sorting_job")
        instance.report_dagster_event(starting, run_id="left-starting")  # what Dagster's launch does first
        assert instance.get_run_by_id("left-starting").status == dg.DagsterRunStatus.STARTING
        with code_location(instance) as context, dequeuing(context, instance, settings):
            run = run_once_it_leaves_starting(instance, "left-starting", within_s=30)
        assert run.status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        assert "taking longer than 2 seconds to start" in failure.event_log_entry.dagster_event.message


def test_a_run_another_launcher_has_just_started_is_not_failed_before_it_names_its_process(tmp_path, settings, monkeypatch):
    """Two command lines with their own service folders each monitor every run of the instance. A
    run the other one launched may report its start before its launcher tags the process it was
    handed to; for that moment this launcher's health check must not call it gone."""
    from sf_assets.orchestration import run_launcher
    from sf_assets.orchestration.run_launcher import RUN_WORKER_TAG, SortServiceRunLauncher

    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_run(DagsterRun(job_name="sorting_job", run_id="elsewhere", status=dg.DagsterRunStatus.NOT_STARTED))
        started = dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name="sorting_job")
        instance.report_dagster_event(started, run_id="elsewhere")
        launcher = SortServiceRunLauncher(service_dir=settings.service_dir)  # a service that never saw the run
        launcher.register_instance(instance)
        run = instance.get_run_by_id("elsewhere")
        assert run.status == dg.DagsterRunStatus.STARTED and RUN_WORKER_TAG not in run.tags
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        monkeypatch.setattr(run_launcher, "UNNAMED_GRACE_S", 0.0)  # the moment is long past: nobody took it
        assert launcher.check_run_worker_health(run).status == WorkerStatus.NOT_FOUND
        instance.add_run_tags("elsewhere", {RUN_WORKER_TAG: "another-host:1:1"})
        assert launcher.check_run_worker_health(instance.get_run_by_id("elsewhere")).status == WorkerStatus.RUNNING
