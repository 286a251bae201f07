"""The host's sort service: warm sort workers behind one local socket, for every run.

Every sorting step on a host, whoever launched its run (the command line, a
UI backfill, the studyset sensor, the schedule, ``dagster asset
materialize``), hands its sort to this one long-lived process instead of
starting a worker of its own.  The service keeps one warm worker per slot
(:class:`~sf_assets.engines.warm_worker.WarmWorker`, forked from one
process that imported spikeinterface once,
:mod:`sf_assets.engines.worker_template`), so a sorter's imports
and numba compilation are paid once, not once per sort or per run,
and it decides which slot takes which sort
(:class:`~sf_assets.core.dispatch.AffinityQueue`): a sort goes where its
sorter is already compiled, or waits for that slot when compiling it
elsewhere would take longer, or takes a copy of the warm worker, forked
between two of its sorts (:mod:`sf_assets.engines.worker_clone`), so a
sorter compiles once per service, not once per slot.  Its slots are also the host's limit on sorts
at once: a command-line campaign and a UI backfill running together share
them instead of oversubscribing the cores.

Why our own pool and not a general engine's persistent workers (say
``dask.distributed``): a sort must be stoppable on its own (a timeout or a
hung canary stops the worker's whole process group, which a task thread in a
shared worker cannot be), its console must be the file descriptors of the
process that runs it (C code and child processes included), and its CPU time
must come from the kernel's accounting of that process.  Those are the
guarantees the project tests; a pool of one-job-at-a-time processes keeps
them, and needs no scheduler, nanny or extra dependency.

Protocol (``multiprocessing.connection`` over a Unix socket, authenticated
with the key in the service's private folder, see
:mod:`sf_assets.engines.service_address`; or over TCP with the same key, for
the service inside a Slurm allocation, whose clients run on another host,
see :mod:`sf_assets.engines.slurm_service`): a client sends one request,
``{"op": "sort", "work_dir": ..., "timeout_s": ..., "canary_timeout_s": ...}``
for a job prepared in ``work_dir``, and receives ``("started", info)``, the
:class:`~sf_assets.engines.job.CanaryReport` as soon as the worker decides
it, and the final :class:`~sf_assets.engines.job.SortReport`.  A client is a
lease: when its connection closes (its run was terminated, or its process
died), a queued sort is dropped and a running one is stopped at once, its
worker discarded.  ``{"op": "status"}`` describes the slots.

The service also hosts the Dagster runs of the project's run launcher, as
threads of a few run processes (:mod:`sf_assets.engines.run_host`):
``launch_run``, ``terminate_run`` and ``run_status`` requests.

A Slurm allocation's service may be told which sorters are coming
(``--warm-up``): its template sorts a synthetic recording with each before
forking the slots' workers (:mod:`sf_assets.engines.warm_up`), and every slot
counts them as compiled.

The service starts on demand (:mod:`sf_assets.engines.service_client`, under
a lock so that only one starts) and exits after ``idle_exit_s`` with no sort
and no client.  Its workers die with it (they watch their parent).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path

from sf_assets.core.dispatch import AffinityQueue, Task
from sf_assets.engines.run_host import RETIRE_IDLE_S, RunHost
from sf_assets.core.atomic import write_bytes_atomic, write_json_atomic
from sf_assets.engines.job import JOB_FILE, SortJob, SortReport
from sf_assets.engines.service_address import INFO_NAME, KEY_NAME, LOCK_NAME, SOCKET_NAME, ServiceSettings, authenticate
from sf_assets.engines.supervisor import SortCancelled, watch
from sf_assets.engines.threads import FORK_SAFE_NUMBA_LAYER, NUMBA_LAYER_VAR, thread_limited_env
from sf_assets.engines.warm_worker import MAX_JOBS_PER_WORKER, WarmWorker
from sf_assets.engines import jit_cache, stop_signals, warm_up
from sf_assets.engines.worker_template import WorkerTemplate

WAIT_POLL_S = 0.05
IDLE_CHECK_S = 1.0
# How long idle slots may wait for the sort of a sorting run this service launched (see
# core.dispatch): its process starts, Dagster starts the run and the step, the step sends it.
EXPECT_SORT_S = 20.0
# How often a waiting client has the idle slots choose again: a slot may be waiting for a sort
# on its way whose run has since ended, or for a sorter's first compile elsewhere to be under way
# long enough (core.dispatch).
RECHECK_S = 0.5
# Connections waiting to be accepted (Listener's default is 1): a campaign's runs connect all at
# once, and over TCP a connection the full queue dropped stays open on the client's side only.
LISTEN_BACKLOG = 256
# A client must answer the key's challenge within this (its own thread waits, no other client does).
HANDSHAKE_TIMEOUT_S = 15.0


@dataclass
class Slot:
    """One place a sort can run, with the warm worker that runs it there."""

    index: int
    worker: WarmWorker | None = None
    task: Task | None = None
    jobs: int = 0
    # Dispatch's rule 4: the worker to copy for this task, and what this slot's worker had compiled.
    copy_of: tuple[WarmWorker, set[str]] | None = None


def client_gone(conn: Connection) -> bool:
    """Has the client closed its connection (or asked to cancel)?  Never blocks, so the sort loop can poll it.

    Parameters
    ----------
    conn : Connection
        The client's connection.

    Returns
    -------
    bool
        True when the connection ended or a cancel request came (it is consumed).
    """
    try:
        if conn.poll(0):
            conn.recv()  # a cancel request: either way the client is done with this sort
            return True
    except (EOFError, OSError):
        return True
    return False


def slot_gpus(gpus: tuple[str, ...], index: int, slots: int) -> list[str]:
    """Slot ``index``'s GPUs: every ``slots``-th of ``gpus`` from ``index`` on, else one shared round-robin.

    Four GPUs and two slots: slot 0 gets 0 and 2, slot 1 gets 1 and 3; one GPU and
    two slots: both get it.

    Parameters
    ----------
    gpus : tuple[str, ...]
        The GPU ids the service may use.
    index : int
        The slot.
    slots : int
        The service's slot count.

    Returns
    -------
    list[str]
        The slot's GPU ids; empty without GPUs.
    """
    if not gpus:
        return []
    if len(gpus) >= slots:
        return [gpu for j, gpu in enumerate(gpus) if j % slots == index]
    return [gpus[index % len(gpus)]]


@dataclass
class SortService:
    """The slots, the queue of waiting sorts, and who is connected."""

    settings: ServiceSettings
    worker_env: dict[str, str]
    # GPU ids the service may use (a Slurm allocation's): each slot's worker sees its share.
    gpus: tuple[str, ...] = ()
    # The sorters its template sorts a synthetic recording with before forking any worker
    # (engines/warm_up.py; a Slurm allocation's service, told by the launch that requested it).
    warm_up: str | None = None
    queue: AffinityQueue = field(default_factory=AffinityQueue)
    lock: threading.Condition = field(default_factory=threading.Condition)
    clients: int = 0
    last_active: float = field(default_factory=time.monotonic)
    dispatched_at: float = 0.0

    def __post_init__(self):
        self.slots = [Slot(i) for i in range(self.settings.slots)]
        self.runs = RunHost()
        # A warm worker's copy keeps the environment it started with: only slots that share one
        # (no GPUs split between them) take copies, and only on numba's fork-safe layer.
        self.queue.copies = not self.gpus and self.worker_env.get(NUMBA_LAYER_VAR) == FORK_SAFE_NUMBA_LAYER
        # A warm template forks workers that have its sorters' code, which takes the same care as a copy.
        if not self.queue.copies:
            self.warm_up = None
        # One import of spikeinterface per service, not per worker: workers are forked from it.
        self.template = WorkerTemplate({**self.worker_env, warm_up.ENV: self.warm_up} if self.warm_up else self.worker_env)
        # Every worker the template forks has these compiled: a slot's first sort of them is warm (rule 2).
        # Counted on before the warm-up ends (workers are forked after it), corrected once it reports;
        # not one the JIT cache holds (the template leaves it to the workers, which rule 3 starts).
        self.warmed = {
            sorter for sorter in warm_up.sorters_of(self.warm_up) if not self._cache_holds(sorter)
        }
        for slot in self.slots:
            self.queue.seen[slot.index] = set(self.warmed)
        # Sorter -> the JIT cache folders its sorts' workers use, for the queue's ``cached`` (rule 3),
        # and the CPUs this process may run on (a Slurm allocation's, where Slurm confines its steps).
        self.jit_folders: dict[str, set[Path]] = {}
        self.queue.cpus = len(os.sched_getaffinity(0))

    def start_workers(self) -> None:
        """Start every slot's worker now: the template's imports overlap whatever comes first.

        Without this a slot's first sort waited for them (seconds), after the
        recordings it needed had already waited for the service itself.  The
        lock is not held while the first fork waits for the template; a slot
        that got a worker (or a sort) in the meantime keeps it.
        """
        for slot in self.slots:
            worker = WarmWorker(self.env_for(slot), self.template)
            self._settle_warm_up()
            with self.lock:
                if slot.worker is None and slot.task is None:
                    slot.worker = worker
                    continue
            worker.close()

    def _cache_holds(self, sorter: str) -> bool:
        """Does the warm-up's JIT cache hold ``sorter`` already (:func:`jit_cache.holds_sorter`)?"""
        folder = json.loads(self.warm_up)["jit_cache_dir"] if self.warm_up else None
        return bool(folder) and jit_cache.holds_sorter(jit_cache.folder_for(Path(folder), self.worker_env), sorter)

    def _settle_warm_up(self) -> None:
        """Once the template forked a worker (its warm-up over), drop the sorters it failed to warm from the slots'."""
        if not self.warm_up:
            return
        # A template started again without its warm-up (it held a fork up) has warmed nothing.
        warming = warm_up.ENV in self.template.env
        done = warm_up.warmed(Path(json.loads(self.warm_up)["folder"])) if warming else set()
        if done is None or self.warmed <= done:
            return
        failed = self.warmed - done
        print(f"sort service: the warm-up did not warm {', '.join(sorted(failed))}; their workers compile or load them", flush=True)
        with self.lock:
            self.warmed = self.warmed & done
            for sorters in self.queue.seen.values():
                sorters -= failed

    def env_for(self, slot: Slot) -> dict[str, str]:
        """The worker environment of ``slot``: its share of :attr:`gpus` as ``CUDA_VISIBLE_DEVICES``.

        Parameters
        ----------
        slot : Slot
            The slot whose worker is about to start.

        Returns
        -------
        dict[str, str]
            :attr:`worker_env` with ``CUDA_VISIBLE_DEVICES`` set to the slot's
            GPUs; :attr:`worker_env` itself when the service has none.
        """
        mine = slot_gpus(self.gpus, slot.index, len(self.slots))
        return {**self.worker_env, "CUDA_VISIBLE_DEVICES": ",".join(mine)} if mine else self.worker_env

    # --- dispatch (called with the lock held) ---

    def _dispatch(self) -> None:
        """Give each idle slot its next sort.

        Slots choose in this order: those with a queued sort of a sorter they
        have compiled, then those with nothing compiled (a sorter new to the
        service goes there rather than to a slot warm for another sorter),
        then the rest.
        """
        def rank(slot: Slot) -> int:
            compiled = self.queue.seen.get(slot.index, set())
            if any(t.sorter in compiled for t in self.queue.ready):
                return 0
            return 1 if not compiled else 2

        now = self.dispatched_at = time.monotonic()
        self._note_cached_sorters()
        if self.queue.expected:  # drop the sorts on their way past their time or whose run ended without one
            self.queue.forget(now, gone=lambda run_id: not self.runs.run_status(run_id)["alive"])
        for slot in sorted((s for s in self.slots if s.task is None), key=rank):
            slot.task = self.queue.take(slot.index, now)
            if slot.task is not None and slot.index in self.queue.copy_from:
                source, had = self.queue.copy_from[slot.index]
                slot.copy_of = (self.slots[source].worker, had)
        self.lock.notify_all()

    def _note_cached_sorters(self) -> None:
        """Add to the queue's ``cached`` the waiting sorts' sorters that a worker has marked in their JIT cache."""
        for sorter in {t.sorter for t in self.queue.ready if t.sorter is not None} - self.queue.cached:
            if any(jit_cache.holds_sorter(folder, sorter) for folder in self.jit_folders.get(sorter, ())):
                self.queue.cached.add(sorter)

    def launch_run(self, sorter: str = "", **run) -> dict:
        """Launch a run (:meth:`RunHost.launch_run`); a sorting run's sort is then expected.

        Parameters
        ----------
        sorter : str
            The spikeinterface sorter of the sort the run will send; empty when it sorts nothing.
        **run
            :meth:`RunHost.launch_run`'s arguments.

        Returns
        -------
        dict
            :meth:`RunHost.launch_run`'s answer.
        """
        answer = self.runs.launch_run(**run)
        if answer["launched"] and sorter:
            with self.lock:
                self.queue.expect(run["run_id"], sorter, time.monotonic() + EXPECT_SORT_S)
        return answer

    def _slot_of(self, task: Task) -> Slot | None:
        return next((s for s in self.slots if s.task is task), None)

    # --- one client's sort ---

    def handle_sort(self, conn: Connection, request: dict) -> None:
        """Run one sort: queue it, wait for the slot dispatch gives it, and relay its progress.

        Parameters
        ----------
        conn : Connection
            The client, which gets the canary's verdict and the sort's outcome as they come.
        request : dict
            ``work_dir``: the prepared job's folder.
        """
        work_dir = Path(request["work_dir"])
        job = SortJob.from_json((work_dir / JOB_FILE).read_text())
        # First submitted, first served (within the affinity rules): the run's creation time,
        # comparable across launches; else the arrival here.
        task = Task(
            key=str(work_dir),
            order=float(request.get("submitted_at") or time.time()),
            sorter=job.si_sorter_name,
            group=request.get("group"),
            group_limit=int(request.get("group_limit") or 0),
        )
        with self.lock:
            if job.jit_cache_dir:
                folder = jit_cache.folder_for(Path(job.jit_cache_dir), self.worker_env)
                self.jit_folders.setdefault(job.si_sorter_name, set()).add(folder)
            self.queue.add(task)
            self._dispatch()
        slot = self._wait_for_slot(conn, task)
        if slot is None:
            return
        self._run_on(slot, conn, job, work_dir, request)

    def _wait_for_slot(self, conn: Connection, task: Task) -> Slot | None:
        while True:
            with self.lock:
                slot = self._slot_of(task)
                if slot is None:
                    self.lock.wait(WAIT_POLL_S)
                    if time.monotonic() - self.dispatched_at > RECHECK_S and any(s.task is None for s in self.slots):
                        self._dispatch()  # an idle slot's reason to wait may have ended
                    slot = self._slot_of(task)
                if slot is not None:
                    return slot
            if client_gone(conn):
                with self.lock:
                    slot = self._slot_of(task)
                    if slot is None:
                        self.queue.ready.remove(task)
                        return None
                # Assigned in the meantime: give the slot back at once.
                self._release(slot, elapsed_s=None, worker_kept=True)
                return None

    def _take_copy(self, slot: Slot, conn: Connection, sorter: str) -> int | None:
        """Give ``slot`` the copy of a warm worker that dispatch chose for it (rule 4), made after its current sort.

        Returns
        -------
        int or None
            The copied worker's pid; None when there was nothing to copy or the copy failed (the slot's
            sort is then cold on its own worker, as dispatch is told).

        Raises
        ------
        SortCancelled
            The client left while the slot waited for the copy.
        """
        plan, slot.copy_of = slot.copy_of, None
        if plan is None:
            return None
        source, had = plan
        copy = source.copy(self.template, gone=lambda: client_gone(conn)) if source is not None else "no worker"
        if isinstance(copy, WarmWorker):
            old, slot.worker = slot.worker, copy
            if old is not None:
                old.close(wait_s=0.0)
            with self.lock:
                self.queue.copied(slot.index)
            return source.pid
        with self.lock:
            self.queue.copy_failed(slot.index, had if copy == "the client left" else had | {sorter})
        if copy == "the client left":
            raise SortCancelled(copy)
        print(f"sort service: slot {slot.index} got no copy of a warm worker ({copy}); it compiles {sorter}", flush=True)
        return None

    def _run_on(self, slot: Slot, conn: Connection, job: SortJob, work_dir: Path, request: dict) -> None:
        kept: list[WarmWorker] = []
        started = (time.time(), time.monotonic())
        released = False
        # Whatever fails from here on (a fork refused, the template gone), the slot is given back: a
        # slot kept busy for good would stall its sorts and the service's idle exit.
        try:
            try:
                copied_from = self._take_copy(slot, conn, job.si_sorter_name)
            except SortCancelled:
                self._release(slot, elapsed_s=None, worker_kept=True)
                released = True
                return
            warm = slot.worker is not None and slot.worker.alive() and not self.queue.running[slot.index][1]
            if slot.worker is None or not slot.worker.alive():
                slot.worker = WarmWorker(self.env_for(slot), self.template)
                self._settle_warm_up()
            started = (time.time(), time.monotonic())
            try:
                run = slot.worker.submit(work_dir, on_idle=kept.append)
            except OSError:  # the worker died while idle
                slot.worker = WarmWorker(self.env_for(slot), self.template)
                warm = False
                run = slot.worker.submit(work_dir, on_idle=kept.append)
            started_info = {"slot": slot.index, "worker_pid": slot.worker.pid, "warm": warm, "copy_of": copied_from}
            _send(conn, ("started", started_info))
            for event in watch(
                job,
                run,
                timeout_s=request.get("timeout_s"),
                canary_timeout_s=request.get("canary_timeout_s"),
                start=started,
                cancelled=lambda: client_gone(conn),
            ):
                if isinstance(event, SortReport):
                    # Free the slot before the client hears the outcome: a client that
                    # sends its next sort at once finds this slot idle, warm for the
                    # sorter, instead of a cold one beside it.
                    self._release(slot, time.monotonic() - started[1], worker_kept=bool(kept))
                    released = True
                _send(conn, ("event", event))
        except SortCancelled:
            pass
        finally:
            if not released:
                self._release(slot, time.monotonic() - started[1], worker_kept=bool(kept))

    def _release(self, slot: Slot, elapsed_s: float | None, worker_kept: bool) -> None:
        with self.lock:
            slot.copy_of = None  # a copy planned for a sort that never ran: the next sort gets its own plan
            slot.jobs += 1
            if not worker_kept or (slot.worker is not None and slot.worker.jobs_done >= MAX_JOBS_PER_WORKER):
                if slot.worker is not None and slot.worker.alive():
                    slot.worker.close()
                slot.worker = None
                self.queue.seen[slot.index] = set(self.warmed)  # a new worker has only the template's compiled
            self.queue.finished(slot.index, elapsed_s)
            slot.task = None
            self.last_active = time.monotonic()
            self._dispatch()

    def status(self) -> dict:
        """The service's state, for ``status`` requests and the tests.

        Returns
        -------
        dict
            Pid, settings, queued sorts, the sorters of the sorts on their way (launched runs'), clients,
            and each slot's task, worker, compiled sorters and jobs done.
        """
        with self.lock:
            return {
                "pid": os.getpid(),
                "settings": self.settings.__dict__,
                "queued": len(self.queue),
                "expected": sorted(e.sorter for e in self.queue.expected.values()),
                "clients": self.clients,
                "slots": [
                    {
                        "index": s.index,
                        "busy": s.task is not None,
                        "worker_pid": s.worker.pid if s.worker is not None else None,
                        "sorters": sorted(self.queue.seen.get(s.index, set())),
                        "jobs": s.jobs,
                    }
                    for s in self.slots
                ],
            }

    # --- connections ---

    def handle(self, conn: Connection) -> None:
        """Serve one client connection: a sort, a run launch, a run's status or termination, or status.

        Parameters
        ----------
        conn : Connection
            The client.
        """
        with self.lock:
            self.clients += 1
        try:
            request = conn.recv()
            op = request.get("op")
            if op == "sort":
                self.handle_sort(conn, request)
            elif op == "status":
                _send(conn, ("status", self.status()))
            elif op == "launch_run":
                _send(conn, (op, self.launch_run(**request.get("args", {}))))
            elif op in RunHost.OPS:
                _send(conn, (op, getattr(self.runs, op)(**request.get("args", {}))))
            else:
                _send(conn, ("error", f"unknown request {request.get('op')!r}"))
        except (EOFError, OSError):
            pass
        except Exception as exc:  # a bad request must not take the service down
            _send(conn, ("error", f"{type(exc).__name__}: {exc}"))
        finally:
            conn.close()
            with self.lock:
                self.clients -= 1
                self.last_active = time.monotonic()

    def idle_for_s(self) -> float:
        """How long the service has had nothing to do (its idle exit counts from this).

        Returns
        -------
        float
            Seconds since the last client, sort or run; 0 while any is active.
        """
        with self.lock:
            if self.clients or any(s.task is not None for s in self.slots) or len(self.queue):
                return 0.0
            if self.runs.active():
                self.last_active = time.monotonic()
                return 0.0
            return time.monotonic() - self.last_active

    def close_workers(self) -> None:
        """Let idle workers exit; stop busy ones at once (the service is going: a SIGTERM, its allocation ending)."""
        for slot in self.slots:
            if slot.worker is not None:
                slot.worker.close(wait_s=0.0 if slot.task is not None else 5.0)
        self.template.close()


