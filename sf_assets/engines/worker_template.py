"""Start warm sort workers by forking one process that has already imported what a sort needs.

A warm worker started as a new interpreter (``python -m
sf_assets.engines.worker --serve``) spends one to two seconds of CPU
importing spikeinterface before its first sort.  A Slurm allocation's service
starts all of its slots' workers at once, on a node whose CPUs the first
sorts need: 32 slots on a shared node paid about a minute of CPU for the same
imports.  The sort service therefore starts one *template* per service
(``python -m sf_assets.engines.worker_template``, with the workers'
environment), which imports once and then forks a worker for each request,
in milliseconds, its pages shared with the template until written.

The template stays single-threaded (forking a process with other threads
running can copy a lock some thread held), but for numba's workqueue threads
after a warm-up (:mod:`sf_assets.engines.warm_up`: it sorts a synthetic
recording with the sorters to come first, so the workers it forks have their
code; a fork does not copy those threads and numba starts them again in the
child, as in a copied warm worker), reaps its workers and reports each exit,
with the status and CPU time ``os.wait4`` read, to the service.  A template
whose warm-up kept a fork waiting too long is replaced by one without it.
What a worker started as its own interpreter guarantees still holds:

* it leads its own process group (set before the service hears of it), so
  a timeout stops the whole group; the template leads a session of its own,
  so no terminal's signals reach either;
* its environment is the slot's (its share of the GPUs); the thread-pool
  limits, which libraries read when they are imported, are the same for
  every slot of a service and are the template's own;
* it dies with the service: the template exits when the service's end of
  their socket closes, and a worker stops when its parent exits;
* its exit status and CPU time come from the kernel's accounting of the
  reaped process, through the template's report.  A template that dies
  takes its workers with it; they are reported killed, CPU time unknown.

It is also the child subreaper of its workers' descendants: a warm worker's
copy of itself (:mod:`sf_assets.engines.worker_clone`) is adopted, reaped
and reported here like the workers it forks.

Protocol (a ``SOCK_SEQPACKET`` socket pair; one JSON message per packet):
the service sends ``{"env": {...}}`` with the read end of the worker's
command pipe attached (``SCM_RIGHTS``); the template answers
``{"spawned": pid}``, and later ``{"exited": pid, "code": c, "cpu_s": s}``.
"""
from __future__ import annotations

import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from sf_assets.engines import stop_signals, warm_up
from sf_assets.engines.worker_clone import exit_with

# How long the service waits for a fork: the template's own start (its imports) comes first.
SPAWN_WAIT_S = 120.0
MESSAGE_BYTES = 1 << 20
# A worker whose template died is reported with this code (it is stopped by its parent's exit).
TEMPLATE_GONE_CODE = -signal.SIGKILL


