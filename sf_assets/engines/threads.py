"""How many threads a sort's numerical libraries may start.

OpenMP, BLAS, numba and numexpr each start one thread per core by default.
Several sorts at once on one machine (parallel local sorts, or several Slurm
steps in one allocation) then oversubscribe it: every sort runs slower and
burns CPU time waiting.  joblib's process pools, and so ``run_sorter_jobs``,
give each worker its share of the cores through these variables; sort workers
get the same.  A variable the user already set wins.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

THREAD_LIMIT_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


# numba's thread pool for parallel functions: the one layer that survives a fork.  The sort
# service clones a warm worker (its compiled sorters included) by forking it between sorts
# (:mod:`sf_assets.engines.worker`); numba's OpenMP layer kills a child forked after it ran
# ("fork() called from a process already using GNU OpenMP").  Every path sorts with the same
# layer, so where a sort ran does not change its numerics.
NUMBA_LAYER_VAR, FORK_SAFE_NUMBA_LAYER = "NUMBA_THREADING_LAYER", "workqueue"


def thread_limited_env(threads: int, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with every thread-pool variable it does not set fixed to ``threads`` (at least 1).

    numba's threading layer is set to :data:`FORK_SAFE_NUMBA_LAYER` unless
    ``base`` names one (a worker on another layer is then never cloned).

    Parameters
    ----------
    threads : int
        Threads per pool.
    base : Mapping[str, str]
        The environment to start from (its own settings win).

    Returns
    -------
    dict[str, str]
        A new environment.
    """
    env = dict(base)
    for var in THREAD_LIMIT_VARS:
        env.setdefault(var, str(max(1, threads)))
    env.setdefault(NUMBA_LAYER_VAR, FORK_SAFE_NUMBA_LAYER)
    return env


def slurm_step_threads(env: Mapping[str, str]) -> int:
    """A Slurm step's CPUs: ``--cpus-per-task`` when given, else the CPUs it may run on.

    Parameters
    ----------
    env : Mapping[str, str]
        The step's environment (``SLURM_CPUS_PER_TASK``).

    Returns
    -------
    int
        At least 1.
    """
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    return int(cpus) if cpus.isdigit() and int(cpus) > 0 else len(os.sched_getaffinity(0))
