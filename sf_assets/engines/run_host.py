"""Dagster runs executed as threads of a few run processes forked from a preloaded zygote.

Dagster's default launcher starts each run in a fresh interpreter (the code
server spawns ``dagster api execute_run``), which imports Dagster, the code
location and spikeinterface again for every run: about 2 s of CPU, as much
as a small sort.  The project's run launcher
(:class:`sf_assets.orchestration.run_launcher.SortServiceRunLauncher`) instead
hands each run to the sort service, which executes it in a *run process*
forked from a multiprocessing fork server that imported all of that once
(:data:`PRELOAD`).  Forking the single-threaded fork server is safe where
forking the threaded service would not be.

A run process executes up to :data:`RUNS_PER_PROCESS` runs at once, one
thread each.  A sorting run spends its life waiting for its sort on a sort
service (this host's or a Slurm allocation's), so a process per run would
hold a full Python interpreter with Dagster loaded (about 280 MB resident)
per sort in flight: 32 sorts in flight on Slurm cost 9 GB of the submit
host's memory that way, and SpikeForest keeps hundreds in flight.  The
runs' own work (Dagster's events, storing a result, the comparison) is
short, and the sorts themselves run in the services' workers, so sharing a
process costs little concurrency and keeps each sorter's crash out of it.

Runs share a process only when they were launched with the same environment
and working folder (the daemon's, the webserver's, one command line's): the
process takes them, as a spawned run process would inherit them, and
reloads the code location's definitions module once so that its resources
read that environment.  Each run executes exactly as ``dagster api
execute_run`` does, with one difference: Dagster's capture of a run's
standard output and error swaps the process's file descriptors, which
threads cannot share, so the runs' instance captures none
(``NoOpComputeLogManager``); what sorters print is captured per sort by the
sort service, and the runs' own messages go to Dagster's event log.

Terminating a run raises Dagster's interrupt in its thread (as Ctrl-C does
in a run process of its own): the step's sort connection closes, which
stops its sort, and Dagster marks the run canceled.  A process whose runs
have all ended exits after :data:`RETIRE_IDLE_S` (:meth:`RunHost.stop_processes`).

A run may carry a lease (``sf-assets/lease``, the identity of a command-line
process that launched it): when that process is gone, its runs are
terminated, so a killed command line leaves nothing sorting behind it.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

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
# Runs one process executes at once.  Past it a second process is forked: the runs' Python
# work (events, results, comparisons) shares one interpreter lock per process.
RUNS_PER_PROCESS = 16
# A run process with no run left exits after this long (the next launch may reuse it before).
RETIRE_IDLE_S = 60.0
TERMINATE_GRACE_S = 20.0
# The same for a run whose launching command line is gone: nobody waits for its clean end.
LEASE_ENDED_GRACE_S = 5.0
# How long a terminated run's thread may take to report the run's end before its process is killed.
REPORT_GRACE_S = 60.0
# A terminated run's interrupt is raised again this often until its thread ends (it may land
# where it is caught, or while the thread waits in C).
INTERRUPT_AGAIN_S = 2.0
NO_COMPUTE_LOGS = ("dagster._core.storage.noop_compute_log_manager", "NoOpComputeLogManager")


def _nothing() -> None:
    """The warm-up process's whole work: being forked is the point."""


_LOGGING_SETUP = threading.Lock()
_yaml_handlers: dict[str, list] = {}  # by instance reference: the handlers its dagster.yaml defines


