"""Warm a sort service's template with the sorters its sorts will use, before they arrive.

A new sort service (a Slurm allocation's above all) starts every slot's
worker by forking one template process (:mod:`sf_assets.engines.worker_template`).
A sorter's first sort in a process compiles its numba code, or loads it from
the JIT cache (:mod:`sf_assets.engines.jit_cache`); the slots' other sorts
wait for that first sort to end and take a copy of its worker.  When the
launch that requested the allocation knows which sorters are coming (it
planned them, :func:`sf_assets.engines.slurm_pool.anticipate`, or its sort
asked for the allocation), the template sorts a short synthetic recording
with each of them first, with the sorts' parameters and thread limits: every
worker it forks afterwards has their code, so every slot's first sort is
already warm and nobody waits for another slot's.

What the warm-up sorts is a ground-truth recording from spikeinterface's
generator (:data:`RECORDING_S` seconds, :data:`CHANNELS` channels, seed 0),
written to a folder of the service's and removed afterwards; its sorting is
thrown away.  A sorter whose code the JIT cache holds already is not warmed:
a new worker loads it in a few tenths of a second when its first sort starts
(dispatch's rule 3), which costs less than the sorts waiting for the template
to load it.  It changes no result: a warm worker that sorted before is what
every slot's second sort runs on anyway, each sort's random state is seeded
per sort, and the code numba compiles or loads is the same (the JIT cache's
own test compares the peaks found).  A warm-up that fails (a sorter that
finds nothing to sort in so short a recording, say) is reported and changes
nothing else: the sorts compile as before.

The template must stay safe to fork from: after the warm-up it may have no
child process and no Python thread but its own (tqdm's monitor thread is
never started: ``tqdm.monitor_interval`` is 0 during the warm-up; joblib runs
sequentially); numba's workqueue threads, the only other threads a sort
leaves, are not copied by a fork and numba starts them again in the child,
as in a copied warm worker (the service asks for warm-ups only on that
threading layer).  Otherwise it starts again without a warm-up
(:func:`fit_to_fork`).  No sorter's warm-up starts after :data:`BUDGET_S`
(a cold compile of spykingcircus2 or tridesclous2 takes 20-45 s here): a
warm-up never keeps the slots' workers waiting much longer than one compile.

The outcome is written to :data:`REPORT_FILE` (JSON) in the given folder:
per sorter, seconds, numba functions loaded from the cache and compiled,
and the error if any.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from pathlib import Path

from sf_assets.core.atomic import write_json_atomic
from sf_assets.engines import jit_cache
from sf_assets.engines.job import SortJob

ENV = "SF_ASSETS_WARM_UP"
"""The template's environment variable holding the warm-up (JSON, :func:`encode`)."""
REPORT_FILE = "warm-up.json"
SKIPPED = "not warmed: the JIT cache holds its code"
"""A report entry's ``error`` when the sorter's code was in the JIT cache already (a new worker loads it)."""
RECORDING_S = 10.0
CHANNELS = 8
BUDGET_S = 60.0
"""No sorter's warm-up starts this long after the first one did (waiting for another template's included):
the service waits for its first worker (``worker_template.SPAWN_WAIT_S`` plus this), and the sorts with it."""
LOCK_POLL_S = 0.2
OUT_OF_TIME = f"not warmed: the warm-up's {BUDGET_S:g} s were over"


def worth_warming(entry) -> bool:
    """Is ``entry`` (a :class:`~sf_assets.core.sorter_catalog.SorterEntry`) a sorter a warm-up helps?

    spikeinterface's own sorters, whose numba code is what a first sort
    compiles (:data:`sf_assets.engines.jit_cache.PACKAGES`), but not one that
    needs an extra (torch: its import may start threads a template must not
    have when it forks).

    Parameters
    ----------
    entry : SorterEntry
        The catalog's entry.

    Returns
    -------
    bool
        True for ``simple``, ``spykingcircus2`` and ``tridesclous2``.
    """
    return entry.package in jit_cache.PACKAGES and entry.pip_extra is None and entry.runs_locally


def encode(sorters: list[dict], jit_cache_dir: str | None, folder: str | Path) -> str:
    """The warm-up a template reads from :data:`ENV`.

    Parameters
    ----------
    sorters : list[dict]
        ``{"sorter_name", "si_sorter_name", "params"}`` for each sorter to warm (what :class:`SortJob` holds).
    jit_cache_dir : str or None
        The sorts' JIT cache folder (None: compile, and cache nothing).
    folder : str or Path
        Where the recording is written and :data:`REPORT_FILE` goes (the service's folder).

    Returns
    -------
    str
        Compact JSON.
    """
    return json.dumps({"sorters": sorters, "jit_cache_dir": jit_cache_dir, "folder": str(folder)}, sort_keys=True)


def sorters_of(text: str | None) -> set[str]:
    """The spikeinterface names of the sorters a warm-up (:func:`encode`'s text) warms; empty for none.

    Parameters
    ----------
    text : str or None
        The warm-up.

    Returns
    -------
    set[str]
        ``si_sorter_name`` of each.
    """
    return {s["si_sorter_name"] for s in json.loads(text)["sorters"]} if text else set()


def warmed(folder: Path) -> set[str] | None:
    """The sorters the warm-up reported in ``folder`` warmed, or None before it reported.

    Parameters
    ----------
    folder : Path
        The warm-up's folder.

    Returns
    -------
    set[str] or None
        Their spikeinterface names (without the failed ones).
    """
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return {entry["si_sorter_name"] for entry in report["sorters"] if entry.get("error") is None}


