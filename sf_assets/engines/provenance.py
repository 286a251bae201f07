"""What a sort ran with: seeds, threads, library versions and container image.

Two sorts of the same recording with the same params can still differ: a
sorter's unseeded random draws, the number of threads its numerical kernels
split work over, a new release of the sorter or of numpy.  The worker applies
the thread count it was given, seeds the sorter's unseeded draws
(:mod:`sf_assets.engines.seeded_draws`), and records, next to the sorting,
what it actually ran with, so a changed score can be traced to a changed input.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

from packaging.version import InvalidVersion, Version

from sf_assets.core.sorter_catalog import PROJECT_SEED, SorterEntry
from sf_assets.engines.job import SortJob
from sf_assets.engines.threads import NUMBA_LAYER_VAR, THREAD_LIMIT_VARS

LIBRARIES = ("spikeinterface", "numpy", "numba")
"""Distributions whose versions every record carries (the sorter's package is added per sorter)."""

DIGEST_TIMEOUT_S = 10.0


def thread_count(job: SortJob, env: Mapping[str, str]) -> int | None:
    """The thread count a sort runs with: the job's, else the one its worker was started with.

    ``None`` when neither sets one (the libraries then start a thread per core).

    Parameters
    ----------
    job : SortJob
        ``threads``.
    env : Mapping[str, str]
        The worker's environment (``OMP_NUM_THREADS``).

    Returns
    -------
    int or None
        Threads per pool.
    """
    if job.threads is not None:
        return max(1, job.threads)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        value = env.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


@contextlib.contextmanager
def applied_threads(threads: int | None) -> Iterator[None]:
    """Limit numba and every native thread pool (OpenMP, BLAS) to ``threads`` while sorting.

    The environment variables only act when a library starts; a warm worker
    runs many sorts in one process, so the limit is applied here, per sort.
    numba cannot go above the thread count it was launched with
    (``NUMBA_NUM_THREADS``); the recorded count says what it really used.

    Parameters
    ----------
    threads : int or None
        Threads per pool (None: leave the libraries alone).

    Yields
    ------
    None
        While the sort runs.
    """
    if threads is None:
        yield
        return
    import numba
    from threadpoolctl import threadpool_limits

    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        with threadpool_limits(limits=threads), _joblib_limited(threads):
            yield
    finally:
        numba.set_num_threads(before)


@contextlib.contextmanager
def _joblib_limited(threads: int) -> Iterator[None]:
    """With one thread, joblib's parallel calls run in this process, one after the other.

    hdbscan (inside spikeinterface's ``simple``) asks joblib for 4 processes
    itself (``core_dist_n_jobs``), which ``LOKY_MAX_CPU_COUNT`` does not cap: a
    sort limited to one thread ran a pool of 4, and left it running in its
    worker.  The sequential backend does the same work in order (a 300 s
    ``simple`` sort stored the same sorting, byte for byte, either way).
    With more threads, calls that name their own ``n_jobs`` keep it.
    """
    try:
        from joblib import parallel_config
    except ImportError:  # no joblib: nothing of it to limit
        yield
        return
    with parallel_config(backend="sequential") if threads == 1 else parallel_config(n_jobs=threads):
        yield


def threads_in_use(threads: int | None) -> dict[str, Any]:
    """The thread counts in effect now: applied, numba's, each native pool's, and the variables.

    Parameters
    ----------
    threads : int or None
        The count applied.

    Returns
    -------
    dict[str, Any]
        For the record's provenance.
    """
    import numba
    from threadpoolctl import threadpool_info

    return {
        "applied": threads,
        "numba": numba.get_num_threads(),
        "threadpools": sorted(
            ({"api": pool.get("internal_api"), "num_threads": pool.get("num_threads")} for pool in threadpool_info()),
            key=lambda pool: (str(pool["api"]), pool["num_threads"] or 0),
        ),
        "numba_layer": numba.threading_layer(),
        "joblib": _joblib_in_use(),
        "env": {var: os.environ.get(var) for var in (*THREAD_LIMIT_VARS, NUMBA_LAYER_VAR)},
    }


def _joblib_in_use() -> dict[str, Any] | None:
    """joblib's backend now, and its workers for a call that names none (None: no joblib)."""
    try:
        from joblib.parallel import get_active_backend
    except ImportError:
        return None
    backend, n_jobs = get_active_backend()
    name = type(backend).__name__
    return {"backend": name, "n_jobs": 1 if name == "SequentialBackend" else n_jobs}


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution``, from its metadata on disk (None: not installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _running_version(distribution: str) -> str | None:
    """The version of ``distribution`` this process runs: the installed one, unless its imported module says otherwise.

    They differ in a process that imported the library before it was
    upgraded (a warm worker started before ``pip install -U``).  The two are
    compared as versions, not strings (``4.0`` is ``4.0.0``), and the installed
    spelling is kept when they agree: the planner's key is built from it.
    """
    installed = _version(distribution)
    module = sys.modules.get(distribution.replace("-", "_"))
    imported = getattr(module, "__version__", None)
    if not isinstance(imported, str) or not imported or installed is None:
        return installed if installed is not None else (imported or None)
    try:
        same = Version(imported) == Version(installed)
    except InvalidVersion:
        same = imported == installed
    return installed if same else imported


def key_libraries(package: str | None, in_container: bool) -> tuple[str, ...]:
    """The distributions whose versions a sort's job-cache key holds.

    spikeinterface always (it drives the sort, in a container too); numpy,
    numba and the sorter's own package only when it sorts here: in a container
    the image stands for them.

    Parameters
    ----------
    package : str or None
        The sorter's distribution (``SorterEntry.package``).
    in_container : bool
        True when the sort runs in its container image.

    Returns
    -------
    tuple[str, ...]
        Sorted distribution names.
    """
    if in_container:
        return ("spikeinterface",)
    return tuple(sorted(set(LIBRARIES) | ({package} if package else set())))


INSTALLED_VERSIONS_TTL_S = 30.0
"""How long a process trusts the installed versions it read: a planner asks for every pair it
looks at, and a sorting run asks twice per sort (its cache key, its service's folder)."""
_installed: dict[tuple[str, ...], tuple[float, tuple[tuple[str, str | None], ...]]] = {}


def installed_versions(names: tuple[str, ...]) -> tuple[tuple[str, str | None], ...]:
    """(distribution, version) for each of ``names``, as installed; None for one not installed.

    Read from the distributions' metadata, without importing them, at most
    every :data:`INSTALLED_VERSIONS_TTL_S` per process and set of names, so
    that a long-lived process (the code server's sensor, a run process) sees
    an upgrade within that time.

    Parameters
    ----------
    names : tuple[str, ...]
        Distribution names, in the order wanted.

    Returns
    -------
    tuple[tuple[str, str or None], ...]
        (distribution, version) pairs in the order of ``names``.
    """
    now = time.monotonic()
    read_at, versions = _installed.get(names, (None, ()))
    if read_at is None or now - read_at > INSTALLED_VERSIONS_TTL_S:
        versions = tuple((name, _version(name)) for name in names)
        _installed[names] = (now, versions)
    return versions


def code_versions(package: str | None, in_container: bool) -> tuple[tuple[str, str | None], ...]:
    """Installed versions of the code a new sort of this sorter would run, for the job cache's key.

    Parameters
    ----------
    package, in_container
        As for :func:`key_libraries`.

    Returns
    -------
    tuple[tuple[str, str or None], ...]
        (distribution, version) pairs of :func:`key_libraries`, sorted (:func:`installed_versions`).
    """
    return installed_versions(key_libraries(package, in_container))


def ran_with(
    reported: dict[str, str | None], package: str | None, in_container: bool
) -> tuple[tuple[str, str | None], ...]:
    """The job-cache versions of a sort, from what its worker reported it ran (``provenance.versions``).

    Parameters
    ----------
    reported : dict[str, str or None]
        :func:`library_versions` as the worker took it.
    package, in_container
        As for :func:`key_libraries`.

    Returns
    -------
    tuple[tuple[str, str or None], ...]
        As :func:`code_versions` returns them.
    """
    return tuple((name, reported.get(name)) for name in key_libraries(package, in_container))


def installed_code() -> tuple[tuple[str, str | None], ...]:
    """Installed versions of dagster, spikeinterface, numpy, numba and every catalog sorter's package.

    Part of the sort service's code fingerprint: a launch after an upgrade
    (seen within :data:`INSTALLED_VERSIONS_TTL_S`) starts a service whose
    workers import the new releases.

    Returns
    -------
    tuple[tuple[str, str or None], ...]
        (distribution, version) pairs, sorted.
    """
    from sf_assets.core.sorter_catalog import CATALOG

    names = {"dagster", *LIBRARIES, *(entry.package for entry in CATALOG if entry.package)}
    return installed_versions(tuple(sorted(names)))


def library_versions(entry: SorterEntry) -> dict[str, str | None]:
    """Versions of spikeinterface, numpy, numba, the sorter's package and of the sorter itself.

    As this process runs them: a library it has imported gives its module's
    version, which is what sorted even when a newer one was installed since.
    ``sorter`` is spikeinterface's own version string for the sorter
    (``get_sorter_version``: the algorithm's version for spikeinterface's
    sorters, the package's for the others); None where it cannot tell (a
    sorter that runs in its container).

    Parameters
    ----------
    entry : SorterEntry
        The sorter.

    Returns
    -------
    dict[str, str or None]
        Library -> version.
    """
    from spikeinterface.sorters.sorterlist import sorter_dict

    versions: dict[str, str | None] = {name: _running_version(name) for name in LIBRARIES}
    if entry.package is not None:
        versions[entry.package] = _running_version(entry.package)
    try:
        versions["sorter"] = str(sorter_dict[entry.si_name].get_sorter_version())
    except Exception:  # not installed here (container-only): the image stands for it
        versions["sorter"] = None
    versions["python"] = platform.python_version()
    return versions


def image_digest(image: str | None, engine: str) -> str | None:
    """The content digest of a container image, when it is known here.

    From the reference itself (``name@sha256:...``), else from ``docker image
    inspect`` for a pulled docker image; None when there is no image, no docker
    or no digest (a singularity file, an image built locally).

    Parameters
    ----------
    image : str or None
        The image reference.
    engine : str
        ``docker`` or ``singularity``.

    Returns
    -------
    str or None
        ``sha256:...``.
    """
    if image is None:
        return None
    if "@sha256:" in image:
        return image.split("@", 1)[1]
    docker = shutil.which("docker") if engine == "docker" else None
    if docker is None:
        return None
    try:
        out = subprocess.run(
            [docker, "image", "inspect", "--format", "{{join .RepoDigests \" \"}}", image],
            capture_output=True,
            text=True,
            timeout=DIGEST_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    digests = [d.split("@", 1)[1] for d in out.stdout.split() if "@sha256:" in d] if out.returncode == 0 else []
    return digests[0] if digests else None


def draws_seed(job: SortJob, entry: SorterEntry) -> int | None:
    """The seed of a sort's unseeded random draws: its sorter's first seed parameter, else the project's.

    Parameters
    ----------
    job : SortJob
        The sort (its params hold the pinned seeds).
    entry : SorterEntry
        Its sorter.

    Returns
    -------
    int or None
        The seed; None for a sort in a container, which the worker's seeding does not reach.
    """
    if job.container_image:
        return None
    seeds = [job.params.get(param) for param in entry.seed_params]
    return next((seed for seed in seeds if isinstance(seed, int) and not isinstance(seed, bool)), PROJECT_SEED)


def sort_provenance(job: SortJob, entry: SorterEntry, threads: int | None) -> dict[str, Any]:
    """The ``provenance`` of a sort (see :mod:`sf_assets.core.records`), taken while its threads are applied.

    Parameters
    ----------
    job : SortJob
        The sort.
    entry : SorterEntry
        Its sorter.
    threads : int or None
        The thread count applied.

    Returns
    -------
    dict[str, Any]
        Seeds (the sorter's seed parameters, and the seed of its unseeded draws), versions, image and
        digest, threads.
    """
    return {
        "seeds": {param: job.params.get(param) for param in entry.seed_params},
        "unseeded_draws_seed": draws_seed(job, entry),
        "threads": threads_in_use(threads),
        "versions": library_versions(entry),
        "container_image": job.container_image,
        "container_image_digest": image_digest(job.container_image, job.container_engine),
    }