def _instance_for_threads(instance_ref_json: str):
    """The launching instance, as concurrent runs in one process can share it.

    Two of its per-run habits are process-wide: the compute-log capture (see
    the module), and the Python logging handlers that ``dagster.yaml``'s
    ``python_logs`` section defines, which Dagster makes for every run with
    ``logging.config.dictConfig``: that resets the process's logging while
    other runs log, and deadlocks against them.  Here the handlers are made
    once per process and every run gets the same ones.  The run's dynamic
    partition keys are looked up once each (:func:`_remembering_found_partitions`).
    """
    from dagster import DagsterInstance, deserialize_value
    # No public API: the instance's serialized reference, and the class data naming its compute log manager.
    from dagster._core.instance.ref import InstanceRef
    from dagster._serdes import ConfigurableClassData

    ref = deserialize_value(instance_ref_json, InstanceRef)
    instance = DagsterInstance.from_ref(ref._replace(compute_logs_data=ConfigurableClassData(*NO_COMPUTE_LOGS, "{}")))
    make_handlers = instance.get_yaml_python_handlers

    def shared_yaml_handlers() -> list:
        with _LOGGING_SETUP:
            if instance_ref_json not in _yaml_handlers:
                _yaml_handlers[instance_ref_json] = list(make_handlers())
            return _yaml_handlers[instance_ref_json]

    # No public API: the instance method Dagster's log manager calls per run.
    instance.get_yaml_python_handlers = shared_yaml_handlers
    instance.has_dynamic_partition = _remembering_found_partitions(instance.has_dynamic_partition)
    return instance


def _remembering_found_partitions(has_dynamic_partition):
    """``has_dynamic_partition`` that asks storage once per key found, for one run's instance.

    Dagster checks the run's (sorter, recording) keys against their dynamic
    partitions whenever it resolves the run's partition range: 20 queries
    per sorting run for two keys, 0.09 s of its CPU on SQLite.  A key found
    stays found for the run (a partition deleted meanwhile is the next
    launch's concern); one not found is asked again.
    """
    found: set[tuple[str, str]] = set()

    def has_partition(partitions_def_name: str, partition_key: str) -> bool:
        key = (partitions_def_name, partition_key)
        if key in found:
            return True
        if has_dynamic_partition(partitions_def_name, partition_key):
            found.add(key)
            return True
        return False

    return has_partition


def _execute_one(run_id: str, instance_ref_json: str) -> int:
    """Execute one launched run in this thread, as ``dagster api execute_run`` does; its exit code."""
    # No public API executes a launched run in-process.
    from dagster._cli.api import _execute_run_command_body

    with _instance_for_threads(instance_ref_json) as instance:
        return _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=True)


def end_unfinished_run(run_id: str, instance_ref_json: str, interrupted: bool, cause: str) -> str | None:
    """Mark canceled (or failed) a run whose execution ended without Dagster saying so.

    Dagster reports a run's end from inside its execution.  An interrupt (the
    lease of a killed command line ending, the UI's Terminate) that lands
    while the run thread opens the instance escapes before that; one that
    lands while Dagster loads the run's code is swallowed by Dagster's own
    catch-all around the execution, which relies on the execution having
    reported the run's end first.  Either way the run would stay STARTING in
    the UI for good: only a daemon's run monitoring, after its start timeout,
    would end it.  Called for every run once its thread has left Dagster's
    execution; a run that ended is left alone.

    Parameters
    ----------
    run_id : str
        The run.
    instance_ref_json : str
        Its instance's serialized reference.
    interrupted : bool
        Whether the host interrupted it (it is then canceled, else failed).
    cause : str
        Why it stopped, for a failed run's message.

    Returns
    -------
    str or None
        The status reported; None when the run had ended already, or the report could not be made.
    """
    try:
        with _instance_for_threads(instance_ref_json) as instance:
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                return None
            if interrupted:
                instance.report_run_canceled(run, message="Run terminated before its execution could report its end.")
                return "CANCELED"
            instance.report_run_failed(run, f"Run stopped before its execution could report its end: {cause}")
            return "FAILURE"
    except Exception:  # noqa: BLE001 - no instance to report to: its run monitor decides
        traceback.print_exc()
        return None


def _interrupt(thread: threading.Thread) -> None:
    """Raise Dagster's interrupt in ``thread`` at its next Python instruction (a run's Ctrl-C)."""
    # No public API: the error Dagster's run worker turns a Ctrl-C into, and cancels a run on.
    from dagster._core.errors import DagsterExecutionInterruptedError

    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread.ident), ctypes.py_object(DagsterExecutionInterruptedError)
        )