class _Template:
    """One template process and what it has reported: the service's side of its socket."""

    def __init__(self, env: Mapping[str, str]):
        self.env = dict(env)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sf_assets.engines.worker_template", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(env),
        )
        theirs.close()
        self.sock = ours
        self.spawned: queue.Queue[int | None] = queue.Queue()
        self.exits: dict[int, tuple[int, float | None]] = {}
        self.children: set[int] = set()
        self.gone = False
        self.changed = threading.Condition()
        threading.Thread(target=self._hear, name="worker-template", daemon=True).start()

    def _hear(self) -> None:
        while True:
            try:
                packet = self.sock.recv(MESSAGE_BYTES)
            except OSError:
                packet = b""
            if not packet:
                break
            message = json.loads(packet)
            if "spawned" in message:
                with self.changed:
                    self.children.add(message["spawned"])
                self.spawned.put(message["spawned"])
            else:
                with self.changed:
                    self.exits[message["exited"]] = (message["code"], message["cpu_s"])
                    self.changed.notify_all()
        with self.changed:  # its workers stop as it exits (their parent is gone)
            self.gone = True
            for pid in self.children - self.exits.keys():
                self.exits[pid] = (TEMPLATE_GONE_CODE, None)
            self.changed.notify_all()
        self.spawned.put(None)

    def spawn(self, env: Mapping[str, str]) -> tuple[int, int]:
        """Fork a worker reading its commands from a new pipe; returns its pid and the pipe's write end."""
        read_end, write_end = os.pipe()
        try:
            socket.send_fds(self.sock, [json.dumps({"env": dict(env)}).encode()], [read_end])
        except OSError:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        try:
            # A template that warms up first (engines/warm_up.py) answers its first request after it.
            pid = self.spawned.get(timeout=SPAWN_WAIT_S + (warm_up.BUDGET_S if warm_up.ENV in self.env else 0.0))
        except queue.Empty:
            pid = None
        if pid is None:
            os.close(write_end)
            raise OSError(f"the sort-worker template (pid {self.proc.pid}) did not start a worker")
        return pid, write_end

    def adopt(self, pid: int) -> None:
        """Count ``pid`` (a worker's copy, which this template reaps) among its children."""
        with self.changed:
            if self.gone and pid not in self.exits:
                self.exits[pid] = (TEMPLATE_GONE_CODE, None)
            self.children.add(pid)
            self.changed.notify_all()

    def close(self, wait_s: float) -> None:
        # The template exits at the end of its socket.  A close() alone would not end it:
        # the listening thread's recv() holds the socket open until it returns, so the
        # template would see no end and be killed after ``wait_s``.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the template already closed its end
        self.sock.close()
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerTemplate:
    """The sort service's template: started on first use, started again if it died."""

    def __init__(self, env: Mapping[str, str]):
        self.env = dict(env)
        self._lock = threading.Lock()
        self._current: _Template | None = None

    def spawn(self, env: Mapping[str, str]) -> "ForkedWorker":
        """Fork a worker with environment ``env``, its commands on its standard input.

        Parameters
        ----------
        env : Mapping[str, str]
            The worker's environment (the slot's).

        Returns
        -------
        ForkedWorker
            The worker process.

        Raises
        ------
        OSError
            A new template could not start a worker either.
        """
        with self._lock:
            try:
                return self._spawn_once(env)
            except OSError:  # the template died (or its warm-up held it up): a new one, once, without a warm-up
                self._current.close(wait_s=0.0)
                self._current = None
                self.env.pop(warm_up.ENV, None)
                return self._spawn_once(env)

    def _spawn_once(self, env: Mapping[str, str]) -> "ForkedWorker":
        if self._current is None or self._current.gone or self._current.proc.poll() is not None:
            self._current = _Template(self.env)
        pid, write_end = self._current.spawn(env)
        return ForkedWorker(self._current, pid, write_end)

    def adopt(self, pid: int, command_fd: int) -> "ForkedWorker":
        """The copy ``pid`` of one of this template's workers, commands written to ``command_fd``.

        Parameters
        ----------
        pid : int
            The copy, which the template reaps (its child subreaper).
        command_fd : int
            The write end of its command stream.

        Returns
        -------
        ForkedWorker
            The copy, as :meth:`spawn` returns a worker.

        Raises
        ------
        OSError
            The template that adopted it is gone.
        """
        with self._lock:
            current = self._current
        if current is None or current.gone:
            raise OSError("the sort-worker template that adopted the copy is gone")
        current.adopt(pid)
        return ForkedWorker(current, pid, command_fd)

    def close(self, wait_s: float = 5.0) -> None:
        """End the template (its idle workers were closed first; any left stop with it).

        Parameters
        ----------
        wait_s : float
            Seconds to wait for it before killing it.
        """
        with self._lock:
            if self._current is not None:
                self._current.close(wait_s)
                self._current = None


