"""Keep the sorters' numba-compiled code in a folder, so a new worker loads it instead of compiling it again.

The sorters built on spikeinterface's sorting components (spykingcircus2,
tridesclous2, simple) compile their numba functions the first time a process
calls them: here a first tridesclous2 sort of a 2 s recording takes 37 s of
CPU and the next one 0.2 s.  Warm workers and sorter affinity pay that once
per worker, but every new worker still compiles: each sort service that
starts after an idle exit, each Slurm allocation, each campaign.  numba can
write what it compiled to a cache folder and load it in another process
(``@jit(cache=True)``); spikeinterface does not ask for it, but a numba
function can be given a cache after it was made (``enable_caching``), which
:func:`enable` does for every numba function defined at the top level of a
``spikeinterface`` module, as each module is imported.  Measured: that first
tridesclous2 sort takes 1.4 s of CPU once the folder holds its functions.

What numba caches is the machine code it compiled for one function and
argument types on this kind of CPU, checked against the function's source
file (its modification time and size) when loaded: the same code a compile
would give, so the sort's result does not change (a test compares the peaks
spikeinterface's numba peak detection finds, compiled and loaded), and a spikeinterface upgrade
misses the cache instead of loading stale code.  numba writes each entry to a
temporary file and renames it, so workers on several machines may share the
folder.  Functions numba cannot cache (made inside another function, say)
compile as before.

The folder is the job's (:attr:`sf_assets.engines.job.SortJob.jit_cache_dir`,
under the engine's work folder, which Slurm nodes share), or numba's own
``NUMBA_CACHE_DIR`` when that is set.  A worker takes the folder of its first
job that names one and keeps it.

A worker that sorted with a cache also leaves a *sorter mark* there
(:func:`mark_sorter`): ``sorters/<sorter>-<key>.json``, the key standing for
the spikeinterface, numba and Python releases and the machine type.  It says
that a new worker of these releases loads that sorter's code instead of
compiling it, which the sort service reads (:func:`holds_sorter`) without
importing numba: a sort of a marked sorter starts at once on a new worker
rather than wait for a copy of a busy warm one (see
:mod:`sf_assets.core.dispatch`).  A mark can only be too hopeful (another
kind of CPU, a function numba cannot cache): that sort then compiles, and
its result is the same.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.abc
import importlib.metadata
import importlib.util
import os
import platform
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from sf_assets.core.atomic import write_json_atomic

PACKAGES = ("spikeinterface",)
"""Whose modules' numba functions get a cache (top-level package names)."""
SORTER_MARKS = "sorters"
"""The cache folder's subfolder of sorter marks (:func:`mark_sorter`)."""

_lock = threading.RLock()
_folder: Path | None = None
_dispatchers: set = set()  # every function given a cache here, for the counts


def _ours(name: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in PACKAGES)


def _usable(folder: Path) -> bool:
    """Can this process write there?  numba would otherwise fall back to a ``__pycache__`` beside the library."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        return False
    return True


def _give_caches(module) -> None:
    """Give a cache to each numba function defined at the top level of ``module``."""
    from numba.core.dispatcher import Dispatcher

    name = getattr(module, "__name__", "")
    for value in list(vars(module).values()):
        if not isinstance(value, Dispatcher) or getattr(value.py_func, "__module__", None) != name:
            continue
        if value in _dispatchers:
            continue
        try:
            value.enable_caching()
        except Exception:  # noqa: BLE001 - numba cannot cache this one (no source file, say): it compiles as before
            continue
        _dispatchers.add(value)


class _CachingLoader(importlib.abc.Loader):
    """The module's own loader, and then :func:`_give_caches` once its code has run."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        with _lock:
            _give_caches(module)

    def __getattr__(self, name):  # get_source, get_resource_reader, ...: the module's own loader's
        return getattr(self._loader, name)


