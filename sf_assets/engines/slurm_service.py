"""The host's sort service, run inside each Slurm allocation: warm slots on the cluster.

Each pool allocation's holder (:mod:`sf_assets.engines.slurm_holder`) starts
the same sort service that serves local sorts
(:mod:`sf_assets.engines.sort_service`), with one slot per sort the
allocation runs at once (``--slurm-jobs-per-allocation``) and the
allocation's CPUs shared out between them as threads per sort.  A sort placed
in the allocation (its claim, :mod:`sf_assets.engines.slurm_pool`) is sent
to that service by the run process on the submit host, exactly as a local
sort is sent to the host's service: the slot's warm worker keeps a sorter
compiled from one sort to the next, and the per-sort timeout, console, CPU
time, crash isolation, canary and the connection-as-lease are the service's
own code.

Transport: TCP.  The run processes are on the submit host and the service is
on the allocation's node, so a Unix socket would not reach it on a real
cluster.  The service listens on a port of every interface of its node and
publishes ``[node name, port]`` in ``POOL/services/JOB_ID/service.json``; the
key clients authenticate with (``multiprocessing.connection``'s HMAC
challenge, before anything is unpickled) is written next to it, mode 0600, in a
0700 folder on the shared filesystem that sorts need anyway.  ``srun`` already
needs the submit host and the nodes to reach each other over TCP (its step
daemons connect back to it), so this adds no network requirement.  Without a
step per sort there is no ``srun`` per sort either: Slurm lists the allocation
(its batch step runs the holder, the service and the warm workers), and
each sort's placement is recorded in its work folder (:data:`SLOT_FILE`).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection
from pathlib import Path

from sf_assets.core.errors import EnvironmentSortFailure
from sf_assets.engines import warm_up
from sf_assets.engines.service_address import (
    authenticate,
    INFO_NAME,
    KEY_NAME,
    LOG_NAME,
    require_private,
)

SERVICES = "services"
# In the sort's work folder: which allocation, slot and worker sorted it, and how it ended.
SLOT_FILE = "slurm_slot.json"
# The service never exits for being idle: the holder ends it with the allocation.
NEVER_IDLE_EXIT_S = 10 * 365 * 86400.0
CONNECT_POLL_S = 0.2
# How long a published address may refuse connections before the sort gives up on it.
CONNECT_TIMEOUT_S = 60.0
# How long one connection's authentication may wait for the service before it is tried again.
HANDSHAKE_TIMEOUT_S = 15.0


def service_folder(pool_root: Path, job_id: str, create: bool = False) -> Path:
    """``POOL/services/JOB_ID``: the allocation's service folder, private to this user as it holds the key.

    Parameters
    ----------
    pool_root : Path
        The pool's folder.
    job_id : str
        The allocation.
    create : bool
        Create it, mode 0700, and check that it is private.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    ServiceFolderError
        With ``create``: the folder is not a directory of this user with mode 0700.
    """
    folder = Path(pool_root) / SERVICES / job_id
    if create:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # the parents' umask must not loosen it
        require_private(folder)
    return folder


def allocation_cpus(env: Mapping[str, str]) -> int:
    """The CPUs this allocation has on its node (``SLURM_CPUS_ON_NODE``), else the ones we may run on.

    The service's slots share them out as threads per sort.

    Parameters
    ----------
    env : Mapping[str, str]
        The holder's environment (Slurm's variables of the batch step).

    Returns
    -------
    int
        The CPU count, at least 1.
    """
    cpus = env.get("SLURM_CPUS_ON_NODE", "")
    return int(cpus) if cpus.isdigit() and int(cpus) > 0 else len(os.sched_getaffinity(0))


def allocation_gpus(env: Mapping[str, str]) -> tuple[str, ...]:
    """The GPUs Slurm gave this allocation on its node (``CUDA_VISIBLE_DEVICES``, set with ``--gpus-per-node``).

    Parameters
    ----------
    env : Mapping[str, str]
        The holder's environment.

    Returns
    -------
    tuple[str, ...]
        The GPU ids in Slurm's order; empty without GPUs.
    """
    return tuple(gpu.strip() for gpu in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu.strip())


def start_service(
    pool_root: Path, job_id: str, slots: int, cpus: int, gpus: tuple[str, ...] = (), warm_up_request: dict | None = None
) -> subprocess.Popen:
    """Start the allocation's sort service (run by its holder, on the node).

    ``slots`` sorts at once, each with ``cpus // slots`` threads (at least
    one) and its share of ``gpus`` as ``CUDA_VISIBLE_DEVICES``: the share of
    the allocation a step of 1/N of it had.  It listens on TCP and never exits
    for being idle (the holder ends it with the allocation).  Its output goes
    to ``service.log`` in its folder.

    Parameters
    ----------
    pool_root : Path
        The pool's folder (on the filesystem shared with the submit host).
    job_id : str
        The allocation.
    slots : int
        Sorts at once (``--slurm-jobs-per-allocation``).
    cpus : int
        The allocation's CPUs on the node (:func:`allocation_cpus`).
    gpus : tuple[str, ...]
        The allocation's GPUs (:func:`allocation_gpus`).
    warm_up_request : dict or None
        ``{"sorters": [...], "jit_cache_dir": ...}``: what its template warms
        (:mod:`sf_assets.engines.warm_up`), reported in the service's folder.

    Returns
    -------
    subprocess.Popen
        The service's process.

    Raises
    ------
    ServiceFolderError
        The service folder exists but is not private to this user.
    """
    folder = service_folder(pool_root, job_id, create=True)
    threads = max(1, cpus // max(1, slots))
    argv = [
        sys.executable, "-m", "sf_assets.engines.sort_service", "--tcp", "--folder", str(folder),
        "--slots", str(slots), "--threads-per-sort", str(threads), "--idle-exit-s", f"{NEVER_IDLE_EXIT_S:g}",
        "--gpus", ",".join(gpus),
    ]  # fmt: skip
    if warm_up_request and warm_up_request.get("sorters"):
        text = warm_up.encode(warm_up_request["sorters"], warm_up_request.get("jit_cache_dir"), folder)
        argv += ["--warm-up", text]
    with open(folder / LOG_NAME, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def published_address(pool_root: Path, job_id: str) -> tuple[str, int] | None:
    """The ``(node, port)`` the allocation's service listens on, once it does; else None.

    Parameters
    ----------
    pool_root : Path
        The pool's folder.
    job_id : str
        The allocation.

    Returns
    -------
    tuple[str, int] or None
        Node name and TCP port; None while the service has not published them (or the file is half-read).
    """
    try:
        info = json.loads((service_folder(pool_root, job_id) / INFO_NAME).read_text())
    except (FileNotFoundError, ValueError):
        return None
    address = info.get("address")
    return (str(address[0]), int(address[1])) if address else None


class AllocationServiceGone(RuntimeError):
    """The allocation's service cannot be reached: the allocation ended, or its service did."""


