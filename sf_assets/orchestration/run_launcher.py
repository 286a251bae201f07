"""The run launcher every launch path shares: runs execute in the host's sort service.

``dagster.yaml`` names this class as the instance's run launcher, so the runs
of a UI backfill, of the studyset sensor, of the schedule and of the command
line all leave Dagster's run queue the same way: the queue's daemon calls
:meth:`SortServiceRunLauncher.launch_run`, and the sort service executes the
run in a thread of a run process forked from one that has Dagster, the code
location and spikeinterface loaded (:mod:`sf_assets.engines.run_host`).  The
run's sorting step then hands its sort to the same service's warm workers.
Terminating a run in the UI interrupts its thread, which closes its lease on
the sort, which stops the sort.

Dagster's run monitoring asks :meth:`check_run_worker_health` about started
runs: a run whose process is gone without finishing (killed, the service gone
with it) is marked failed, so no partition shows in progress forever.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dagster import Field, Float, Int, String, serialize_value
# No public API: the error Dagster raises for a key that is not a (recording, sorter) key.
from dagster._check import CheckError

# No public API: a run launcher's base class, its health-check types and the
# ConfigurableClass protocol that dagster.yaml's module/class loading expects
# exist only under dagster._core and dagster._serdes in Dagster 1.13.
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from sf_assets.core.errors import SfAssetsError
from sf_assets.core.launcher_identity import LauncherIdentity
from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.engines.engine import launcher_service
from sf_assets.engines.service_client import SortServiceError, call_service, connect
from sf_assets.orchestration.assets.keys import SORTING_KEY
from sf_assets.orchestration.launches import LEASE_TAG
from sf_assets.orchestration.partitions import single_partition_of, split_pair_key
from sf_assets.orchestration.storage_reuse import read_migration_scripts_once

RUN_WORKER_TAG = "sf-assets/run-worker"
"""Identity of the process executing the run, for health checks when the service is gone."""
UNNAMED_GRACE_S = 30.0
"""How long a started run without :data:`RUN_WORKER_TAG` counts as running: its launcher writes the
tag once the service that took it answers, and the run may report its start first."""


class SortServiceRunLauncher(RunLauncher, ConfigurableClass):
    """Launches runs as processes forked inside the host's sort service.

    Config (all optional; the defaults are the ``sorting_engine`` resource's,
    and both must agree for runs and sorts to share one service):
    ``threads_per_sort``, ``service_slots``, ``service_idle_exit_s``, ``service_dir``.
    """

    def __init__(self, inst_data: ConfigurableClassData | None = None, **service_config: Any):
        self._inst_data = inst_data
        self._service = launcher_service(service_config)
        # The launcher's process (the daemon, the webserver, a command line) creates every run it
        # submits, and on SQLite each run's new event-log shard has its schema revision checked and
        # stamped: two readings of Dagster's migration scripts per run, unless they are kept.
        read_migration_scripts_once()
        super().__init__()

    def start_service(self) -> None:
        """Start the host's sort service now if none runs (its fork server and workers warm up at once).

        A command-line launch calls it first, in the background, so that the
        service's start overlaps the launch's own planning instead of delaying
        its first run.

        Raises
        ------
        SortServiceError
            If the service did not start.
        """
        connect(self._service).close()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        """How the instance built this launcher from ``dagster.yaml`` (Dagster's ConfigurableClass protocol)."""
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        """The launcher's fields in ``dagster.yaml``: the sort service's settings.

        Returns
        -------
        dict
            Field name -> Dagster config field (all optional).
        """
        return {
            "threads_per_sort": Field(Int, is_required=False),
            "service_slots": Field(Int, is_required=False),
            "service_idle_exit_s": Field(Float, is_required=False),
            "service_dir": Field(String, is_required=False),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: dict) -> "SortServiceRunLauncher":
        """The launcher ``dagster.yaml`` describes.

        Parameters
        ----------
        inst_data : ConfigurableClassData
            Where it was configured.
        config_value : dict
            Its fields.

        Returns
        -------
        SortServiceRunLauncher
            The launcher.
        """
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        """Hand the run to the host's sort service, which forks it from a process with everything loaded.

        Parameters
        ----------
        context : LaunchRunContext
            The run to launch.
        """
        import os

        run = context.dagster_run
        answer = call_service(
            self._service,
            "launch_run",
            run_id=run.run_id,
            instance_ref=serialize_value(self._instance.get_ref()),
            environ=dict(os.environ),
            cwd=os.getcwd(),
            lease=run.tags.get(LEASE_TAG, ""),
            sorter=sorter_it_sorts(run.asset_selection, run.tags) or "",
        )
        if not answer["launched"]:
            self._instance.report_run_failed(run, f"not started: {answer['reason']}")
            return
        identity = LauncherIdentity(_hostname(), answer["pid"], answer["start_ticks"])
        self._instance.add_run_tags(run.run_id, {RUN_WORKER_TAG: str(identity)})
        self._instance.report_engine_event(
            f"Run handed to the sort service: a thread of run process {answer['pid']}, forked from its "
            "preloaded run host (runs launched with the same environment share it).",
            run,
            cls=self.__class__,
        )

    def terminate(self, run_id: str) -> bool:
        """Stop a run (the UI's Terminate button): the sort service interrupts its process, which stops its sort.

        Parameters
        ----------
        run_id : str
            The run.

        Returns
        -------
        bool
            True when the service knew the run and stopped it.
        """
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        try:
            answer = call_service(self._service, "terminate_run", start=False, run_id=run_id)
        except (SortServiceError, OSError):
            answer = {"terminated": False, "known": False}
        if not answer["terminated"]:
            # Nothing executes it any more (the service ended, or the run never started there).
            self._instance.report_run_canceled(run, message="Run canceled: no process was executing it.")
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        """Yes: run monitoring may ask :meth:`check_run_worker_health` about started runs."""
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        """Is the run's process still alive? A run whose process is gone unfinished is marked failed.

        Parameters
        ----------
        run : DagsterRun
            A started run.

        Returns
        -------
        CheckRunHealthResult
            Running, succeeded, failed or unknown.
        """
        try:
            status = call_service(self._service, "run_status", start=False, run_id=run.run_id)
        except (SortServiceError, OSError):
            status = {"known": False}
        if status.get("known"):
            if status["alive"]:
                return CheckRunHealthResult(WorkerStatus.RUNNING)
            ok = status["exitcode"] == 0
            return CheckRunHealthResult(
                WorkerStatus.SUCCESS if ok else WorkerStatus.FAILED,
                msg=None if ok else f"the run's process exited with code {status['exitcode']}",
            )
        identity = LauncherIdentity.parse(run.tags.get(RUN_WORKER_TAG, ""))
        if identity is not None and not identity.is_gone():
            return CheckRunHealthResult(WorkerStatus.RUNNING, msg="the sort service is gone; its run process is not")
        if identity is None and self._started_within(run.run_id, UNNAMED_GRACE_S):
            # Another launcher's run (another service folder: a second command line), whose launcher
            # has not yet named the process it handed the run to.
            return CheckRunHealthResult(WorkerStatus.RUNNING, msg="started moments ago; its process is not named yet")
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, msg="no process is executing this run")

    def _started_within(self, run_id: str, seconds: float) -> bool:
        record = self._instance.get_run_record_by_id(run_id)
        started = record.start_time if record is not None else None
        return started is not None and time.time() - started < seconds


def sorter_it_sorts(asset_selection, tags: Mapping[str, str]) -> str | None:
    """The spikeinterface sorter whose sort a run will send to the service, if it sorts one.

    The service's slots wait for it (:meth:`sf_assets.core.dispatch.AffinityQueue.expect`)
    rather than compile a sorter a second time.

    Parameters
    ----------
    asset_selection : AbstractSet[AssetKey] or None
        The run's assets.
    tags : Mapping[str, str]
        The run's tags.

    Returns
    -------
    str or None
        The sorter's spikeinterface name; None for a run that sorts nothing or more than one pair.
    """
    partition = single_partition_of(tags)
    if not asset_selection or SORTING_KEY not in asset_selection or partition is None:
        return None
    try:
        return resolve_sorter(split_pair_key(partition)[0]).si_name
    except (SfAssetsError, CheckError):
        return None  # not a pair key, or a sorter the catalog does not know: its run fails on its own


def _hostname() -> str:
    import socket

    return socket.gethostname()
