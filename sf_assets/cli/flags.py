"""The command line's flags, named and defaulted as in SpikeForest's scripts, and the run options they give.

Every subcommand that reads a manifest and a spec takes :func:`add_config_flags`;
the sorting commands add :func:`add_shared_flags` (and the workspace commands
:func:`add_workspace_flags`); :func:`run_options` turns the parsed flags into
what each Dagster run is configured with.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sf_assets.core.settings import Settings, env_flag
from sf_assets.core.uris import is_kachery_uri

if TYPE_CHECKING:
    from sf_assets.cli.launch import RunOptions

DEFAULT_JOB_CACHE = "default-job-cache"
DEFAULT_WORKERS = 4
USE_CONTAINER_ENV = ("SF_ASSETS_USE_CONTAINER", "HITHER_USE_CONTAINER")
"""Read in this order when neither -C nor --no-container is given."""
DAGSTER_LOG_LEVELS = ("CRITICAL", "INFO", "DEBUG")
"""Dagster's console log level for -v counts 0, 1, 2+ (runs' logs are always in the UI)."""


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def _number(unit: str, zero_means: str | None = None) -> Callable[[str], float]:
    """A flag's parser for a finite number of ``unit``: above 0, or 0 too when ``zero_means`` says what 0 does."""
    bound = f">= 0 (0: {zero_means})" if zero_means else "> 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit} as a number, got {text!r}") from None
        if not (math.isfinite(value) and (value > 0 or (zero_means and value == 0))):
            raise argparse.ArgumentTypeError(f"expected a finite number of {unit} {bound}, got {text!r}")
        return value

    return parse


_minutes = _number("minutes", "no timeout")
_seconds = _number("seconds")
_window_seconds = _number("seconds", "no canary")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``-s`` (manifest) and ``-l`` (spec), named as in ``run_sortings.py``, and ``--strict``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        A subcommand's parser.
    """
    parser.add_argument(
        "-s",
        "--study-source-file",
        metavar="MANIFEST",
        help="studysets manifest: a path or sha1:// URI (default: the spec's 'studysets')",
    )
    parser.add_argument(
        "-l",
        "--sorter-spec-file",
        metavar="SPEC",
        required=True,
        help="spec.yaml: a path or sha1:// URI",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse a spec naming a sorter that cannot run here (default: accept it; its pairs end as "
        "errored records saying why)",
    )


def add_shared_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every sorting command takes, named and defaulted as in the old scripts.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        A subcommand's parser.
    """
    general = parser.add_argument_group("general")
    general.add_argument("-v", "--verbose", action="count", default=0, help="more output; repeat for more")
    general.add_argument(
        "-T",
        "--timeout-min",
        type=_minutes,
        default=0.0,
        metavar="MINUTES",
        help="cancel a sort after this many minutes of sorting (0, the default: no timeout)",
    )
    general.add_argument(
        "--canary-s",
        type=_window_seconds,
        metavar="SECONDS",
        help="sort the first SECONDS of each recording before its full sort, and stop a sort whose canary "
        "fails in a way the full sort would (default: the sorting_engine resource's canary_first_n_s, 5; "
        "0: no canary)",
    )
    general.add_argument(
        "--check-config",
        action="store_true",
        help="print the resolved configuration as JSON and exit without running anything",
    )
    jobs = parser.add_argument_group("job control")
    cache = jobs.add_mutually_exclusive_group()
    cache.add_argument(
        "--job-cache",
        default=DEFAULT_JOB_CACHE,
        metavar="NAME",
        help=f"name of the job cache (default {DEFAULT_JOB_CACHE!r}): an unchanged sort is not run again",
    )
    cache.add_argument("--no-job-cache", action="store_true", help="sort everything again, ignoring the job cache")
    jobs.add_argument(
        "-C",
        "--use-container",
        action="store_true",
        help="sort in the sorters' container images (default: on when SF_ASSETS_USE_CONTAINER or "
        "HITHER_USE_CONTAINER is 1 or TRUE)",
    )
    jobs.add_argument(
        "--no-container",
        action="store_true",
        help="sort without containers whatever the environment says (-C still wins)",
    )
    jobs.add_argument(
        "-w",
        "--workercount",
        type=_count(1),
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"this launch's sorts at once (default {DEFAULT_WORKERS}); the host's sort service slots and the "
        "instance's run queue (dagster.yaml) bound what runs host-wide",
    )
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument(
        "--use-slurm",
        action="store_true",
        help="sort on the Slurm cluster, as job steps of allocations requested as sorts arrive",
    )
    slurm.add_argument("--slurm-partition", default="", metavar="NAME", help="partition for srun's -p")
    slurm.add_argument(
        "--slurm-accept-shared-nodes",
        action="store_true",
        help="share nodes with other jobs (default: srun --exclusive)",
    )
    slurm.add_argument(
        "--slurm-jobs-per-allocation", type=_count(1), default=6, metavar="N", help="sorts per allocation (default 6)"
    )
    slurm.add_argument(
        "--slurm-max-simultaneous-allocations",
        type=_count(1),
        default=5,
        metavar="N",
        help="allocations at a time (default 5)",
    )
    slurm.add_argument(
        "--slurm-gpus-per-node", type=_count(1), default=None, metavar="N", help="request N GPUs per node"
    )
    slurm.add_argument(
        "--slurm-idle-release-s",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="end an allocation once no sort has used it for S seconds (default 60)",
    )
    slurm.add_argument(
        "--slurm-allocation-time-min",
        type=_minutes,
        default=0.0,
        metavar="MINUTES",
        help="walltime of each allocation (default 0: -T plus 10 minutes, or the partition's limit without -T)",
    )


