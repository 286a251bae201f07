"""Dagster run processes forked from a preloaded zygote inside the sort service.

Dagster's default launcher starts each run in a fresh interpreter (the code
server spawns ``dagster api execute_run``), which imports Dagster, the code
location and spikeinterface again for every run: about 2 s of CPU, as much
as a small sort.  The project's run launcher
(:class:`sf_assets.orchestration.run_launcher.SortServiceRunLauncher`) instead hands each run
to the sort service, which forks it from a multiprocessing fork server that
imported all of that once (:data:`PRELOAD`).  Forking the single-threaded fork
server is safe where forking the threaded service would not be.

The forked process takes the environment and folder of the process that
launched the run (the daemon, the webserver or the command line), as a
spawned run process would inherit them, then reloads the code location's
definitions module so that its resources read that environment, and executes
the run exactly as ``dagster api execute_run`` does.

A run may carry a lease (``sf-assets/lease``, the identity of a command-line
process that launched it): when that process is gone, its runs are
terminated, so a killed command line leaves nothing sorting behind it.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass

from sf_assets.core.launcher_identity import LauncherIdentity, process_start_ticks

PRELOAD = (
    "dagster",
    "sf_assets.orchestration.run_preload",
    "dagster_postgres",  # only where installed (a fork server skips what it cannot import)
    "sf_assets.definitions",
    "sf_assets.stores.data",
    "sf_assets.core.comparison",
    "spikeinterface.preprocessing",
    "spikeinterface.comparison",
    # Imported on first use, not by the modules above: the sorter catalog's spikeinterface
    # sorters (every run validates the spec's parameters against them) and the filters'
    # scipy.signal (a recording run's ground-truth SNRs), about 1 s and 2 s of CPU per run.
    "spikeinterface.sorters",
    "scipy.signal",
)
DEFINITIONS_MODULE = "sf_assets.definitions"
TERMINATE_GRACE_S = 20.0


def _nothing() -> None:
    """The warm-up process's whole work: being forked is the point."""


def execute_run(run_id: str, instance_ref_json: str, environ: dict[str, str], cwd: str) -> None:
    """Execute one launched run in this (forked) process; runs in the child only.

    Parameters
    ----------
    run_id : str
        The run.
    instance_ref_json : str
        The instance's serialized reference.
    environ : dict[str, str]
        The run's environment (the launcher's), set before the code location is imported again.
    cwd : str
        The run's working folder.
    """
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    # Preloaded under the fork server's environment: load it again under the run's.
    sys.modules.pop(DEFINITIONS_MODULE, None)

    from dagster import DagsterInstance, deserialize_value

    # No public API executes a launched run in-process, names an instance's serialized
    # reference, or turns SIGINT into Dagster's interrupt as its run worker does.
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance.ref import InstanceRef
    from dagster._utils.interrupts import capture_interrupts

    with capture_interrupts():
        with DagsterInstance.from_ref(deserialize_value(instance_ref_json, InstanceRef)) as instance:
            code = _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=True)
    # Exit now: an interrupted step's generators (and so its sort's connection, its lease)
    # may only be closed at garbage collection, and a thread left behind would hold up a
    # normal exit; the kernel closes every socket of an exited process at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass
class HostedRun:
    """A run executing in a forked process, with the lease that ends it when its launcher dies."""

    process: multiprocessing.process.BaseProcess
    lease: LauncherIdentity | None
    terminating: bool = False


