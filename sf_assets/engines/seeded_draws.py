"""Random draws a sorter makes without a seed, seeded from the sort's own seed.

Why: pinning a sorter's ``seed`` parameter was not enough.  spikeinterface's
own sorters (Simple, SpykingCircus2, Tridesclous2) also draw random numbers
with no seed somewhere on their path: ``zscore(recording)`` and
``whiten(...)`` pick random chunks of the recording through
``numpy.random.default_rng(None)``, and scikit-learn's estimators without a
``random_state`` use numpy's global generator.  numpy then takes fresh
entropy from the operating system, so two sorts of one recording with the
same seed gave different sortings (Simple's mean accuracy moved by 0.0074,
SpykingCircus2's by 0.038; docs/sorters.md).

What :func:`seeded_unseeded_draws` does while one ``run_sorter`` call runs
in the worker: ``numpy.random.default_rng()`` without a seed returns the
generator of ``[seed, site, n]``, where ``site`` names the line that called
it (module, function, line number) and ``n`` counts that line's calls from
0 within the sort; numpy's global generator and Python's ``random`` start
from ``seed``.  A sorter that runs the same code on the same recording then
draws the same numbers, in a fresh worker or a warm one that has sorted
before.  Why per line and not one count per sort: a fresh worker imports
``scipy.stats`` during its first sort, and that import makes four unseeded
generators of its own, so with one count the sorter's own draw was the
fifth in a fresh worker and the first in a warm one, and their sortings
differed.  A call with a seed is left as it is.

What it cannot reach: a sort inside a container (the sorter runs in the
image's own Python), code that imported ``default_rng`` by name before the
sort started, and child processes a sorter spawns with a new interpreter.
Children it forks (a process pool, with ``n_jobs`` > 1) start from the
counts as they were at the fork: the same sort forks at the same point, so
their draws repeat too, but two children drawing at the same line draw the
same numbers.  Draws made from several threads at once take their counts
in the order the threads get there.
"""
from __future__ import annotations

import itertools
import random
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
# While a sort runs: (its seed, each calling line's count of unseeded generators); None between sorts.
_active: tuple[int, dict[str, itertools.count]] | None = None


def _call_site(frame) -> str:
    """The calling line, the same in every process and install folder: module, function, line number."""
    return f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_name}:{frame.f_lineno}"


def _default_rng(seed=None):
    """numpy's ``default_rng`` (same signature: callers pass ``seed=`` by name), unseeded calls seeded during a sort."""
    if seed is None and _active is not None:
        site = _call_site(sys._getframe(1))
        with _lock:
            if _active is not None:
                sort_seed, counts = _active
                n = next(counts.setdefault(site, itertools.count()))
                seed = [sort_seed % 2**32, zlib.crc32(site.encode()), n]
    # numpy's own, where it is defined: also right in a spawned process that unpickled this function.
    from numpy.random import _generator

    return _generator.default_rng(seed)


def _install() -> None:
    """Put :func:`_default_rng` in numpy's place, once per process, for good.

    Once and for good, not per sort: a module first imported during a sort
    may keep ``default_rng`` by name, and must reach the next sort's seed,
    not an earlier sort's count (a warm worker's second sort differed from a
    fresh worker's until this was so).  Between sorts it is numpy's own.
    """
    import numpy as np  # here: the worker gives back its stop signals before any heavy import

    with _lock:
        if np.random.default_rng is not _default_rng:
            _default_rng.__doc__ = np.random.default_rng.__doc__
            np.random.default_rng = _default_rng


@contextmanager
def seeded_unseeded_draws(seed: int) -> Iterator[None]:
    """Seed every unseeded random draw from ``seed`` inside the block; restore numpy and ``random`` after it.

    Parameters
    ----------
    seed : int
        The sort's seed (its sorter's pinned seed, else the project's).

    Yields
    ------
    None
        While the block runs.
    """
    global _active
    import numpy as np

    _install()
    global_state, python_state = np.random.get_state(), random.getstate()
    with _lock:
        _active = (seed, {})
    np.random.seed(seed % 2**32)  # numpy's global generator takes 0 .. 2**32 - 1; the spec may say more
    random.seed(seed)
    try:
        yield
    finally:
        with _lock:
            _active = None
        np.random.set_state(global_state)
        random.setstate(python_state)
