"""The campaign's Slurm allocations: requested when it is planned and as sorts arrive, one slot per running sort.

Every process that sorts on Slurm (the command line's run slots, a run the
Dagster daemon launched for a backfill, the sensor or the schedule) places
its sort through the same *pool*: a folder under the work root,
``<work_root>/slurm-allocations/<key>``, where ``key`` stands for the
allocation shape (cluster, partition, shared nodes, slots per allocation,
GPUs, walltime, idle time).  Sorts with the same shape share allocations,
whoever launched them; nobody names allocation ids.

The pool holds no process of its own.  Its state is Slurm's queue plus small
files, changed only under an exclusive ``flock`` of ``<pool>/lock``:

* an allocation is an ``sbatch`` job named ``sf-assets-allocation-<key>``
  (``--nodes=1 --ntasks=N``, the partition, ``--exclusive`` unless shared
  nodes are accepted, ``--gpus-per-node``, ``--time``) whose batch script is
  :mod:`sf_assets.engines.slurm_holder`; ``squeue --name`` lists them;
* a *claim*, ``claims/<job id>-<slot>.json``, is one sort's slot in one
  allocation.  The process that made it touches it every few seconds while
  the sort waits or runs (:class:`Heartbeat`) and deletes it when the sort
  ends;
  A claim belongs to a *launcher*: the launch that wrapped its campaign in
  :func:`sf_assets.engines.slurm_campaign.campaign_allocations` (named to its
  run processes by :data:`OWNER_ENV`), else the process itself.  Once that
  launcher is gone (``kill -9``), its claims are no longer touched, even by
  run processes it leaves behind;
* ``closing/<job id>`` marks an allocation that is going away (its holder
  found it idle, or the launcher released it): no new sort is placed there;
* ``reserved/<job id>`` is touched by a launch whose planned sorts are still
  to come (:func:`anticipate`): it requested the allocation before they asked,
  and its holder counts the touch as a sort using it.

:func:`acquire_slot` takes the first free slot of a running allocation, the
ones whose sort service has already run the sort's sorter first (``warm/<job
id>.<sorter>``, see :mod:`sf_assets.engines.slurm_service`), else of a
pending one, else requests a new allocation while fewer than M are held,
else waits for a slot.  The holder in each allocation ends it once no claim
of it has been touched for the idle time: the queue has been empty that
long, or every process that placed a sort there is gone (``kill -9``
included), so no allocation outlives the processes that use it by more than
the idle time.  :func:`release_idle` ends the idle ones at once (a launch
that exits or is interrupted).
"""
from __future__ import annotations

import base64
import fcntl
import getpass
import hashlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sf_assets.core.atomic import write_text_atomic
from sf_assets.core.errors import EnvironmentSortFailure
from sf_assets.core.launcher_identity import LauncherIdentity, this_process
from sf_assets.engines.slurm_allocations import (
    cancel_jobs,
    node_options,
    require_slurm_clients,
)
from sf_assets.engines.slurm_service import SERVICES

if TYPE_CHECKING:
    from sf_assets.engines.slurm_settings import SlurmSettings

POOL_FOLDER = "slurm-allocations"
# The launcher whose claims these are (``HOST:PID:START``), set by a launch for its run processes.
OWNER_ENV = "SF_ASSETS_SLURM_OWNER"
JOB_NAME_PREFIX = "sf-assets-allocation-"
CLAIMS, CLOSING, LOCK, RESERVED, WARM = "claims", "closing", "lock", "reserved", "warm"
# Forget an ended allocation's service folder only this long after it last changed.
SERVICE_FOLDER_KEEP_S = 60.0
# squeue's latest answer about the pool's allocations, shared by its processes.
QUEUE_CACHE = "squeue.json"
# The walltime of an allocation, beyond one sort's -T, when no walltime is set.
ALLOCATION_TIME_MARGIN_MIN = 10
# A sort is not placed in an allocation with less time left than its timeout plus this.
TIME_LEFT_MARGIN_S = 60.0
# How often a waiting sort looks for a free slot.
WAIT_POLL_S = 0.5
CLIENT_TIMEOUT_S = 60.0
# Allocation states in which it can run (or will run) sorts.
LIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING")


