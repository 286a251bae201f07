"""The batch script of every pool allocation: runs its sort service, ends it when idle.

Run by ``sbatch`` (see :meth:`sf_assets.engines.slurm_pool.Pool.sbatch_command`)
as ``python -m sf_assets.engines.slurm_holder POOL_DIR IDLE_S``.  It starts the
allocation's sort service (:mod:`sf_assets.engines.slurm_service`: one warm
slot per sort the allocation runs at once), which the sorts placed here are
sent to, and watches their claims in ``POOL_DIR/claims`` (and its reservation,
``POOL_DIR/reserved/<job id>``, touched by a launch whose sorts are to come).  A claim counts as alive while its modification time
keeps changing: the process that placed the sort touches it every few
seconds.  Once no claim of this allocation has changed for ``IDLE_S``
seconds (measured with this node's own clock, so clock skew between the
node and the submit host does not matter), the holder marks the allocation
closing under the pool's lock, so no new sort is placed in it, and exits:
Slurm then ends the job and whatever step is still in it.

This is what keeps allocations from outliving sf-assets: a launcher killed
with ``kill -9`` stops touching its claims, and its allocations end one idle
time later, with no process on the submit host left to clean up.  A service
that dies ends its allocation the same way (marked closing at once): its
sorts fail as a lost allocation does, and run again in another.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sf_assets.engines.slurm_pool import CLAIMS, CLOSING, LOCK, RESERVED, decode_warm_up
from sf_assets.engines.slurm_service import (
    allocation_cpus,
    allocation_gpus,
    start_service,
)

SERVICE_STOP_GRACE_S = 10.0


def claim_times(pool_dir: Path, job_id: str) -> dict[str, float]:
    """Modification time of each claim of this allocation, and of its reservation: a change means a sort uses it.

    A reservation (``reserved/<job id>``, see :func:`~sf_assets.engines.slurm_pool.anticipate`)
    is touched by a launch whose sorts are still to come.

    Parameters
    ----------
    pool_dir : Path
        The pool's folder.
    job_id : str
        The allocation.

    Returns
    -------
    dict[str, float]
        Claim file name -> modification time (epoch seconds); a claim removed meanwhile is left out.
    """
    times = {}
    for path in [pool_dir / RESERVED / job_id, *(pool_dir / CLAIMS).glob(f"{job_id}-*.json")]:
        try:
            times[path.name] = path.stat().st_mtime
        except FileNotFoundError:
            pass
    return times


class IdleClock:
    """When a claim of this allocation last appeared or was touched, on this node's clock."""

    def __init__(self) -> None:
        self.last_busy = time.monotonic()
        self._seen: dict[str, float] = {}

    def look(self, times: dict[str, float]) -> None:
        """Note the claims' modification times; any change means a sort used the allocation.

        Parameters
        ----------
        times : dict[str, float]
            Claim file name -> modification time.
        """
        if any(self._seen.get(name) != mtime for name, mtime in times.items()):
            self.last_busy = time.monotonic()
        self._seen = times

    def idle_for(self) -> float:
        """How long no sort has used the allocation.

        Returns
        -------
        float
            Seconds since a claim last changed.
        """
        return time.monotonic() - self.last_busy


def hold(pool_dir: Path, job_id: str, idle_s: float, service_alive: Callable[[], bool] = lambda: True) -> str:
    """Return once the allocation has been idle for ``idle_s`` (or its service died) and is marked closing.

    The mark is made under the pool's lock after looking at the claims once
    more, so a sort placed meanwhile keeps the allocation.

    Parameters
    ----------
    pool_dir : Path
        The pool's folder.
    job_id : str
        The allocation.
    idle_s : float
        Seconds without a claim changing, on this node's clock, after which the allocation ends.
    service_alive : Callable[[], bool]
        Does the allocation's sort service still run?  False ends the allocation at once.

    Returns
    -------
    str
        Why: ``"idle"`` or ``"service ended"``.
    """
    import fcntl

    clock = IdleClock()
    poll_s = max(0.1, min(1.0, idle_s / 5.0))
    while True:
        clock.look(claim_times(pool_dir, job_id))
        alive = service_alive()
        if clock.idle_for() >= idle_s or not alive:
            with open(pool_dir / LOCK, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                clock.look(claim_times(pool_dir, job_id))  # a sort placed meanwhile keeps it
                if clock.idle_for() >= idle_s or not alive:
                    (pool_dir / CLOSING / job_id).write_text(str(time.time()))
                    return "idle" if alive else "service ended"
        time.sleep(poll_s)


def stop_service(service: subprocess.Popen) -> None:
    """SIGTERM the service (it stops its workers), SIGKILL it after a grace period.

    Parameters
    ----------
    service : subprocess.Popen
        The service's process; nothing is sent if it has ended.  It is given
        :data:`SERVICE_STOP_GRACE_S` seconds.
    """
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(SERVICE_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


def main(argv: list[str] | None = None) -> int:
    """``python -m sf_assets.engines.slurm_holder POOL_DIR IDLE_S [WARM_UP]``: the batch script of one allocation.

    ``WARM_UP`` (:func:`~sf_assets.engines.slurm_pool.encode_warm_up`) names
    the sorters the allocation's service warms its template with.

    Parameters
    ----------
    argv : list[str] or None
        The arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 once the allocation is marked closing (idle for ``IDLE_S``, or its service ended); 2 for bad
        usage.
    """
    argv = sys.argv[1:] if argv is None else argv
    job_id = os.environ.get("SLURM_JOB_ID")
    if len(argv) not in (2, 3) or not job_id:
        print(
            "usage (as an sbatch script): python -m sf_assets.engines.slurm_holder POOL_DIR IDLE_S [WARM_UP]",
            file=sys.stderr,
        )
        return 2
    pool_dir, idle_s = Path(argv[0]), float(argv[1])
    request = decode_warm_up(argv[2]) if len(argv) == 3 else None
    slots = int(json.loads((pool_dir / "shape.json").read_text())["slots"])
    cpus, gpus = allocation_cpus(os.environ), allocation_gpus(os.environ)
    service = start_service(pool_dir, job_id, slots, cpus, gpus, warm_up_request=request)
    print(
        f"holding allocation {job_id} for {pool_dir}: sort service {service.pid} with {slots} slot(s) "
        f"on {cpus} CPU(s), GPUs [{','.join(gpus)}]; ends after {idle_s:g} s without a sort",
        flush=True,
    )
    try:
        why = hold(pool_dir, job_id, idle_s, service_alive=lambda: service.poll() is None)
    finally:
        stop_service(service)
    print(f"allocation {job_id}: {why}, ending it", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
