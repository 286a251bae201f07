"""Choose how a sort runs: locally, in a container, or on a Slurm cluster.

All three start the same worker (:mod:`sf_assets.engines.worker`) under the
same supervisor, so records look the same whatever ran them.  The engine only
decides the worker's command line and the container image, and whether a
local sort goes to the host's sort service and its warm workers
(:mod:`sf_assets.engines.sort_service`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sf_assets.core.folder_names import attempt_name, pair_folder
from sf_assets.core.sorter_catalog import SorterEntry
from sf_assets.engines.job import SORT_ENGINE_VERSION, CanaryReport, SortJob, SortReport
from sf_assets.engines.service_address import ServiceSettings
from sf_assets.engines.slurm_settings import SlurmSettings
from sf_assets.engines.threads import thread_limited_env
from sf_assets.engines.supervisor import prepare_work_dir, supervise, worker_command

JIT_CACHE_FOLDER = "numba-cache"
"""Under the work root, which Slurm nodes share; no sorter's folder has this name (catalog names are capitalized)."""


@dataclass(frozen=True)
class EngineSettings:
    """How sorts run; the ``sorting_engine`` resource builds it from its config.

    Attributes
    ----------
    reuse_workers : bool
        local sorts go to the host's sort service and its warm workers (see
        :mod:`sf_assets.engines.sort_service`); False: a fresh worker process per sort.
    threads_per_sort : int
        OpenMP/BLAS/numba threads of each local sort, fixed and recorded, so a score does not depend on how
        many sorts ran beside it.
    service_slots : int
        local sorts at once on this host (0: its cores divided by ``threads_per_sort``).
    service_idle_exit_s : float
        the sort service exits after this long unused.
    service_dir : str
        where the service's private folder is made ("" : /tmp/sf-assets-UID).
    job_cache : str
        the job cache's name; sortings made under another name are not hits.
    sorts_at_once : int
        at most this many sorts of one launch (a command line's, a backfill) at once on the host's sort
        service (0: only its slots limit them); the command line's ``-w``.
    jit_cache : bool
        workers keep the sorters' numba-compiled code in :data:`JIT_CACHE_FOLDER` under ``work_root``
        and load it instead of compiling again (see :mod:`sf_assets.engines.jit_cache`).
    """

    work_root: str
    timeout_min: float = 0.0
    canary_first_n_s: float | None = 5.0
    use_container: bool = False
    container_engine: str = "docker"
    slurm: SlurmSettings | None = None
    reuse_workers: bool = True
    threads_per_sort: int = 1
    service_slots: int = 0
    service_idle_exit_s: float = 600.0
    service_dir: str = ""
    job_cache: str = "default-job-cache"
    sorts_at_once: int = 0
    jit_cache: bool = True

    @property
    def jit_cache_dir(self) -> str | None:
        """The folder a sort's worker caches compiled code in (None: ``jit_cache`` is off)."""
        return str(Path(self.work_root) / JIT_CACHE_FOLDER) if self.jit_cache else None

    @property
    def timeout_s(self) -> float | None:
        """The sort's timeout in seconds, or None for none (``timeout_min`` 0 or less)."""
        return self.timeout_min * 60.0 if self.timeout_min and self.timeout_min > 0 else None

    @property
    def kind(self) -> str:
        """Where sorts run: ``local``, ``container`` or ``slurm`` (recorded with each sort)."""
        return "slurm" if self.slurm else ("container" if self.use_container else "local")

    @property
    def uses_sort_service(self) -> bool:
        """Local sorts with warm workers on this host's service (Slurm sorts use their allocation's; containers none)."""
        return self.reuse_workers and self.slurm is None and not self.use_container

    def service(self) -> ServiceSettings:
        """The settings of the host's sort service these engine settings ask for.

        Returns
        -------
        ServiceSettings
            Slots (``service_slots``, or the cores divided by ``threads_per_sort``),
            threads per sort, idle exit and folder.
        """
        slots = self.service_slots or max(1, (os.cpu_count() or 1) // max(1, self.threads_per_sort))
        return ServiceSettings(
            slots=slots,
            threads_per_sort=max(1, self.threads_per_sort),
            idle_exit_s=self.service_idle_exit_s,
            base_dir=self.service_dir,
        )


def launcher_service(service_config: Mapping[str, object]) -> ServiceSettings:
    """The host sort service that the project's run launcher, configured with ``service_config``, runs on.

    One function for the run launcher (which Dagster configures from
    ``dagster.yaml``) and the command line's early start of the same service
    (:func:`sf_assets.cli.environment.start_sort_service_early`), so both
    reach one service.

    Parameters
    ----------
    service_config : Mapping[str, object]
        The launcher's config: ``threads_per_sort``, ``service_slots``, ``service_idle_exit_s``,
        ``service_dir`` (each optional).

    Returns
    -------
    ServiceSettings
        The service's settings.
    """
    return EngineSettings(work_root="", **service_config).service()


def container_image_for(entry: SorterEntry, settings: EngineSettings) -> str | None:
    """The image a sorter runs in: always for container-only sorters, else when asked.

    Parameters
    ----------
    entry : SorterEntry
        The sorter.
    settings : EngineSettings
        ``use_container``.

    Returns
    -------
    str or None
        The catalog's image, or None to sort here.
    """
    if settings.use_container or not entry.runs_locally:
        return entry.container_image
    return None


def cache_key(
    entry: SorterEntry,
    params: dict,
    recording_uri: str,
    image: str | None,
    job_cache: str,
    versions: tuple[tuple[str, str | None], ...],
) -> str:
    """Identity of a sort's inputs: same key, same sort (the job cache).

    The recording URI is content-addressed (its sha1), so it stands for the
    recording's data; the engine version and the installed libraries' versions
    stand for the code that sorts: an upgraded sorter package or spikeinterface
    sorts again instead of vouching for a result the old code made.  The job
    cache's name is part of it, as in hither's named job caches: a sorting
    made under one name is never a hit under another.

    Parameters
    ----------
    entry : SorterEntry
        The sorter.
    params : dict
        The merged parameters, seeds included.
    recording_uri : str
        The recording's ``sha1://`` URI.
    image : str or None
        The container image (None: sorted here).
    job_cache : str
        The job cache's name.
    versions : tuple[tuple[str, str or None], ...]
        (distribution, version) of the code that sorts
        (:func:`~sf_assets.engines.provenance.code_versions`).

    Returns
    -------
    str
        A sha1 of all of these and the sort engine's version.
    """
    payload = {
        "sorter": entry.si_name,
        "params": params,
        "recording": recording_uri.split("?", 1)[0],
        "engine_version": SORT_ENGINE_VERSION,
        "image": image,
        "job_cache": job_cache,
        "versions": dict(versions),
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def canary_timeout_s(canary_first_n_s: float | None) -> float | None:
    """How long the canary may take, start-up included, before it counts as hung.

    Four times the window, at least two minutes (sorter imports, numba
    compilation, a container's start) and at most five.

    Parameters
    ----------
    canary_first_n_s : float or None
        The canary window in seconds.

    Returns
    -------
    float or None
        Seconds, or None when there is no canary.
    """
    if not canary_first_n_s or canary_first_n_s != canary_first_n_s or canary_first_n_s <= 0:
        return None
    return min(300.0, max(120.0, 4.0 * canary_first_n_s))


def work_dir_for(
    settings: EngineSettings, sorter_name: str, study_name: str, recording_name: str, run_id: str, attempt: int = 0
) -> Path:
    """The work folder of one sort attempt: the pair's folder, then the run and retry (see folder_names).

    Parameters
    ----------
    settings : EngineSettings
        ``work_root``.
    sorter_name : str
        The sorter.
    study_name : str
        The recording's study.
    recording_name : str
        The recording.
    run_id : str
        The Dagster run.
    attempt : int
        The step's retry number.

    Returns
    -------
    Path
        The folder (not created).
    """
    return pair_folder(settings.work_root, sorter_name, study_name, recording_name) / attempt_name(run_id, attempt)


def run_sort(
    job: SortJob, settings: EngineSettings, *, launch: str | None = None, submitted_at: float | None = None
) -> Iterator[dict | CanaryReport | SortReport]:
    """Prepare the work folder, then sort on the host's sort service, on Slurm, or in a fresh process.

    Yields the service's slot information (a dict) when the sort service takes
    it, the canary report as soon as it is decided, and the final report.

    Parameters
    ----------
    job : SortJob
        The sort.
    settings : EngineSettings
        Where and how it runs.
    launch : str or None
        The launch the sort belongs to, whose sorts at once the service limits
        to ``settings.sorts_at_once``.
    submitted_at : float or None
        When the sort was submitted (epoch seconds): its place in the service's queue.

    Yields
    ------
    dict or CanaryReport or SortReport
        As they come; the last is the :class:`SortReport`.
    """
    work_dir = prepare_work_dir(job)
    command = worker_command(sys.executable, work_dir)
    if job.container_image:
        from sf_assets.engines.container import require_container_runtime

        require_container_runtime(job.container_engine)
    # The sort services start this clock when a slot takes the sort, not while it waits.
    hung_after_s = canary_timeout_s(job.canary_first_n_s)
    if settings.slurm is not None:
        from sf_assets.engines.slurm_campaign import run_slurm_sort

        yield from run_slurm_sort(job, settings, command, canary_timeout_s=hung_after_s)
        return
    if settings.uses_sort_service and not job.container_image:  # a container-only sorter gets a fresh worker
        from sf_assets.engines.service_client import sort_on_service

        yield from sort_on_service(
            settings.service(),
            work_dir,
            timeout_s=settings.timeout_s,
            canary_timeout_s=hung_after_s,
            group=launch,
            group_limit=settings.sorts_at_once,
            submitted_at=submitted_at,
        )
        return
    env = thread_limited_env(max(1, settings.threads_per_sort), os.environ)
    yield from supervise(job, command, timeout_s=settings.timeout_s, canary_timeout_s=hung_after_s, env=env)
