"""Choose how a sort runs: locally, in a container, or on a Slurm cluster.

All three start the same worker (:mod:`sf_assets.engines.worker`) under the
same supervisor, so records look the same whatever ran them.  The engine only
decides the worker's command line and the container image, and whether a
local sort may reuse a warm worker (:mod:`sf_assets.engines.warm_worker`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sf_assets.core.folder_names import attempt_name, pair_folder
from sf_assets.core.sorter_catalog import SorterEntry
from sf_assets.engines.job import SORT_ENGINE_VERSION, CanaryReport, SortJob, SortReport
from sf_assets.engines.threads import share_of_cores, thread_limited_env
from sf_assets.engines.supervisor import prepare_work_dir, supervise, watch, worker_command


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    accept_shared_nodes: bool = False
    jobs_per_allocation: int = 6
    max_simultaneous_allocations: int = 5
    gpus_per_node: int | None = None
    # salloc job id(s), comma-separated, from slurm_allocations(); None: each sort is its own job.
    allocation_id: str | None = None


@dataclass(frozen=True)
class EngineSettings:
    work_root: str
    timeout_min: float = 0.0
    canary_first_n_s: float | None = 5.0
    use_container: bool = False
    container_engine: str = "docker"
    slurm: SlurmSettings | None = None
    # Local sorts: keep worker processes warm between sorts (see warm_worker); False: one per sort.
    reuse_workers: bool = True
    # How many local sorts share this machine's cores at once: each sort's thread pools get
    # cores // parallel_sorts threads (see local_worker_env).
    parallel_sorts: int = 2

    @property
    def timeout_s(self) -> float | None:
        return self.timeout_min * 60.0 if self.timeout_min and self.timeout_min > 0 else None

    @property
    def kind(self) -> str:
        return "slurm" if self.slurm else ("container" if self.use_container else "local")


def container_image_for(entry: SorterEntry, settings: EngineSettings) -> str | None:
    """The image a sorter runs in: always for container-only sorters, else when asked."""
    if settings.use_container or not entry.runs_locally:
        return entry.container_image
    return None


def cache_key(entry: SorterEntry, params: dict, recording_uri: str, image: str | None) -> str:
    """Identity of a sort's inputs: same key, same sort (the job cache).

    The recording URI is content-addressed (its sha1), so it stands for the
    recording's data; the engine version stands for the code that sorts.
    """
    payload = {
        "sorter": entry.si_name,
        "params": params,
        "recording": recording_uri.split("?", 1)[0],
        "engine_version": SORT_ENGINE_VERSION,
        "image": image,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def canary_timeout_s(canary_first_n_s: float | None) -> float | None:
    """How long the canary may take, start-up included, before it counts as hung.

    Four times the window, at least two minutes (sorter imports, numba
    compilation, a container's start) and at most five.
    """
    if not canary_first_n_s or canary_first_n_s != canary_first_n_s or canary_first_n_s <= 0:
        return None
    return min(300.0, max(120.0, 4.0 * canary_first_n_s))


def local_worker_env(parallel_sorts: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a local sort worker: its share of the cores (see threads), no more.

    Measured here (``make bench``, 8 sorts two at a time on two cores): with
    a thread per core each, mountainsort5 and spykingcircus2 spent 110 s in
    ``run_sorter`` in all; with one thread each, 83 s.
    """
    return thread_limited_env(share_of_cores(parallel_sorts), os.environ if base is None else base)


def warm_worker_env(settings: EngineSettings) -> dict[str, str] | None:
    """The environment of the warm workers local sorts use under ``settings``; None: they use none."""
    if not settings.reuse_workers or settings.slurm is not None or settings.use_container:
        return None
    return local_worker_env(settings.parallel_sorts)


def work_dir_for(
    settings: EngineSettings, sorter_name: str, study_name: str, recording_name: str, run_id: str, attempt: int = 0
) -> Path:
    """The work folder of one sort attempt: the pair's folder, then the run and retry (see folder_names)."""
    return pair_folder(settings.work_root, sorter_name, study_name, recording_name) / attempt_name(run_id, attempt)


def run_sort(job: SortJob, settings: EngineSettings) -> Iterator[CanaryReport | SortReport]:
    """Prepare the work folder, start the worker on the chosen engine, supervise it."""
    work_dir = prepare_work_dir(job)
    command = worker_command(sys.executable, work_dir)
    if job.container_image:
        from sf_assets.engines.container import require_container_runtime

        require_container_runtime(job.container_engine)
    if settings.slurm is not None:
        from sf_assets.engines.slurm import SlurmLaunch

        launch = SlurmLaunch.for_job(command, settings.slurm, job, settings.timeout_s)
        yield from supervise(
            job,
            launch.command,
            timeout_s=settings.timeout_s,
            env=launch.env,
            stop=launch.stop,
            worker_outcome=launch.worker_outcome,
        )
        return
    # Only here: on Slurm the time a step waits for its allocation would count.
    hung_after_s = canary_timeout_s(job.canary_first_n_s)
    warm_env = warm_worker_env(settings)
    if warm_env is not None and not job.container_image:  # a container-only sorter gets a fresh worker
        from sf_assets.engines.warm_worker import start_warm_job

        start = (time.time(), time.monotonic())
        run = start_warm_job(work_dir, warm_env)
        yield from watch(job, run, timeout_s=settings.timeout_s, canary_timeout_s=hung_after_s, start=start)
        return
    env = local_worker_env(settings.parallel_sorts)
    yield from supervise(job, command, timeout_s=settings.timeout_s, canary_timeout_s=hung_after_s, env=env)
