"""Reach this host's sort service, starting it when none is running.

The sorting step is a thin client (:func:`sort_on_service`): it prepares the
job's folder, asks the service to sort it, and relays what comes back.  Its
connection is its lease on the sort: closing it (the step was interrupted,
its run terminated from the UI, its process killed) stops the sort.

Starting is on demand and race-free: a client that finds no service takes
the folder's start lock, looks again, and only then starts one, so two runs
that start at the same moment share one service.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection
from pathlib import Path

from sf_assets.engines.job import CanaryReport, SortReport
from sf_assets.engines.service_address import (
    KEY_NAME,
    LOG_NAME,
    SOCKET_NAME,
    START_LOCK_NAME,
    ServiceSettings,
    service_folder,
)

START_TIMEOUT_S = 60.0
RECEIVE_POLL_S = 0.2


class SortServiceError(RuntimeError):
    """The sort service could not be started or reached, or went away mid-sort."""


class SortRefused(SortServiceError):
    """The sort service answered, but refused the request (an unreadable job, say): it stays up."""


def _connect(folder: Path) -> Connection:
    key = (folder / KEY_NAME).read_bytes()
    return Client(str(folder / SOCKET_NAME), family="AF_UNIX", authkey=key)


_NOT_THERE = (FileNotFoundError, ConnectionRefusedError, AuthenticationError, EOFError)


@contextmanager
def _start_lock(folder: Path):
    fd = os.open(folder / START_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _log_tail(folder: Path, chars: int = 2000) -> str:
    try:
        return (folder / LOG_NAME).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def connect(settings: ServiceSettings, *, start: bool = True) -> Connection:
    """A connection to the service for ``settings``, started first if needed (and ``start``).

    Parameters
    ----------
    settings : ServiceSettings
        Which service.
    start : bool
        Start it when none runs.

    Returns
    -------
    Connection
        An authenticated connection.

    Raises
    ------
    SortServiceError
        If none runs (and ``start`` is False), or it did not start.
    """
    folder = service_folder(settings)
    try:
        return _connect(folder)
    except _NOT_THERE:
        if not start:
            raise SortServiceError(f"no sort service is running in {folder}") from None
    with _start_lock(folder):
        try:
            return _connect(folder)
        except _NOT_THERE:
            pass
        with open(folder / LOG_NAME, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sf_assets.engines.sort_service",
                    "--folder",
                    str(folder),
                    "--slots",
                    str(settings.slots),
                    "--threads-per-sort",
                    str(settings.threads_per_sort),
                    "--idle-exit-s",
                    str(settings.idle_exit_s),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: it outlives this run and is not hit by this terminal's Ctrl-C.
                start_new_session=True,
                close_fds=True,
            )
        # Reap it when it exits (idle), or a long-lived client (the command line) keeps a zombie.
        threading.Thread(target=proc.wait, name="sort-service-reaper", daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                return _connect(folder)
            except _NOT_THERE:
                if proc.poll() is not None:
                    raise SortServiceError(
                        f"the sort service in {folder} exited with code {proc.returncode} at its start:\n"
                        f"{_log_tail(folder)}"
                    ) from None
                if time.monotonic() > deadline:
                    raise SortServiceError(
                        f"the sort service in {folder} did not answer within {START_TIMEOUT_S:g} s:\n{_log_tail(folder)}"
                    ) from None
                time.sleep(0.05)


def service_status(settings: ServiceSettings) -> dict | None:
    """The running service's slots and queue; None when no service runs for ``settings``.

    Parameters
    ----------
    settings : ServiceSettings
        Which service.

    Returns
    -------
    dict or None
        Its status.
    """
    try:
        conn = connect(settings, start=False)
    except (SortServiceError, OSError):
        return None
    with conn:
        conn.send({"op": "status"})
        kind, payload = conn.recv()
    return payload if kind == "status" else None


def call_service(settings: ServiceSettings, op: str, *, start: bool = True, **args) -> dict:
    """One request to the service (``launch_run``, ``terminate_run``, ``run_status``) and its answer.

    Parameters
    ----------
    settings : ServiceSettings
        Which service.
    op : str
        The request.
    start : bool
        Start the service when none runs.
    **args
        The request's arguments.

    Returns
    -------
    dict
        The answer.

    Raises
    ------
    SortServiceError
        If the service refused the request or cannot be reached.
    """
    with connect(settings, start=start) as conn:
        conn.send({"op": op, "args": args})
        kind, payload = conn.recv()
    if kind == "error":
        raise SortServiceError(f"the sort service refused {op}: {payload}")
    return payload


def sort_on_service(
    settings: ServiceSettings,
    work_dir: Path,
    *,
    timeout_s: float | None,
    canary_timeout_s: float | None,
    group: str | None = None,
    group_limit: int = 0,
    submitted_at: float | None = None,
) -> Iterator[dict | CanaryReport | SortReport]:
    """Have the service sort the job prepared in ``work_dir``.

    At most ``group_limit`` sorts of ``group`` (a launch) run at once; the
    others wait in the service's queue (0: only the slots limit them).
    ``submitted_at`` (epoch s, e.g. the run's creation) orders the waiting
    sorts: first submitted, first served.

    Parameters
    ----------
    settings : ServiceSettings
        Which service.
    work_dir : Path
        The prepared job's folder.
    timeout_s : float or None
        The sort's timeout.
    canary_timeout_s : float or None
        When a canary counts as hung.
    group : str or None
        The launch the sort belongs to.
    group_limit : int
        That launch's sorts at once (0: no limit but the slots).
    submitted_at : float or None
        When the sort was submitted (epoch seconds).

    Yields
    ------
    dict or CanaryReport or SortReport
        As :func:`sort_over`: the slot's description, the canary report, the sort report.

    Raises
    ------
    SortServiceError
        The service could not be reached, or went away before reporting
        (:class:`SortRefused` when it refused the request).
    """
    yield from sort_over(
        connect(settings),
        work_dir,
        timeout_s=timeout_s,
        canary_timeout_s=canary_timeout_s,
        group=group,
        group_limit=group_limit,
        submitted_at=submitted_at,
        describe_end=lambda: _log_tail(service_folder(settings)),
    )


def sort_over(
    conn: Connection,
    work_dir: Path,
    *,
    timeout_s: float | None,
    canary_timeout_s: float | None,
    group: str | None = None,
    group_limit: int = 0,
    submitted_at: float | None = None,
    describe_end: Callable[[], str] = str,
    still_there: Callable[[], bool] | None = None,
    check_every_s: float = 2.0,
) -> Iterator[dict | CanaryReport | SortReport]:
    """The sort request on an open connection to a service, and what comes back; closes ``conn``.

    The connection is the lease on the sort: it is closed however this ends
    (the report, an error, the generator closed by an interrupted step), and a
    sort still running then stops.

    Parameters
    ----------
    conn : Connection
        An authenticated connection to a sort service (this host's, or a Slurm allocation's over TCP).
    work_dir : Path
        The prepared job's folder, as the service sees it (a shared filesystem on Slurm).
    timeout_s : float or None
        The sort's timeout in seconds, counted from when a slot takes it.
    canary_timeout_s : float or None
        Seconds after which a canary counts as hung.
    group : str or None
        The launch the sort belongs to (see :func:`sort_on_service`).
    group_limit : int
        That launch's sorts at once (0: no limit but the slots).
    submitted_at : float or None
        When the sort was submitted (epoch seconds), which orders the waiting sorts.
    describe_end : Callable[[], str]
        Says why the service may have ended (its log's tail), for the error.
    still_there : Callable[[], bool] or None
        Asked every ``check_every_s`` while no answer comes: a service on another
        machine (a Slurm allocation) may vanish without closing its connection (a
        node that fails), and False then ends the wait.  None: not asked.
    check_every_s : float
        Seconds between two calls of ``still_there``.

    Yields
    ------
    dict or CanaryReport or SortReport
        A dict when a slot takes the sort (``slot``, ``worker_pid``, ``warm``),
        the canary report as soon as it is decided, and the final sort report.

    Raises
    ------
    SortRefused
        The service answered with an error (it stays up).
    SortServiceError
        The connection ended before the report (``describe_end`` is quoted), or ``still_there`` said False.
    """
    try:
        conn.send(
            {
                "op": "sort",
                "work_dir": str(work_dir),
                "timeout_s": timeout_s,
                "canary_timeout_s": canary_timeout_s,
                "group": group,
                "group_limit": group_limit,
                "submitted_at": submitted_at,
            }
        )
        checked = time.monotonic()
        while True:
            # Polling, not a blocking recv: an interrupt (the run terminated) is handled at once.
            if not conn.poll(RECEIVE_POLL_S):
                if still_there is not None and time.monotonic() - checked >= check_every_s:
                    checked = time.monotonic()
                    if not still_there():
                        raise SortServiceError(f"the sort service went away while sorting {work_dir}")
                continue
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                raise SortServiceError(
                    f"the sort service ended before reporting on {work_dir}:\n{describe_end()}"
                ) from None
            if kind == "error":
                raise SortRefused(f"the sort service refused {work_dir}: {payload}")
            yield payload
            if isinstance(payload, SortReport):
                return
    finally:
        conn.close()  # the lease: a sort still running stops now