def run(text: str) -> list[dict]:
    """Sort a synthetic recording with each sorter of the warm-up ``text`` in this process; write the report.

    Parameters
    ----------
    text : str
        The warm-up (:func:`encode`).

    Returns
    -------
    list[dict]
        The report's entries, one per sorter.
    """
    import tqdm

    from sf_assets.engines.provenance import applied_threads, thread_count
    from sf_assets.engines.worker import run_job_sorter

    spec = json.loads(text)
    folder = Path(spec["folder"])
    scratch = folder / "warm-up"
    entries: list[dict] = []
    monitor_interval, tqdm.tqdm.monitor_interval = tqdm.tqdm.monitor_interval, 0
    begun = time.monotonic()
    try:
        cache = jit_cache.enable(Path(spec["jit_cache_dir"])) if spec.get("jit_cache_dir") else None
        recording = None
        for sorter in spec["sorters"]:
            job = SortJob(
                sorter_name=sorter["sorter_name"],
                si_sorter_name=sorter["si_sorter_name"],
                params=dict(sorter.get("params") or {}),
                recording_uri="",
                label=f"warm-up/{sorter['sorter_name']}",
                kachery_dir="",
                work_dir=str(scratch),
                jit_cache_dir=spec.get("jit_cache_dir"),
            )
            entry = {"sorter_name": job.sorter_name, "si_sorter_name": job.si_sorter_name, "error": None}
            before = jit_cache.counts()
            started = time.monotonic()
            try:
                # One warm-up of a sorter at a time per cache: the others find it in the cache.
                with _one_at_a_time(cache, job.si_sorter_name, deadline=begun + BUDGET_S) as turn:
                    if not turn:
                        entry["error"] = f"{OUT_OF_TIME} (another template was warming it)"
                    elif time.monotonic() > begun + BUDGET_S:
                        entry["error"] = OUT_OF_TIME
                    elif cache is not None and jit_cache.holds_sorter(cache, job.si_sorter_name):
                        # Each new worker loads it in a few tenths of a second (dispatch's rule 3):
                        # the sorts need not wait for this template to load it first.
                        entry["error"] = SKIPPED
                    else:
                        if recording is None:
                            recording = _recording(scratch / "recording")
                        # Sequential joblib whatever the threads: a process pool left behind would
                        # make the template unfit to fork (hdbscan asks for four processes).
                        with applied_threads(thread_count(job, os.environ)), _sequential_joblib():
                            run_job_sorter(job, recording, scratch / job.si_sorter_name)
                        if cache is not None:  # marked before the next template may look
                            jit_cache.mark_sorter(cache, job.si_sorter_name, *_since(before))
            except Exception as exc:  # noqa: BLE001 - reported; the sorts compile as they would have
                entry["error"] = f"{type(exc).__name__}: {exc}"
            loaded, compiled = _since(before)
            entry.update(seconds=round(time.monotonic() - started, 3), loaded=loaded, compiled=compiled)
            entries.append(entry)
    except Exception as exc:  # noqa: BLE001 - the JIT cache could not be set up: nothing is warm
        entries = [
            {"sorter_name": s["sorter_name"], "si_sorter_name": s["si_sorter_name"], "error": f"{type(exc).__name__}: {exc}"}
            for s in spec["sorters"]
        ]
    finally:
        tqdm.tqdm.monitor_interval = monitor_interval
        shutil.rmtree(scratch, ignore_errors=True)
    write_json_atomic(folder / REPORT_FILE, {"sorters": entries, "pid": os.getpid()})
    return entries


def void(text: str, reason: str) -> None:
    """Report every sorter of the warm-up ``text`` as not warm, for ``reason`` (the template starts again without it).

    Parameters
    ----------
    text : str
        The warm-up (:func:`encode`).
    reason : str
        Why.
    """
    spec = json.loads(text)
    entries = [{"sorter_name": s["sorter_name"], "si_sorter_name": s["si_sorter_name"], "error": reason} for s in spec["sorters"]]
    write_json_atomic(Path(spec["folder"]) / REPORT_FILE, {"sorters": entries, "pid": os.getpid()})


def fit_to_fork() -> str | None:
    """Why this process (a template after its warm-up) may not fork workers, or None when it may.

    Returns
    -------
    str or None
        The reason: a child process, or a Python thread other than this one.
    """
    from sf_assets.engines.worker_clone import child_processes

    children = child_processes()
    if children:
        return f"child processes {', '.join(children)}"
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    return f"threads {', '.join(others)}" if others else None


def _since(before: tuple[int, int]) -> tuple[int, int]:
    """Functions loaded from the JIT cache and compiled since :func:`jit_cache.counts` gave ``before``."""
    loaded, compiled = (now - then for now, then in zip(jit_cache.counts(), before))
    return loaded, compiled


def _recording(folder: Path):
    """The synthetic recording every warm-up sorts, written as a binary folder (sorters need one they can reload)."""
    from spikeinterface.core import generate_ground_truth_recording

    recording, _sorting = generate_ground_truth_recording(durations=[RECORDING_S], num_channels=CHANNELS, seed=0)
    shutil.rmtree(folder, ignore_errors=True)
    return recording.save(folder=folder, verbose=False)


@contextlib.contextmanager
def _one_at_a_time(cache: Path | None, sorter: str, deadline: float):
    """Hold ``<cache>/sorters/<sorter>.warm-up.lock`` (``flock``; nothing to hold without a cache).

    Yields True once held, False if another process still held it at ``deadline`` (monotonic seconds).
    """
    if cache is None:
        yield True
        return
    path = cache / jit_cache.SORTER_MARKS / f"{sorter}.warm-up.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(LOCK_POLL_S)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _sequential_joblib():
    """joblib's sequential backend for the block (joblib comes with scikit-learn)."""
    from joblib import parallel_config

    with parallel_config(backend="sequential"):
        yield
