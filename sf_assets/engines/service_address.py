"""Where this host's sort service listens, and the secret that lets a client in.

One service serves every sorting step on a host, whoever launched its run (the
command line, a UI backfill, the studyset sensor, the schedule).  Its folder
holds the Unix socket, the key clients authenticate with, a lock the running
service holds for its lifetime and its log.  The folder is private to this
user (mode 0700); a socket and key in a folder someone else could write would
let them run code as us.

The folder's name carries a fingerprint of the code and of the service's
settings: a service started by another checkout, another Python, older code
or other settings (slots, threads per sort) is never reused; it goes idle and
exits by itself.
"""
from __future__ import annotations

import hashlib
import os
import socket
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import sf_assets
from sf_assets.engines.provenance import installed_code

SOCKET_NAME = "service.sock"
KEY_NAME = "authkey"
LOCK_NAME = "service.lock"
START_LOCK_NAME = "start.lock"
LOG_NAME = "service.log"
INFO_NAME = "service.json"


class ServiceFolderError(RuntimeError):
    """The service folder exists but is not safe to use (another owner, or open to others)."""


@dataclass(frozen=True)
class ServiceSettings:
    """What the host's sort service is started with.

    Attributes
    ----------
    slots : int
        sorts that may run at once on this host (each in its own warm worker).
    threads_per_sort : int
        OpenMP/BLAS/numba threads of each sort, fixed so that a sort's result does not depend on how many
        others run beside it.
    idle_exit_s : float
        the service exits after this many seconds with no sort, run or client.
    base_dir : str
        the folder under which the service's own folder is made; "" is ``$SF_ASSETS_SERVICE_DIR``, or
        ``/tmp/sf-assets-UID`` (short: a Unix socket's path has at most 107 bytes).
    """

    slots: int = 2
    threads_per_sort: int = 1
    idle_exit_s: float = 600.0
    base_dir: str = ""


def code_fingerprint() -> str:
    """The interpreter, the package's location, every source file's size and mtime, and the libraries' versions.

    A service holds the sorters' code, the libraries (dagster, spikeinterface,
    the sorters' packages: :func:`~sf_assets.engines.provenance.installed_code`)
    and the package's modules in memory; this changes whenever any of them
    would differ in a fresh process, so a launch after an upgrade gets a new
    service instead of the old one's workers.

    Returns
    -------
    str
        A sha1.
    """
    package = Path(sf_assets.__file__).parent
    h = hashlib.sha1()
    h.update(sys.executable.encode())
    h.update(str(package).encode())
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(package)}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(repr(installed_code()).encode())
    return h.hexdigest()


def host_folder(settings: ServiceSettings) -> Path:
    """The private folder this user's host-wide sf-assets state lives in (created 0700).

    Parameters
    ----------
    settings : ServiceSettings
        ``base_dir`` (else ``SF_ASSETS_SERVICE_DIR``, else ``/tmp/sf-assets-UID``).

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    ServiceFolderError
        If the folder is not private to this user.
    """
    base = Path(settings.base_dir or os.environ.get("SF_ASSETS_SERVICE_DIR") or f"/tmp/sf-assets-{os.getuid()}")
    base.mkdir(mode=0o700, exist_ok=True)
    require_private(base)
    return base


def service_folder(settings: ServiceSettings) -> Path:
    """This code's and these settings' service folder (created private to this user).

    Parameters
    ----------
    settings : ServiceSettings
        Slots, threads per sort, idle exit: a service serves one combination.

    Returns
    -------
    Path
        The folder, named after the code's fingerprint and the settings.
    """
    base = host_folder(settings)
    key = hashlib.sha1(
        f"{code_fingerprint()}:{settings.slots}:{settings.threads_per_sort}:{settings.idle_exit_s}".encode()
    ).hexdigest()[:12]
    folder = base / key
    folder.mkdir(mode=0o700, exist_ok=True)
    require_private(folder)
    return folder


def require_private(path: Path) -> None:
    """Refuse a service folder that others could read or write: it holds the service's key.

    Parameters
    ----------
    path : Path
        The folder.

    Raises
    ------
    ServiceFolderError
        When it is not a directory of this user with mode 0700.
    """
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ServiceFolderError(
            f"{path}: the sort service's folder must be a directory owned by uid {os.getuid()} "
            f"with mode 0700 (found uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}); remove it or "
            "set sorting_engine.service_dir to a private folder"
        )


def io_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel-level receive and send timeouts on ``sock`` (0: none), which a raw-descriptor read obeys too.

    Socket options: they hold for every descriptor of the socket, so a
    ``multiprocessing`` ``Connection`` over a duplicate of it times out too.

    Parameters
    ----------
    sock : socket.socket
        The socket.
    seconds : float
        The timeout (0: none).
    """
    timeval = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def authenticate(conn, authkey: bytes, timeout_s: float, *, serving: bool) -> None:
    """Run ``multiprocessing``'s key handshake on ``conn`` (its documented functions), each step within ``timeout_s``.

    What ``Listener.accept`` (``serving``) and ``Client`` run, except that a
    peer that goes away or falls silent ends the wait with an ``OSError``
    instead of blocking for good; no timeout is left on the connection.

    Parameters
    ----------
    conn : multiprocessing.connection.Connection
        The connection (a socket's).
    authkey : bytes
        The service's key.
    timeout_s : float
        Seconds for each step.
    serving : bool
        True on the service's side (it challenges first), False on the client's.

    Raises
    ------
    OSError
        The peer went away or timed out.
    EOFError
        The peer closed the connection.
    multiprocessing.AuthenticationError
        The keys differ.
    """
    from multiprocessing.connection import answer_challenge, deliver_challenge

    steps = (deliver_challenge, answer_challenge) if serving else (answer_challenge, deliver_challenge)
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:  # options on a duplicate hold for the socket
        io_timeouts(sock, timeout_s)
        for step in steps:
            step(conn, authkey)
        io_timeouts(sock, 0.0)