def add_workspace_flags(parser: argparse.ArgumentParser) -> None:
    """``-W/--workspace-uri`` or ``--create-new-workspace`` (exactly one), and ``--dry-run``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        A subcommand's parser.
    """
    group = parser.add_argument_group("workspace (exactly one of -W and --create-new-workspace)")
    group.add_argument("-W", "--workspace-uri", metavar="URI", help="the workspace to add to: workspace://...")
    group.add_argument("--create-new-workspace", action="store_true", help="create a new workspace and add to it")
    group.add_argument("--dry-run", action="store_true", help="say what would be added; write nothing")


def use_container(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """-C wins; then --no-container; then the first container variable that is set.

    Parameters
    ----------
    args : argparse.Namespace
        ``use_container`` (-C) and ``no_container``.
    environ : Mapping[str, str]
        The environment, read for :data:`USE_CONTAINER_ENV` in that order.

    Returns
    -------
    bool
        Whether sorts run in the sorters' container images.

    Raises
    ------
    SfAssetsError
        If that variable holds neither a true nor a false word.
    """
    if args.use_container:
        return True
    if args.no_container:
        return False
    for name in USE_CONTAINER_ENV:
        flag = env_flag(environ, name)
        if flag is not None:
            return flag
    return False


def _source(text: str | None) -> str:
    """A source for run configuration: paths made absolute (runs may start elsewhere), URIs as given."""
    if not text:
        return ""
    return text if is_kachery_uri(text) else str(Path(text).resolve())


def run_option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The run options the flags (and ``SF_ASSETS_USE_CONTAINER``) set, checked, without importing Dagster.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed flags.

    Returns
    -------
    dict[str, Any]
        ``RunOptions`` fields; source paths made absolute.

    Raises
    ------
    SfAssetsError
        If the container variable holds an unknown word.
    """
    return dict(
        spec_source=_source(args.sorter_spec_file),
        manifest_source=_source(args.study_source_file),
        timeout_min=args.timeout_min,
        use_container=use_container(args, os.environ),
        use_job_cache=not args.no_job_cache,
        job_cache=args.job_cache,
        use_slurm=args.use_slurm,
        slurm_partition=args.slurm_partition,
        slurm_accept_shared_nodes=args.slurm_accept_shared_nodes,
        slurm_jobs_per_allocation=args.slurm_jobs_per_allocation,
        slurm_max_simultaneous_allocations=args.slurm_max_simultaneous_allocations,
        slurm_gpus_per_node=args.slurm_gpus_per_node or 0,
        slurm_idle_release_s=args.slurm_idle_release_s,
        slurm_allocation_time_min=args.slurm_allocation_time_min,
        **({} if args.canary_s is None else {"canary_first_n_s": args.canary_s}),
    )


def run_options(settings: Settings, values: Mapping[str, Any], **overrides: Any) -> "RunOptions":
    """The runs' resource configuration (see :class:`sf_assets.cli.launch.RunOptions`).

    Parameters
    ----------
    settings : Settings
        The project's folders and stores.
    values : Mapping[str, Any]
        What the flags set (:func:`run_option_values`).
    **overrides : Any
        Further ``RunOptions`` fields (the Dagster log level).

    Returns
    -------
    RunOptions
        What every run of the launch is configured with.
    """
    from sf_assets.cli.launch import RunOptions

    return RunOptions.from_settings(settings, **values, **overrides)


def dagster_log_level(args: argparse.Namespace) -> str:
    """Dagster's console log level for the number of ``-v`` given (runs' logs are always in the UI).

    Parameters
    ----------
    args : argparse.Namespace
        ``verbose``: how many ``-v``.

    Returns
    -------
    str
        ``CRITICAL``, ``INFO`` or ``DEBUG``.
    """
    return DAGSTER_LOG_LEVELS[min(args.verbose, len(DAGSTER_LOG_LEVELS) - 1)]