def _send(conn: Connection, message) -> None:
    try:
        conn.send(message)
    except (OSError, EOFError):
        pass  # the client left; the sort loop notices it at its next poll


def _accept_forever(listener: Listener, service: SortService, key: bytes, closing: threading.Event) -> None:
    """Hand each new connection to a thread of its own, which authenticates it first.

    The listener has no key of its own: ``Listener.accept`` would run the
    handshake here, in the one accepting thread, and a client that went away
    or fell silent during it (a run killed while connecting, a Slurm client
    whose handshake timed out under load) stopped every later client.
    """
    while True:
        try:
            conn = listener.accept()
        except OSError:
            if closing.is_set():
                return  # the listener was closed: shutting down
            continue  # this connection failed before it was ours (aborted while queued)
        threading.Thread(target=_serve_client, args=(service, conn, key), daemon=True).start()


def _serve_client(service: SortService, conn: Connection, key: bytes) -> None:
    """Authenticate ``conn`` as ``multiprocessing``'s ``Listener`` does, within :data:`HANDSHAKE_TIMEOUT_S`; then serve it."""
    try:
        authenticate(conn, key, HANDSHAKE_TIMEOUT_S, serving=True)
    except (OSError, EOFError, AuthenticationError):  # gone, silent, or without the key
        conn.close()
        return
    service.handle(conn)