def encode_warm_up(warm_up: dict) -> str:
    """``warm_up`` as one shell-safe word for the holder's command line (base64 of its JSON).

    Parameters
    ----------
    warm_up : dict
        ``{"sorters": [...], "jit_cache_dir": ...}``.

    Returns
    -------
    str
        The word; :func:`decode_warm_up` reads it back.
    """
    return base64.urlsafe_b64encode(json.dumps(warm_up, sort_keys=True).encode()).decode()


def decode_warm_up(word: str) -> dict:
    """What :func:`encode_warm_up` wrote.

    Parameters
    ----------
    word : str
        The holder's argument.

    Returns
    -------
    dict
        The warm-up request.
    """
    return json.loads(base64.urlsafe_b64decode(word.encode()))


def allocation_time_min(slurm: SlurmSettings, timeout_min: float) -> int | None:
    """An allocation's ``--time``: the setting, else one sort's timeout plus a margin, else none.

    An allocation serves many sorts one after the other, so its walltime is an
    upper bound, not a budget: the holder ends it when it is idle, and a sort
    is only placed where its whole timeout still fits.

    Parameters
    ----------
    slurm : SlurmSettings
        ``allocation_time_min``, used when above 0.
    timeout_min : float
        One sort's timeout in minutes (0 or less: none).

    Returns
    -------
    int or None
        Whole minutes, rounded up (the timeout plus :data:`ALLOCATION_TIME_MARGIN_MIN`); None: the
        partition's default.
    """
    if slurm.allocation_time_min and slurm.allocation_time_min > 0:
        return int(math.ceil(slurm.allocation_time_min))
    if timeout_min and timeout_min > 0:
        return int(math.ceil(timeout_min)) + ALLOCATION_TIME_MARGIN_MIN
    return None


def claim_owner() -> LauncherIdentity:
    """The launcher this process places sorts for: :data:`OWNER_ENV`, else this process.

    Returns
    -------
    LauncherIdentity
        The launch that set :data:`OWNER_ENV` for its run processes, or this process when it is unset or
        unreadable.
    """
    return LauncherIdentity.parse(os.environ.get(OWNER_ENV, "")) or this_process()


def heartbeat_interval_s(idle_release_s: float) -> float:
    """How often a claim is touched: often enough that a live one never looks idle to a holder.

    Parameters
    ----------
    idle_release_s : float
        The holders' idle time in seconds.

    Returns
    -------
    float
        A quarter of it, between 0.2 and 5 seconds.
    """
    return max(0.2, min(5.0, idle_release_s / 4.0))


