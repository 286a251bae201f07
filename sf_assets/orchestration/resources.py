"""Dagster resources: thin, typed handles on the stores, the studyset and the engine.

Each resource only holds configuration and hands out the plain object that
does the work (a :class:`KacheryStore`, a :class:`Campaign`, an engine), so
the same objects serve the command line and tests without Dagster.

The embedded default's values come from :func:`sf_assets.core.settings.load_settings`,
the one reader of the environment, when the code location loads (and again
in each run the sort service forks, under that run's environment).  They are
not ``dg.EnvVar`` fields: every one of them has a default computed from
another variable (``SF_ASSETS_HOME``), and ``SF_ASSETS_SLURM`` fills seven
fields at once, neither of which an ``EnvVar`` can say; a deployment that
wants ``EnvVar`` sets the fields itself.
"""
from __future__ import annotations

import os
from functools import lru_cache

import dagster as dg

from sf_assets.core.campaign import Campaign
from sf_assets.engines.engine import EngineSettings
from sf_assets.engines.slurm_config import slurm_resource_config
from sf_assets.engines.slurm_settings import SlurmSettings
from sf_assets.stores.inputs import load_config
from sf_assets.core.settings import load_settings
from sf_assets.stores.kachery import KacheryStore
from sf_assets.stores.workspace import WorkspaceStore


class KacheryResource(dg.ConfigurableResource):
    """The content-addressed store holding recordings, sortings and console output."""

    root_dir: str
    local_only: bool = True

    def store(self) -> KacheryStore:
        """The store this resource names.

        Returns
        -------
        KacheryStore
            A store on ``root_dir``.
        """
        return KacheryStore(self.root_dir, local_only=self.local_only)


def _mtime(source: str | None) -> float | None:
    if source and not source.startswith("sha1://") and os.path.exists(source):
        return os.path.getmtime(source)
    return None


@lru_cache(maxsize=8)
def _campaign(manifest_source, manifest_mtime, spec_source, spec_mtime, kachery_dir, local_only) -> Campaign:
    manifest, spec = load_config(manifest_source, spec_source, KacheryStore(kachery_dir, local_only=local_only))
    return Campaign(manifest, spec)


class StudysetResource(dg.ConfigurableResource):
    """The studysets manifest and the spec that say which sorts exist.

    ``manifest_source`` may be empty: the spec's own ``studysets`` URI is used,
    as run_sortings.py did without ``--study-source-file``.
    """

    spec_source: str
    manifest_source: str = ""

    def campaign(self, kachery: KacheryResource) -> Campaign:
        """The campaign of the configured sources, read again only when a source file changes.

        Parameters
        ----------
        kachery : KacheryResource
            Where ``sha1://`` sources are read.

        Returns
        -------
        Campaign
            The validated manifest and spec.

        Raises
        ------
        SfAssetsError
            Naming the bad source, key and what was expected.
        """
        manifest_source = self.manifest_source or None
        return _campaign(
            manifest_source,
            _mtime(manifest_source),
            self.spec_source,
            _mtime(self.spec_source),
            kachery.root_dir,
            kachery.local_only,
        )


class SortingEngineResource(dg.ConfigurableResource):
    """How sorts run: locally (on the host's sort service), in containers, or on Slurm; timeout and canary.

    See :class:`sf_assets.engines.engine.EngineSettings` for what each field does.
    """

    work_root: str
    timeout_min: float = 0.0
    canary_first_n_s: float = 5.0
    use_container: bool = False
    container_engine: str = "docker"
    use_job_cache: bool = True
    job_cache: str = "default-job-cache"
    use_slurm: bool = False
    slurm_partition: str = ""
    slurm_accept_shared_nodes: bool = False
    slurm_jobs_per_allocation: int = 6
    slurm_max_simultaneous_allocations: int = 5
    slurm_gpus_per_node: int = 0
    slurm_allocation_id: str = ""
    slurm_idle_release_s: float = 60.0
    slurm_allocation_time_min: float = 0.0
    reuse_workers: bool = True
    threads_per_sort: int = 1
    service_slots: int = 0
    service_idle_exit_s: float = 600.0
    service_dir: str = ""
    sorts_at_once: int = 0
    jit_cache: bool = True

    def settings(self) -> EngineSettings:
        """The engine settings these fields give, for :func:`sf_assets.engines.engine.run_sort`.

        Returns
        -------
        EngineSettings
            With Slurm settings when ``use_slurm``.
        """
        slurm = None
        if self.use_slurm:
            slurm = SlurmSettings(
                partition=self.slurm_partition or None,
                accept_shared_nodes=self.slurm_accept_shared_nodes,
                jobs_per_allocation=self.slurm_jobs_per_allocation,
                max_simultaneous_allocations=self.slurm_max_simultaneous_allocations,
                gpus_per_node=self.slurm_gpus_per_node or None,
                allocation_id=self.slurm_allocation_id or None,
                idle_release_s=self.slurm_idle_release_s,
                allocation_time_min=self.slurm_allocation_time_min,
            )
        return EngineSettings(
            work_root=self.work_root,
            timeout_min=self.timeout_min,
            canary_first_n_s=self.canary_first_n_s,
            use_container=self.use_container,
            container_engine=self.container_engine,
            slurm=slurm,
            reuse_workers=self.reuse_workers,
            threads_per_sort=self.threads_per_sort,
            service_slots=self.service_slots,
            service_idle_exit_s=self.service_idle_exit_s,
            service_dir=self.service_dir,
            job_cache=self.job_cache,
            sorts_at_once=self.sorts_at_once,
            jit_cache=self.jit_cache,
        )


class WorkspaceResource(dg.ConfigurableResource):
    """The workspace database that the old web workspace has become."""

    db_url: str
    workspace_uri: str = ""
    dry_run: bool = False

    def store(self) -> WorkspaceStore:
        """The workspace database this resource names (one engine per URL per process).

        Returns
        -------
        WorkspaceStore
            The store.
        """
        return _workspace_store(self.db_url)


class OutputsResource(dg.ConfigurableResource):
    """Folder for the files people open: records JSON, summary CSV and plot."""

    folder: str

    def path(self):
        """The outputs folder, created if missing.

        Returns
        -------
        Path
            The folder.
        """
        from pathlib import Path

        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


@lru_cache(maxsize=4)
def _workspace_store(db_url: str) -> WorkspaceStore:
    return WorkspaceStore(db_url)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources for the embedded default, from :mod:`sf_assets.core.settings`.

    Returns
    -------
    dict[str, ConfigurableResource]
        ``kachery``, ``studyset``, ``sorting_engine`` (with ``SF_ASSETS_SLURM``), ``workspace`` and ``outputs``.
    """
    settings = load_settings()
    kachery = KacheryResource(root_dir=str(settings.kachery_dir), local_only=settings.kachery_local_only)
    return {
        "kachery": kachery,
        "studyset": StudysetResource(spec_source=settings.spec_source, manifest_source=settings.manifest_source or ""),
        "sorting_engine": SortingEngineResource(work_root=str(settings.work_root), **slurm_resource_config(os.environ)),
        "workspace": WorkspaceResource(db_url=settings.workspace_db_url),
        "outputs": OutputsResource(folder=str(settings.outputs_dir)),
    }