def _exit_on_sigterm(_signum, _frame) -> None:
    raise SystemExit(0)


def _warm_up(service: SortService) -> None:
    """Start the run host's fork server, then the slots' workers: the order a launch needs them in.

    Both import Dagster or spikeinterface for seconds of CPU.  Side by side,
    with the launching command's own imports, they shared two cores and the
    launch's first run waited for both; its sorts come only after its
    recordings' runs, so the workers start once the fork server is ready.
    """
    try:
        service.runs.start_fork_server()
    finally:  # a fork server that failed to start is reported by the first run's launch
        service.start_workers()


def serve(
    folder: Path, settings: ServiceSettings, tcp: bool = False, gpus: tuple[str, ...] = (), warm_up_text: str | None = None
) -> int:
    """Run the service in ``folder`` until it has been idle for ``settings.idle_exit_s`` (or SIGTERM).

    Parameters
    ----------
    folder : Path
        The service's private folder (key, socket, ``service.json``, lock).
    settings : ServiceSettings
        Slots, threads per sort and idle exit.
    tcp : bool
        Listen on a TCP port of every interface instead of the folder's Unix
        socket, and publish ``[this host's name, port]`` as ``address`` in
        ``service.json`` (removed again on exit): what the service inside a
        Slurm allocation does, as its clients run on the submit host.
    gpus : tuple[str, ...]
        The GPU ids to share out between the slots (see :func:`slot_gpus`).
    warm_up_text : str or None
        The sorters to warm the template with (:func:`sf_assets.engines.warm_up.encode`).

    Returns
    -------
    int
        0 once it exits (idle or SIGTERM), or at once when another service already holds the folder's lock.
    """
    lock_fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another sort service already serves this folder", flush=True)
        return 0
    key = secrets.token_bytes(32)
    write_bytes_atomic(folder / KEY_NAME, key, mode=0o600)
    socket_path = folder / SOCKET_NAME
    info: dict = {"pid": os.getpid(), "started": time.time(), "settings": settings.__dict__}
    if tcp:
        listener = Listener(("0.0.0.0", 0), family="AF_INET", backlog=LISTEN_BACKLOG)
        info["address"] = [socket.gethostname(), listener.address[1]]
        where = f"{info['address'][0]}:{info['address'][1]}"
    else:
        socket_path.unlink(missing_ok=True)
        listener = Listener(str(socket_path), family="AF_UNIX", backlog=LISTEN_BACKLOG)
        where = str(socket_path)
    service = SortService(
        settings, thread_limited_env(settings.threads_per_sort, os.environ), gpus=gpus, warm_up=warm_up_text
    )
    write_json_atomic(folder / INFO_NAME, info)
    print(f"sort service {os.getpid()} listening on {where} with {settings.slots} slot(s)", flush=True)
    closing = threading.Event()
    threading.Thread(target=_accept_forever, args=(listener, service, key, closing), daemon=True).start()
    if tcp:  # a Slurm allocation's service hosts no runs
        service.start_workers()
    else:
        threading.Thread(target=_warm_up, args=(service,), name="warm-up", daemon=True).start()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        while service.idle_for_s() < settings.idle_exit_s:
            time.sleep(IDLE_CHECK_S)
            service.runs.end_runs_whose_lease_ended()
            service.runs.stop_processes(idle_s=RETIRE_IDLE_S)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        # Socket (or published address) first: a client that connects from now on starts a new service.
        (folder / INFO_NAME if tcp else socket_path).unlink(missing_ok=True)
        closing.set()
        try:
            listener.close()
        except FileNotFoundError:
            pass  # the Unix socket's file, removed above
        service.close_workers()
        service.runs.stop_processes()  # exiting waits for them: they finish the runs they have
        print(f"sort service {os.getpid()} exiting", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sf_assets.engines.sort_service``: serve sorts and runs from a private folder until idle.

    Parameters
    ----------
    argv : list[str] or None
        ``--folder``, ``--slots``, ``--threads-per-sort``, ``--idle-exit-s``,
        and for a Slurm allocation's service ``--tcp`` and ``--gpus`` (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 when it exits idle, or at once when another service already serves the folder.
    """
    parser = argparse.ArgumentParser(prog="python -m sf_assets.engines.sort_service")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--slots", type=int, required=True)
    parser.add_argument("--threads-per-sort", type=int, required=True)
    parser.add_argument("--idle-exit-s", type=float, required=True)
    parser.add_argument("--tcp", action="store_true", help="listen on TCP (every interface), not the folder's socket")
    parser.add_argument("--gpus", default="", help="GPU ids (comma-separated) to share out between the slots")
    parser.add_argument("--warm-up", default=None, help="the sorters to warm the template with (JSON, engines/warm_up.py)")
    args = parser.parse_args(argv)
    # First: the template, the run host and the workers inherit what this process ignores.
    stop_signals.restore()
    settings = ServiceSettings(slots=args.slots, threads_per_sort=args.threads_per_sort, idle_exit_s=args.idle_exit_s)
    gpus = tuple(gpu for gpu in args.gpus.split(",") if gpu)
    return serve(Path(args.folder), settings, tcp=args.tcp, gpus=gpus, warm_up_text=args.warm_up)


if __name__ == "__main__":
    sys.exit(main())