@dataclass(frozen=True)
class Pool:
    """One allocation shape's pool folder and the ``sbatch`` line of its allocations."""

    root: Path
    key: str
    slurm: SlurmSettings
    time_limit_min: int | None
    env: Mapping[str, str]

    @classmethod
    def for_settings(
        cls, work_root: str | Path, slurm: SlurmSettings, timeout_min: float, env: Mapping[str, str]
    ) -> "Pool":
        """The pool for these settings: one per allocation shape, shared by every launcher that asks for it.

        Parameters
        ----------
        work_root : str or Path
            The sort work folder (the pool lives under it).
        slurm : SlurmSettings
            The allocation shape.
        timeout_min : float
            The sorts' timeout, which sets the allocations' walltime when it is not given.
        env : Mapping[str, str]
            The Slurm clients' environment (its ``SLURM_CONF`` names the cluster).

        Returns
        -------
        Pool
            The pool.
        """
        time_limit = allocation_time_min(slurm, timeout_min)
        root = Path(work_root).resolve() / POOL_FOLDER
        shape = {
            "work_root": str(root.parent),
            "cluster": env.get("SLURM_CONF", ""),
            "user": getpass.getuser(),
            "partition": slurm.partition or "",
            "shared": bool(slurm.accept_shared_nodes),
            "slots": int(slurm.jobs_per_allocation),
            "allocations": int(slurm.max_simultaneous_allocations),
            "gpus": slurm.gpus_per_node or 0,
            "time_min": time_limit,
            "idle_s": float(slurm.idle_release_s),
        }
        key = hashlib.sha1(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
        root = root / key
        for sub in (CLAIMS, CLOSING, RESERVED, WARM):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # Atomic: a holder starting now reads it (its slots).
        tmp = root / f".shape.json.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(shape, indent=2, sort_keys=True))
        os.replace(tmp, root / "shape.json")
        return cls(root=root, key=key, slurm=slurm, time_limit_min=time_limit, env=env)

    @property
    def job_name(self) -> str:
        """The Slurm job name of this pool's allocations (``squeue --name`` finds them)."""
        return JOB_NAME_PREFIX + self.key

    @property
    def slots(self) -> int:
        """Sorts at once in one allocation."""
        return max(1, int(self.slurm.jobs_per_allocation))

    def sbatch_command(self, warm_up: dict | None = None) -> list[str]:
        """The ``sbatch`` that starts one allocation, its holder as the batch script.

        Parameters
        ----------
        warm_up : dict or None
            ``{"sorters": [...], "jit_cache_dir": ...}``: what its service's template warms
            (:mod:`sf_assets.engines.warm_up`), given to the holder (:func:`encode_warm_up`).

        Returns
        -------
        list[str]
            ``sbatch --parsable`` with the pool's job name, one node and one task per slot, the node options,
            the walltime when set, and ``--wrap`` running :mod:`sf_assets.engines.slurm_holder`.
        """
        slurm = self.slurm
        command = [
            "sbatch",
            "--parsable",
            f"--job-name={self.job_name}",
            "--nodes=1",
            f"--ntasks={self.slots}",
            "--no-requeue",
            f"--output={self.root / 'holder-%j.out'}",
            f"--chdir={self.root}",
            *node_options(slurm),
        ]
        if self.time_limit_min:
            command.append(f"--time={self.time_limit_min}")
        holder = [sys.executable, "-m", "sf_assets.engines.slurm_holder", str(self.root), f"{slurm.idle_release_s:g}"]
        if warm_up and warm_up.get("sorters"):
            holder.append(encode_warm_up(warm_up))
        return command + ["--wrap", "exec " + " ".join(holder)]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the pool's lock: placement, requests and closing never interleave, across processes and hosts.

        Yields
        ------
        None
            While the exclusive ``flock`` of ``<pool>/lock`` is held.
        """
        with open(self.root / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def allocations(self, max_age_s: float = 0.0) -> dict[str, tuple[str, float | None]]:
        """This pool's allocations that Slurm lists: job id -> (state, seconds left or None).

        Parameters
        ----------
        max_age_s : float
            An answer that old or younger, from any process of the pool, will do
            (:data:`QUEUE_CACHE`): sorts waiting for a slot then ask ``squeue``
            about once per ``max_age_s`` in all, not once each.  0: ask now.

        Returns
        -------
        dict[str, tuple[str, float or None]]
            Job id -> (Slurm state, walltime left in seconds or None for no limit).

        Raises
        ------
        EnvironmentSortFailure
            ``squeue`` is not on PATH or failed (its message is quoted).
        subprocess.TimeoutExpired
            ``squeue`` did not answer within :data:`CLIENT_TIMEOUT_S`.
        """
        cache = self.root / QUEUE_CACHE
        if max_age_s > 0:
            try:
                if time.time() - cache.stat().st_mtime <= max_age_s:
                    return {job: (state, left) for job, (state, left) in json.loads(cache.read_text()).items()}
            except (FileNotFoundError, ValueError):
                pass
        proc = _client(
            ["squeue", "--noheader", "--format=%i %T %L", f"--name={self.job_name}", f"--user={getpass.getuser()}"],
            self.env,
        )
        if proc.returncode != 0:
            raise EnvironmentSortFailure(f"`squeue --name={self.job_name}` failed: {proc.stderr.strip()}")
        listed = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3:
                listed[parts[0]] = (parts[1], parse_time_left(parts[2]))
        # Atomic, and safe for threads of one process placing sorts at once.
        write_text_atomic(cache, json.dumps(listed))
        return listed

    def is_closing(self, job_id: str) -> bool:
        """Is this allocation ending (its holder saw it idle)? No new sort may claim it.

        Parameters
        ----------
        job_id : str
            The allocation.

        Returns
        -------
        bool
            True once marked by :meth:`mark_closing`.
        """
        return (self.root / CLOSING / job_id).exists()

    def mark_closing(self, job_id: str) -> None:
        """Mark the allocation as ending, so that no new sort claims it.

        Parameters
        ----------
        job_id : str
            The allocation.
        """
        (self.root / CLOSING / job_id).write_text(str(time.time()))

    def mark_warm(self, job_id: str, sorter: str) -> None:
        """The service of ``job_id`` has a worker that ran ``sorter``: later sorts of it go there first.

        Parameters
        ----------
        job_id : str
            The allocation.
        sorter : str
            The sorter's name (as :attr:`SortJob.si_sorter_name`).
        """
        (self.root / WARM / f"{job_id}.{sorter}").touch()

    def warm_for(self, sorter: str | None) -> set[str]:
        """The allocations whose service has run ``sorter``, where its workers need no compiling.

        Parameters
        ----------
        sorter : str or None
            The sorter's name; None or "": none.

        Returns
        -------
        set[str]
            Their job ids.
        """
        if not sorter:
            return set()
        return {path.name.split(".", 1)[0] for path in (self.root / WARM).glob(f"*.{sorter}")}

    def claims(self) -> dict[str, list[Path]]:
        """Claims by allocation job id, to count each allocation's busy slots.

        Returns
        -------
        dict[str, list[Path]]
            Job id -> its claim files; an allocation without claims is absent.
        """
        by_job: dict[str, list[Path]] = {}
        for path in (self.root / CLAIMS).glob("*.json"):
            by_job.setdefault(path.stem.split("-", 1)[0], []).append(path)
        return by_job

    def forget_ended(self, listed: Mapping[str, tuple[str, float | None]]) -> None:
        """Drop claims and marks of allocations Slurm no longer lists, and dead claims.

        A claim is dead once untouched for longer than the idle time plus two
        heartbeats.  An ended allocation's service folder is removed only
        :data:`SERVICE_FOLDER_KEEP_S` after it last changed, so its log can still
        be quoted.

        Parameters
        ----------
        listed : Mapping[str, tuple[str, float or None]]
            Slurm's answer, as :meth:`allocations` returns it.
        """
        stale_after = self.slurm.idle_release_s + 2 * heartbeat_interval_s(self.slurm.idle_release_s)
        now = time.time()
        for job_id, paths in self.claims().items():
            for path in paths:
                try:
                    dead = job_id not in listed or now - path.stat().st_mtime > stale_after
                    if dead:
                        path.unlink()
                except FileNotFoundError:
                    pass
        for mark in (self.root / CLOSING).iterdir():
            if mark.name not in listed:
                mark.unlink(missing_ok=True)
        for mark in (self.root / WARM).iterdir():
            if mark.name.split(".", 1)[0] not in listed:
                mark.unlink(missing_ok=True)
        for mark in (self.root / RESERVED).iterdir():
            if mark.name not in listed:
                mark.unlink(missing_ok=True)
        for folder in (self.root / SERVICES).glob("*"):
            try:
                if folder.name not in listed and now - folder.stat().st_mtime > SERVICE_FOLDER_KEEP_S:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:
                pass

    def request_allocation(self, warm_up: dict | None = None) -> str:
        """``sbatch`` one allocation of this pool's shape.

        Parameters
        ----------
        warm_up : dict or None
            What its service's template warms (:meth:`sbatch_command`).

        Returns
        -------
        str
            The new allocation's job id.

        Raises
        ------
        EnvironmentSortFailure
            ``sbatch`` is not on PATH, or Slurm refused (its exit status and message are quoted).
        """
        command = self.sbatch_command(warm_up)
        proc = _client(command, self.env)
        job_id = proc.stdout.strip().split(";", 1)[0]
        if proc.returncode != 0 or not job_id.isdigit():
            raise EnvironmentSortFailure(
                f"`{' '.join(command)}` was refused by Slurm (exit {proc.returncode}): {proc.stderr.strip()}"
            )
        return job_id


@dataclass
class Slot:
    """One sort's place in one allocation: held (and its claim touched) until released."""

    pool: Pool
    job_id: str
    index: int
    claim: Path

    @property
    def name(self) -> str:
        """``JOB-INDEX``: which slot of which allocation."""
        return f"{self.job_id}-{self.index}"

    def release(self) -> None:
        """Give the slot back: stop touching its claim and remove it."""
        HEARTBEAT.stop(self.claim)
        self.claim.unlink(missing_ok=True)

    def state(self, max_age_s: float = 0.0) -> str | None:
        """The allocation's Slurm state, or None once Slurm no longer lists it.

        Parameters
        ----------
        max_age_s : float
            How old a cached ``squeue`` answer may be (see :meth:`Pool.allocations`).

        Returns
        -------
        str or None
            ``PENDING``, ``RUNNING``, ... ; None when not listed.

        Raises
        ------
        EnvironmentSortFailure
            ``squeue`` is not on PATH or failed.
        """
        listed = self.pool.allocations(max_age_s)
        return listed[self.job_id][0] if self.job_id in listed else None

    def wait_until_running(self) -> bool:
        """Block until the allocation runs (True) or has gone without running (False).

        Returns
        -------
        bool
            True once it runs; False once it is no longer pending or configuring (cancelled, refused).

        Raises
        ------
        EnvironmentSortFailure
            ``squeue`` is not on PATH or failed.
        """
        while True:
            state = self.state(max_age_s=WAIT_POLL_S)
            if state == "RUNNING":
                return True
            if state not in LIVE_STATES:
                return False
            time.sleep(WAIT_POLL_S)


def acquire_slot(
    pool: Pool, label: str, needed_s: float | None = None, sorter: str | None = None, warm_up: dict | None = None
) -> Slot:
    """Claim a free slot for one sort, requesting an allocation if none is free; waits if M are busy.

    Parameters
    ----------
    pool : Pool
        the pool of this allocation shape.
    label : str
        the sort's label, written into the claim (for people reading the folder).
    needed_s : float | None
        the sort's timeout; allocations with less walltime left are passed over.
    sorter : str or None
        the sort's sorter; a running allocation whose service has run it is preferred.
    warm_up : dict or None
        what the service of an allocation this sort requests warms its template with (its own sorter).

    Returns
    -------
    Slot
        The slot, once its allocation runs.  An allocation that goes away
        while pending (cancelled) makes it look again.

    Raises
    ------
    EnvironmentSortFailure
        When Slurm refuses to create an allocation, or the launcher is gone
        (a run process left behind by ``kill -9`` requests nothing).
    """
    require_slurm_clients("sbatch", "squeue", "scancel", env=pool.env)
    while True:
        owner = claim_owner()
        if owner.is_gone():
            raise EnvironmentSortFailure(f"the launch {owner} that this sort ({label}) was for has ended")
        slot = _try_claim(pool, label, needed_s, sorter, warm_up)
        if slot is None:
            time.sleep(WAIT_POLL_S)
            continue
        try:
            if slot.wait_until_running():
                return slot
        except BaseException:
            slot.release()
            raise
        slot.release()


def _try_claim(
    pool: Pool, label: str, needed_s: float | None, sorter: str | None = None, warm_up: dict | None = None
) -> Slot | None:
    with pool.locked():
        listed = pool.allocations(max_age_s=WAIT_POLL_S)
        pool.forget_ended(listed)
        claims = pool.claims()
        warm = pool.warm_for(sorter)
        candidates = []
        for job_id, (state, left_s) in listed.items():
            if state not in LIVE_STATES or pool.is_closing(job_id):
                continue
            if state == "RUNNING" and needed_s and left_s is not None and left_s < needed_s + TIME_LEFT_MARGIN_S:
                continue  # too little walltime left: it drains and ends when idle
            taken = len(claims.get(job_id, []))
            if taken < pool.slots:
                # Running first, then warm for this sorter, then the busiest (fills one
                # allocation before the next).
                candidates.append((state != "RUNNING", job_id not in warm, -taken, int(job_id), job_id))
        if candidates:
            job_id = min(candidates)[-1]
        elif len(listed) < max(1, int(pool.slurm.max_simultaneous_allocations)):
            job_id = pool.request_allocation(warm_up)
            pool.allocations()  # the answer others reuse must list it
        else:
            return None
        used = {int(p.stem.split("-", 1)[1]) for p in claims.get(job_id, [])}
        index = min(set(range(pool.slots)) - used)
        claim = pool.root / CLAIMS / f"{job_id}-{index}.json"
        owner = claim_owner()
        about = {"pid": os.getpid(), "host": socket.gethostname(), "owner": str(owner), "label": label}
        claim.write_text(json.dumps(about))
        HEARTBEAT.start(claim, heartbeat_interval_s(pool.slurm.idle_release_s), owner)
        return Slot(pool=pool, job_id=job_id, index=index, claim=claim)


def anticipate(pool: Pool, sorts: int, warm_up: dict | None = None, needed_s: float | None = None) -> list[str]:
    """Request the allocations ``sorts`` sorts about to be launched will need, and keep them until they come.

    A campaign is planned before its runs start, and its sorts often wait for
    their recordings first (materialized, downloaded): requested now, the
    allocations pass Slurm's queue and start their services (the template's
    imports, every slot's worker) meanwhile, instead of after the first sort
    asked.  Requests only while the free slots of the pool's live allocations
    (pending or running, not closing) are fewer than ``sorts``, and never more
    than M in all.

    The live allocations with a free slot that the sorts to come need (running
    ones first, as a sort would take them) are also *reserved*: each one's
    ``reserved/<job id>`` file is touched, which its holder counts as a sort
    using it.  A launch calls this again while its sorts are still to come
    (more often than the idle time), so the allocations do not end before
    they arrive; once it stops (its sorts all launched, or the launch killed),
    they end one idle time after their last sort, as any other.

    Parameters
    ----------
    pool : Pool
        The pool of the sorts' allocation shape.
    sorts : int
        How many sorts are still to come.
    warm_up : dict or None
        What the services of the allocations requested now warm their templates with: the sorters to come.
    needed_s : float or None
        The sorts' timeout: a running allocation with less walltime left takes none of them
        (:func:`acquire_slot` passes it over), so it is neither counted nor reserved.

    Returns
    -------
    list[str]
        The job ids requested now (none when the pool has room already).

    Raises
    ------
    EnvironmentSortFailure
        ``sbatch`` or ``squeue`` is missing or refused (as a sort would say).
    """
    if sorts <= 0:
        return []
    require_slurm_clients("sbatch", "squeue", "scancel", env=pool.env)
    requested: list[str] = []
    with pool.locked():
        listed = pool.allocations()
        pool.forget_ended(listed)
        claims = pool.claims()
        # What a sort could claim (as _try_claim decides): running ones first, then pending.
        room = sorted(
            (state != "RUNNING", -(pool.slots - len(claims.get(job_id, []))), job_id)
            for job_id, (state, left_s) in listed.items()
            if state in LIVE_STATES
            and not pool.is_closing(job_id)
            and not (state == "RUNNING" and needed_s and left_s is not None and left_s < needed_s + TIME_LEFT_MARGIN_S)
            and len(claims.get(job_id, [])) < pool.slots
        )
        reserved, free = [], 0
        for _pending, minus_free, job_id in room:
            if free >= sorts:
                break  # enough: the others end when idle, as without a launch
            reserved.append(job_id)
            free -= minus_free
        allowed = max(1, int(pool.slurm.max_simultaneous_allocations))
        try:
            while free < sorts and len(listed) + len(requested) < allowed:
                requested.append(pool.request_allocation(warm_up))
                free += pool.slots
        finally:
            for job_id in reserved + requested:
                (pool.root / RESERVED / job_id).touch()
            if requested:
                pool.allocations()  # the answer others reuse must list them
    return requested


def release_idle(pool: Pool) -> list[str]:
    """End this pool's allocations that no sort holds now.

    What a launch does on exit and on interrupt (after its sorts were stopped),
    rather than leaving them to their holders' idle time.  They are marked
    closing first, under the pool's lock, so no sort is placed in them meanwhile.

    Parameters
    ----------
    pool : Pool
        The pool.

    Returns
    -------
    list[str]
        The job ids cancelled.

    Raises
    ------
    EnvironmentSortFailure
        ``squeue`` or ``scancel`` is not on PATH, or ``squeue`` failed.
    """
    with pool.locked():
        listed = pool.allocations()
        pool.forget_ended(listed)
        claims = pool.claims()
        idle = [job_id for job_id in listed if not claims.get(job_id)]
        for job_id in idle:
            pool.mark_closing(job_id)
        cancel_jobs(idle, pool.env)
    return idle


def parse_time_left(text: str) -> float | None:
    """squeue's ``%L`` (``[days-]hours:minutes:seconds``, ``minutes:seconds``) in seconds: does a timeout fit?

    Parameters
    ----------
    text : str
        The field as squeue prints it.

    Returns
    -------
    float or None
        Seconds left; None for no limit (``UNLIMITED``, ``NOT_SET``, ``INVALID``).
    """
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not match:
        return None  # UNLIMITED, NOT_SET, INVALID
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


class Heartbeat:
    """One thread per process that touches this process's claims while their sorts wait or run.

    A claim whose launcher is gone is left alone: its allocation then ends one
    idle time later, whatever this process still does.
    """

    def __init__(self) -> None:
        self._claims: dict[Path, tuple[float, LauncherIdentity]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self, claim: Path, interval_s: float, owner: LauncherIdentity) -> None:
        """Touch ``claim`` every ``interval_s`` while its owner lives.

        Parameters
        ----------
        claim : Path
            The claim file.
        interval_s : float
            Seconds between touches (well under the holder's idle time).
        owner : LauncherIdentity
            The launcher whose sort holds the claim; once it is gone, the claim is left to age.
        """
        with self._lock:
            self._claims[claim] = (interval_s, owner)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="sf-assets-slurm-heartbeat", daemon=True)
                self._thread.start()

    def stop(self, claim: Path) -> None:
        """Stop touching ``claim``.

        Parameters
        ----------
        claim : Path
            The claim file.
        """
        with self._lock:
            self._claims.pop(claim, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                claims = dict(self._claims)
            for claim, (_, owner) in claims.items():
                if owner.is_gone():
                    continue
                try:
                    os.utime(claim)
                except FileNotFoundError:
                    pass  # released meanwhile, or dropped by forget_ended
            time.sleep(min((interval for interval, _ in claims.values()), default=1.0))


HEARTBEAT = Heartbeat()


def _client(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=dict(env), timeout=CLIENT_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise EnvironmentSortFailure(f"the Slurm engine needs `{argv[0]}` on PATH; it was not found") from exc