def serve_runs(conn, environ: dict[str, str], cwd: str) -> None:
    """A run process's life (in the child only): execute the runs the host sends, one thread each.

    Messages from the host: ``("run", run_id, instance_ref_json, canceled)``
    (``canceled``: its launcher is already gone, so the run is to be reported
    canceled without executing), ``("interrupt", run_id)`` and ``("stop",)``;
    to the host: ``("reporting", run_id)`` (the run's thread has left
    Dagster's execution and takes no more interrupts) and ``("ended", run_id,
    exit_code)``.  At ``stop``, or when the host is gone, the process takes no
    more runs, lets those it has finish, and exits.

    Parameters
    ----------
    conn : multiprocessing.connection.Connection
        Its end of the pipe to the host.
    environ : dict[str, str]
        The runs' environment (their launcher's), set before the code location is imported again.
    cwd : str
        The runs' working folder.
    """
    os.environ.clear()
    os.environ.update(environ)
    os.chdir(cwd)
    # Preloaded under the fork server's environment: load it again under the runs'.
    sys.modules.pop(DEFINITIONS_MODULE, None)
    # No public API: the error Dagster's run worker turns a Ctrl-C into.
    from dagster._core.errors import DagsterExecutionInterruptedError

    send_lock = threading.Lock()
    threads: dict[str, threading.Thread] = {}
    # Guards the sets below and every interrupt raised.  A run's thread is interrupted only
    # between entering its ``try`` and leaving Dagster's execution: before, the interrupt would
    # escape the thread unreported (the thread then sees it asked for and stops itself); after,
    # it would land in the report of the run's end.
    interrupts = threading.Lock()
    interrupted: set[str] = set()  # runs the host asked to stop
    executing: set[str] = set()  # runs whose thread can take an interrupt
    leaving: set[str] = set()  # runs whose thread has left Dagster's execution

    def tell_host(message: tuple) -> None:
        with send_lock:
            try:
                conn.send(message)
            except (OSError, EOFError):
                pass  # the host is gone; the run's end is in Dagster's event log

    def execute(run_id: str, instance_ref_json: str) -> None:
        code, error = 1, None
        try:
            with interrupts:
                executing.add(run_id)
                asked_to_stop = run_id in interrupted
            if asked_to_stop:
                raise DagsterExecutionInterruptedError("terminated before its thread started")
            code = _execute_one(run_id, instance_ref_json)
        except BaseException as caught:  # noqa: BLE001 - an interrupt that landed outside Dagster's handling, say
            error = caught
        # No instruction between the handler above and the add below lets an interrupt raised
        # earlier be delivered (CPython delivers them at calls and backward jumps), and none is
        # raised once the run is in ``leaving``: at most one lands in this ``try``.  No loop, no
        # call to a function of ours: either would be a place where one could escape.
        try:
            with interrupts:
                leaving.add(run_id)
            # A NULL exception clears one raised before the add and not yet delivered.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), None)
        except DagsterExecutionInterruptedError:
            pass
        tell_host(("reporting", run_id))  # the host stops insisting: no kill in the middle of the report
        try:
            if error is not None:
                traceback.print_exception(error)
            if error is not None or code != 0:  # 0: Dagster's execution ran to its end, which it reported
                cause = repr(error) if error is not None else f"its execution returned {code} without ending it"
                end_unfinished_run(run_id, instance_ref_json, run_id in interrupted, cause)
        finally:
            sys.stdout.flush()
            tell_host(("ended", run_id, code))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message[0] == "run":
            _, run_id, instance_ref_json, canceled = message
            threads = {rid: t for rid, t in threads.items() if t.is_alive()}  # a process may live for days
            with interrupts:
                for ids in (interrupted, executing, leaving):
                    ids.intersection_update(threads)
                if canceled:
                    interrupted.add(run_id)
            thread = threading.Thread(
                target=execute, args=(run_id, instance_ref_json), name=f"dagster-run-{run_id[:8]}", daemon=True
            )
            threads[run_id] = thread
            thread.start()
        elif message[0] == "interrupt":
            thread = threads.get(message[1])
            with interrupts:
                if thread is not None and message[1] not in leaving:
                    interrupted.add(message[1])
                    if message[1] in executing:
                        _interrupt(thread)
        elif message[0] == "stop":
            break
    for thread in threads.values():
        thread.join()
    # Exit now: an interrupted step's generators may only be closed at garbage collection,
    # and the kernel closes every socket of an exited process at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class RunProcess:
    """One run process, seen from the host: its pipe, and a thread that hears its runs end."""

    def __init__(self, context, key: tuple, environ: dict[str, str], cwd: str, on_ended, on_reporting):
        self.key = key
        self.live: set[str] = set()
        self.idle_since = time.monotonic()
        self._on_ended = on_ended
        self._on_reporting = on_reporting
        self._send_lock = threading.Lock()
        self._conn, child = context.Pipe()
        self.process = context.Process(target=serve_runs, args=(child, environ, cwd), name="sf-assets-run-process")
        self.process.start()
        child.close()
        threading.Thread(target=self._hear, daemon=True, name=f"run-process-{self.process.pid}").start()

    def send(self, message: tuple) -> bool:
        """Send ``message`` to the process.

        Parameters
        ----------
        message : tuple
            ``("run", ...)``, ``("interrupt", run_id)`` or ``("stop",)`` (see :func:`serve_runs`).

        Returns
        -------
        bool
            False when the process is gone.
        """
        with self._send_lock:
            try:
                self._conn.send(message)
                return True
            except (OSError, EOFError):
                return False

    def _hear(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "reporting":
                self._on_reporting(message[1])
            else:
                _, run_id, code = message
                self._on_ended(self, run_id, code)
        # The process ended with runs still in it: killed, or a crash that took every thread.
        self.process.join(5.0)
        for run_id in list(self.live):
            self._on_ended(self, run_id, self.process.exitcode or -9)


@dataclass
class HostedRun:
    """A run executing in a thread of a run process, with the lease that ends it when its launcher dies."""

    process: RunProcess
    lease: LauncherIdentity | None
    terminating: bool = False
    reporting: bool = False  # its thread has left Dagster's execution and reports the run's end
    report_waited: bool = False  # the host's insisting has given that report its own time
    exitcode: int | None = None
    ended: threading.Event = field(default_factory=threading.Event)


class RunHost:
    """The runs this service executes, keyed by run id, and the run processes executing them."""

    OPS = ("launch_run", "terminate_run", "run_status")

    def __init__(self):
        self._lock = threading.Lock()
        self._context = None
        self._runs: dict[str, HostedRun] = {}
        self._processes: list[RunProcess] = []

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

    def _ended(self, process: RunProcess, run_id: str, code: int) -> None:
        with self._lock:
            hosted = self._runs.get(run_id)
            process.live.discard(run_id)
            if not process.live:
                process.idle_since = time.monotonic()
        if hosted is not None and hosted.exitcode is None:
            hosted.exitcode = code
            hosted.ended.set()

    def _reporting(self, run_id: str) -> None:
        with self._lock:
            hosted = self._runs.get(run_id)
        if hosted is not None:
            hosted.reporting = True

    def _process_for(self, environ: dict[str, str], cwd: str) -> RunProcess:
        """A run process for this environment with room for one more run (called with the lock held)."""
        key = (tuple(sorted(environ.items())), cwd)
        for process in self._processes:
            if process.key == key and len(process.live) < RUNS_PER_PROCESS and process.process.is_alive():
                return process
        process = RunProcess(self._context, key, environ, cwd, self._ended, self._reporting)
        self._processes.append(process)
        return process

    def launch_run(self, run_id: str, instance_ref: str, environ: dict[str, str], cwd: str, lease: str = "") -> dict:
        """Start ``run_id`` in a thread of a run process; terminated at once when its lease has already ended.

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
            ``launched``, and the ``pid`` and ``start_ticks`` of its run process or the ``reason`` it could
            not take the run.
        """
        identity = LauncherIdentity.parse(lease) if lease else None
        # Taken and canceled rather than refused: its launcher may be the one gone, and nobody would
        # then report a refusal.  Its thread reports it canceled without executing it.
        canceled = identity is not None and identity.is_gone()
        self._fork_context()
        with self._lock:
            process = self._process_for(environ, cwd)
            process.live.add(run_id)
            self._runs[run_id] = HostedRun(process, identity, terminating=canceled)
            sent = process.send(("run", run_id, instance_ref, canceled))
        if not sent:
            self._ended(process, run_id, -9)
            return {"launched": False, "reason": "its run process ended before it could take the run"}
        pid = process.process.pid
        return {"launched": True, "pid": pid, "start_ticks": process_start_ticks(pid) or 0}

    def terminate_run(self, run_id: str, grace_s: float = TERMINATE_GRACE_S) -> dict:
        """Interrupt the run as Ctrl-C would (Dagster cancels it cleanly), again until it ends.

        Past ``grace_s``, a run process executing nothing else is killed; one
        that executes other runs is not (its other runs are not the user's
        to lose), and the interrupt keeps being raised until the run ends.

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
        if hosted is None or hosted.ended.is_set():
            return {"terminated": False, "known": hosted is not None}
        hosted.terminating = True
        hosted.process.send(("interrupt", run_id))
        threading.Thread(target=self._insist, args=(run_id, hosted, grace_s), daemon=True).start()
        return {"terminated": True, "known": True}

    def _insist(self, run_id: str, hosted: HostedRun, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        while not hosted.ended.wait(INTERRUPT_AGAIN_S):
            if hosted.reporting:
                # It stopped: what is left is its report of the run's end, given time of its own;
                # one that hangs (storage unreachable) is killed, and run monitoring ends the run.
                if not hosted.report_waited:
                    hosted.report_waited = True
                    deadline = max(deadline, time.monotonic() + REPORT_GRACE_S)
                if time.monotonic() < deadline:
                    continue
            with self._lock:
                alone = hosted.process.live == {run_id}
            if time.monotonic() >= deadline and alone:
                hosted.process.process.kill()
                return  # its pipe closes: the host hears the run end
            if not hosted.reporting:
                hosted.process.send(("interrupt", run_id))

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
        return {"known": True, "alive": not hosted.ended.is_set(), "exitcode": hosted.exitcode}

    def active(self) -> bool:
        """Is any run still executing here?

        Ended runs are kept: run monitoring asks about them.

        Returns
        -------
        bool
            True while a run has not ended.
        """
        with self._lock:
            runs = list(self._runs.values())
        return any(not hosted.ended.is_set() for hosted in runs)

    def stop_processes(self, idle_s: float | None = None) -> int:
        """Tell run processes to exit once their runs end; no run goes to them any more.

        Parameters
        ----------
        idle_s : float or None
            Only those that have had no run for this many seconds (the service's
            idle checks, with :data:`RETIRE_IDLE_S`); None: every one (the service is exiting).

        Returns
        -------
        int
            How many were told to exit.
        """
        now = time.monotonic()
        with self._lock:
            stopped = [
                p for p in self._processes if idle_s is None or (not p.live and now - p.idle_since >= idle_s)
            ]
            self._processes = [p for p in self._processes if p not in stopped]
        for process in stopped:
            process.send(("stop",))
        return len(stopped)

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
            if not hosted.ended.is_set() and hosted.lease.is_gone():
                self.terminate_run(run_id, grace_s=LEASE_ENDED_GRACE_S)
                ended.append(run_id)
        return ended