def connect_to_allocation(
    pool_root: Path, job_id: str, still_there: Callable[[], bool], timeout_s: float = CONNECT_TIMEOUT_S
) -> Connection:
    """A connection to the service of allocation ``job_id``, waiting while it starts.

    Parameters
    ----------
    pool_root : Path
        The pool's folder.
    job_id : str
        The allocation.
    still_there : Callable[[], bool]
        Does the allocation still run?  Asked while no address is published or
        the address does not answer.
    timeout_s : float
        How long, in seconds, a published address may refuse connections while the allocation runs.

    Returns
    -------
    Connection
        An authenticated TCP connection to the service.

    Raises
    ------
    AllocationServiceGone
        ``still_there`` said False; the message quotes the service's log.
    EnvironmentSortFailure
        The address was published but refused connections for ``timeout_s``
        while the allocation ran: this host cannot reach the node (a firewall,
        a node name it cannot resolve), which another allocation would not
        change.
    ServiceFolderError
        The allocation's service folder is not this user's alone (mode 0700).
    """
    folder = service_folder(pool_root, job_id)
    refused_since: float | None = None
    while True:
        address = published_address(pool_root, job_id)
        if address is not None:
            try:
                # Ours alone, as the service made it: a folder someone else put in its place (a pool on a
                # group-writable filesystem) would hand this client their key and their replies.
                require_private(folder)
                return authenticated_client(address, (folder / KEY_NAME).read_bytes(), HANDSHAKE_TIMEOUT_S)
            except (OSError, EOFError, AuthenticationError) as exc:  # exiting, or restarting: look again
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > timeout_s and still_there():
                    raise EnvironmentSortFailure(
                        f"the sort service of Slurm allocation {job_id} listens on {address[0]}:{address[1]} "
                        f"({folder / INFO_NAME}), but this host could not connect to it for {timeout_s:g} s "
                        f"({exc}): the submit host must be able to open TCP connections to the nodes"
                    ) from exc
        if not still_there():
            raise AllocationServiceGone(
                f"allocation {job_id} ended before its sort service answered; its log:\n"
                f"{service_log_tail(pool_root, job_id)}"
            )
        time.sleep(CONNECT_POLL_S)


def authenticated_client(address, authkey: bytes, timeout_s: float) -> Connection:
    """``multiprocessing.connection.Client`` over TCP, except that connecting and authenticating time out.

    A connection the service's listen queue dropped (32 runs connecting at
    once) stays established on this side only, and ``Client`` would wait
    for the service's challenge forever; here the wait ends after
    ``timeout_s`` with an ``OSError``, and the caller connects again.

    Parameters
    ----------
    address : tuple[str, int]
        The service's host and port.
    authkey : bytes
        The service's key.
    timeout_s : float
        Seconds for the TCP connection, and for each step of the handshake.

    Returns
    -------
    Connection
        The authenticated connection, with no timeout left on it.

    Raises
    ------
    OSError
        Refused, or timed out.
    AuthenticationError
        The key did not match.
    """
    with socket.create_connection((address[0], int(address[1])), timeout=timeout_s) as sock:
        sock.settimeout(None)  # blocking: the Connection reads the descriptor itself
        conn = Connection(os.dup(sock.fileno()))
    try:
        authenticate(conn, authkey, timeout_s, serving=False)
    except BaseException:
        conn.close()
        raise
    return conn


def service_log_tail(pool_root: Path, job_id: str, chars: int = 2000) -> str:
    """The end of an allocation's sort service log, for an error message.

    Parameters
    ----------
    pool_root : Path
        The pool's folder.
    job_id : str
        The allocation.
    chars : int
        How much of the end.

    Returns
    -------
    str
        The log's last ``chars`` characters ("" if it cannot be read).
    """
    try:
        return (service_folder(pool_root, job_id) / LOG_NAME).read_text(errors="replace")[-chars:]
    except OSError:
        return ""