class _CachingFinder(importlib.abc.MetaPathFinder):
    """Finds modules of :data:`PACKAGES` as the other finders do, with :class:`_CachingLoader` around their loader."""

    def find_spec(self, fullname, path, target=None):
        if not _ours(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _CachingLoader(spec.loader)
            return spec
        return None


def folder_for(folder: Path, env: Mapping[str, str] = os.environ) -> Path:
    """The folder a worker with environment ``env`` caches in when its job names ``folder``: numba's own variable wins.

    Parameters
    ----------
    folder : Path
        The job's cache folder.
    env : Mapping[str, str]
        The worker's environment (``NUMBA_CACHE_DIR``).

    Returns
    -------
    Path
        The folder in use.
    """
    return Path(env.get("NUMBA_CACHE_DIR") or folder)


def enable(folder: Path) -> Path | None:
    """Cache spikeinterface's numba functions in ``folder`` (or ``NUMBA_CACHE_DIR``) from now on, in this process.

    The modules imported already get their caches now; the others as they are
    imported.  Later calls keep the first folder.

    Parameters
    ----------
    folder : Path
        The cache folder (made if missing).

    Returns
    -------
    Path or None
        The folder in use; None when numba is not installed or the folder cannot be written (nothing is cached).
    """
    global _folder
    with _lock:
        if _folder is not None:
            return _folder
        if importlib.util.find_spec("numba") is None:
            return None
        from numba.core import config

        chosen = folder_for(folder)
        if not _usable(chosen):
            return None
        # Read by each function's cache as it is made (below): set before any.
        config.CACHE_DIR = str(chosen)
        _folder = chosen
        for name, module in list(sys.modules.items()):
            if _ours(name) and module is not None:
                _give_caches(module)
        sys.meta_path.insert(0, _CachingFinder())
        return chosen


def counts() -> tuple[int, int]:
    """How many (function, argument types) this process has loaded from the cache and compiled, so far.

    Returns
    -------
    tuple[int, int]
        Loaded and compiled, summed over the functions given a cache here.
    """
    with _lock:
        # Dispatcher.stats: numba's own counts of its cache's hits and misses, per signature.
        loaded = sum(sum(d.stats.cache_hits.values()) for d in _dispatchers)
        compiled = sum(sum(d.stats.cache_misses.values()) for d in _dispatchers)
    return loaded, compiled


@functools.cache
def _releases_key() -> str:
    """This process's releases and machine type, hashed; read once (the sort service asks at every dispatch)."""
    releases = []
    for package in PACKAGES + ("numba",):
        try:
            releases.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            releases.append(f"{package} missing")
    releases += [f"python {platform.python_version()}", platform.machine()]
    return hashlib.sha1("\n".join(releases).encode()).hexdigest()[:16]


def _sorter_mark(folder: Path, sorter: str) -> Path:
    """Where the mark of ``sorter`` for this process's releases and machine type lives in ``folder``."""
    return Path(folder) / SORTER_MARKS / f"{sorter}-{_releases_key()}.json"


def mark_sorter(folder: Path, sorter: str, loaded: int, compiled: int) -> None:
    """Say in ``folder`` that ``sorter``'s code is cached there: this process sorted with it, cache on.

    Parameters
    ----------
    folder : Path
        The cache folder this process uses (:func:`enable`'s answer).
    sorter : str
        spikeinterface's name of the sorter.
    loaded, compiled : int
        What its sort loaded from the cache and compiled (for people reading the folder).
    """
    mark = _sorter_mark(folder, sorter)
    if mark.exists():
        return
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(mark, {"sorter": sorter, "pid": os.getpid(), "loaded": loaded, "compiled": compiled})
    except OSError:  # a read-only or full folder: new workers still load what is there, only the service does not know
        pass


def holds_sorter(folder: Path, sorter: str) -> bool:
    """Has a worker of this process's releases, on this machine type, sorted ``sorter`` with ``folder`` as its cache?

    Parameters
    ----------
    folder : Path
        The cache folder.
    sorter : str
        spikeinterface's name of the sorter.

    Returns
    -------
    bool
        True once :func:`mark_sorter` marked it: a new worker loads its code instead of compiling it.
    """
    return _sorter_mark(folder, sorter).exists()