class ForkedWorker:
    """A worker forked by the template: a :class:`~sf_assets.engines.supervisor.WorkerProcess`.

    The template reaps it and reports its exit (code and CPU time), so
    :meth:`poll` and :meth:`exit_status` read that report, not the kernel.
    """

    def __init__(self, template: _Template, pid: int, command_fd: int):
        self._template = template
        self.pid = pid
        self.stdin = os.fdopen(command_fd, "w", encoding="utf-8")
        self.returncode: int | None = None

    def exit_status(self, timeout: float | None = 0.0) -> tuple[int, float | None] | None:
        """``(exit code, CPU seconds)`` once the template reported the exit; None until then.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait for it (None: until it comes).

        Returns
        -------
        tuple or None
            The exit code (negative: the signal that ended it) and CPU seconds (None when unknown).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._template.changed:
            while self.pid not in self._template.exits:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._template.changed.wait(remaining)
            self.returncode = self._template.exits[self.pid][0]
            return self._template.exits[self.pid]

    def poll(self) -> int | None:
        """Has it exited (as the template reported)?

        Returns
        -------
        int or None
            The exit code, or None while it runs.
        """
        status = self.exit_status()
        return None if status is None else status[0]

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit, as ``Popen.wait``.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait at most (None: until it exits).

        Returns
        -------
        int
            The exit code (negative: the signal that ended it).

        Raises
        ------
        subprocess.TimeoutExpired
            It is still running after ``timeout`` seconds.
        """
        status = self.exit_status(timeout)
        if status is None:
            raise subprocess.TimeoutExpired(f"sort worker {self.pid}", timeout)
        return status[0]


# ------------------------------------------------------------ the template process


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        sock.send(json.dumps({"exited": pid, "code": code, "cpu_s": usage.ru_utime + usage.ru_stime}).encode())


def _adopt_orphans() -> None:
    """Become the child subreaper of the workers' descendants.

    A worker's copy (:mod:`sf_assets.engines.worker_clone`) is orphaned at
    birth and must be reaped, and reported, here.
    """
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _own_group(pid: int) -> None:
    """Make the new worker lead its own process group before the service hears of it (a stop may follow at once)."""
    try:
        os.setpgid(pid, pid)
    except (PermissionError, ProcessLookupError):
        pass  # the child got there first, or is already gone


def _become_worker(
    env: Mapping[str, str], command_fd: int, sock: socket.socket, wake_fds: tuple[int, int], template_pid: int
) -> None:
    """In the forked child: drop the template's socket and signals, serve jobs; never returns."""

    def serve() -> int:
        os.setpgid(0, 0)  # as the template does for it: whichever runs first
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sock.close()
        for fd in wake_fds:
            os.close(fd)
        os.dup2(command_fd, 0)
        os.close(command_fd)
        os.environ.clear()
        os.environ.update(env)
        from sf_assets.engines.worker import serve_forked

        return serve_forked(template_pid)

    exit_with(serve)


def run_template(fd: int) -> int:
    """Import what a sort needs, then fork a worker per request until the service's end closes.

    Parameters
    ----------
    fd : int
        The template's end of the socket pair.

    Returns
    -------
    int
        0 when the service is gone.
    """
    from sf_assets.engines.worker import preload

    stop_signals.restore()  # the workers it forks keep its dispositions: a stop must stop them
    sock = socket.socket(fileno=fd)
    template_pid = os.getpid()
    _adopt_orphans()
    preload()
    if os.environ.get(warm_up.ENV):
        warm_up.run(os.environ[warm_up.ENV])
        unfit = warm_up.fit_to_fork()
        if unfit is not None:  # start again, as a template without a warm-up
            warm_up.void(os.environ[warm_up.ENV], f"the template could not fork after it ({unfit})")
            env = {k: v for k, v in os.environ.items() if k != warm_up.ENV}
            os.set_inheritable(fd, True)
            os.execve(sys.executable, [sys.executable, "-m", "sf_assets.engines.worker_template", str(fd)], env)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up descriptor hears the signal
    signal.set_wakeup_fd(wake_write)
    try:
        while True:
            ready, _, _ = select.select([sock, wake_read], [], [], 1.0)
            if wake_read in ready:
                os.read(wake_read, 4096)
            _report_exits(sock)
            if sock not in ready:
                continue
            packet, fds, _, _ = socket.recv_fds(sock, MESSAGE_BYTES, 1)
            if not packet:
                return 0  # the service is gone; the workers stop as this process exits
            pid = os.fork()
            if pid == 0:
                _become_worker(json.loads(packet)["env"], fds[0], sock, (wake_read, wake_write), template_pid)
            _own_group(pid)
            os.close(fds[0])
            sock.send(json.dumps({"spawned": pid}).encode())
    except OSError:  # the service's end closed while this one wrote or read
        return 0


if __name__ == "__main__":
    sys.exit(run_template(int(sys.argv[1])))