class RunHost:
    """The runs this service executes, keyed by run id."""

    OPS = ("launch_run", "terminate_run", "run_status")

    def __init__(self):
        self._lock = threading.Lock()
        self._context = None
        self._runs: dict[str, HostedRun] = {}

    def _fork_context(self):
        with self._lock:
            if self._context is None:
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(list(PRELOAD))
                self._context = context
            return self._context

    def start_fork_server(self) -> None:
        """Start the fork server (its preload takes seconds) now, not at the first run.

        The service calls it in the background as it starts: the first run of
        a launch then forks at once instead of waiting for Dagster, the code
        location and spikeinterface to import.
        """
        process = self._fork_context().Process(target=_nothing, name="sf-assets-fork-server-warm-up")
        process.start()
        process.join()

    def launch_run(self, run_id: str, instance_ref: str, environ: dict[str, str], cwd: str, lease: str = "") -> dict:
        """Start ``run_id`` in a process of its own; refused when its lease has already ended.

        Parameters
        ----------
        run_id : str
            The run.
        instance_ref : str
            The instance's serialized reference.
        environ : dict[str, str]
            The run's environment.
        cwd : str
            Its working folder.
        lease : str
            The launching command line's identity (empty: no lease).

        Returns
        -------
        dict
            ``launched``, and the ``pid`` and ``start_ticks`` of its process or the ``reason`` it was refused.
        """
        identity = LauncherIdentity.parse(lease) if lease else None
        if identity is not None and identity.is_gone():
            return {"launched": False, "reason": f"the process that launched it ({lease}) is gone"}
        process = self._fork_context().Process(
            target=execute_run, args=(run_id, instance_ref, environ, cwd), name=f"dagster-run-{run_id[:8]}"
        )
        process.start()
        with self._lock:
            self._runs[run_id] = HostedRun(process, identity)
        return {"launched": True, "pid": process.pid, "start_ticks": process_start_ticks(process.pid) or 0}

    def terminate_run(self, run_id: str, grace_s: float = TERMINATE_GRACE_S) -> dict:
        """Interrupt the run as Ctrl-C would (Dagster cancels it cleanly); kill it after ``grace_s``.

        Parameters
        ----------
        run_id : str
            The run.
        grace_s : float
            Seconds between the interrupt and the kill.

        Returns
        -------
        dict
            ``terminated`` and ``known``.
        """
        with self._lock:
            hosted = self._runs.get(run_id)
        if hosted is None or not hosted.process.is_alive():
            return {"terminated": False, "known": hosted is not None}
        hosted.terminating = True
        os.kill(hosted.process.pid, signal.SIGINT)
        threading.Thread(target=self._kill_after, args=(hosted, grace_s), daemon=True).start()
        return {"terminated": True, "known": True}

    @staticmethod
    def _kill_after(hosted: HostedRun, grace_s: float) -> None:
        hosted.process.join(grace_s)
        if hosted.process.is_alive():
            hosted.process.kill()
            hosted.process.join(5.0)

    def run_status(self, run_id: str) -> dict:
        """What the run monitor needs to know about a run.

        Parameters
        ----------
        run_id : str
            The run.

        Returns
        -------
        dict
            ``known`` (this host started it), ``alive``, and the ``exitcode`` once ended.
        """
        with self._lock:
            hosted = self._runs.get(run_id)
        if hosted is None:
            return {"known": False, "alive": False, "exitcode": None}
        alive = hosted.process.is_alive()
        return {"known": True, "alive": alive, "exitcode": None if alive else hosted.process.exitcode}

    def active(self) -> bool:
        """Is any run still executing here?

        Ended runs are kept: run monitoring asks about them.

        Returns
        -------
        bool
            True while a run's process is alive.
        """
        with self._lock:
            runs = list(self._runs.values())
        return any(hosted.process.is_alive() for hosted in runs)

    def end_runs_whose_lease_ended(self) -> list[str]:
        """Terminate the runs whose launching command line is gone.

        Returns
        -------
        list[str]
            The runs terminated.
        """
        with self._lock:
            leased = [(rid, h) for rid, h in self._runs.items() if h.lease is not None and not h.terminating]
        ended = []
        for run_id, hosted in leased:
            if hosted.process.is_alive() and hosted.lease.is_gone():
                self.terminate_run(run_id, grace_s=5.0)
                ended.append(run_id)
        return ended

