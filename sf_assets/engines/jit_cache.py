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
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import tempfile
import threading
from pathlib import Path

PACKAGES = ("spikeinterface",)
"""Whose modules' numba functions get a cache (top-level package names)."""

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

        chosen = Path(os.environ.get("NUMBA_CACHE_DIR") or folder)
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
