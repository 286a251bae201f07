"""The process that actually sorts: canary first, then the full sort.

Run as ``python -m sf_assets.engines.worker WORK_DIR``.  Every engine starts
this same module (directly, or through ``srun`` on a Slurm node), so console
output, canary classification and the stored result are identical whatever
runs it.  Canary and full sort share this one process on purpose: a sorter's
imports and numba compilation (about 20 s for spykingcircus2) are paid once.

Exit codes: 0 sorted, 1 the full sort failed, 3 the canary stopped the full
sort (a classified failure, or its supervisor's verdict that it hung, which
came first), 2 the job itself is unusable.

``python -m sf_assets.engines.worker --serve`` is the same worker kept warm
for one sort after another (see :mod:`sf_assets.engines.warm_worker`): it
reads work folders from its standard input, one per line (each with its
submission's token after a tab), sends its console to each job's console file
while that job runs, and answers each with
:data:`~sf_assets.engines.job.EXIT_FILE` (the exit code, the job's CPU time
and the token) instead of exiting.  The compiled code of every sorter it ran stays in
it, as it does in the reused processes of ``run_sorter_jobs``.  A ``fork``
line instead of a folder asks it for a copy of itself, made between two jobs
(:mod:`sf_assets.engines.worker_clone`): another slot then starts warm.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from sf_assets.core.atomic import write_json_atomic
from sf_assets.core.canary import CanaryDecision, classify_sort_error, classify_sort_output, plan_canary
from sf_assets.core.errors import SortFailure
from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.engines import jit_cache, stop_signals
from sf_assets.engines.container import container_run_sorter_kwargs
from sf_assets.engines.work_dirs import attempt_in_use
from sf_assets.engines.worker_clone import FORK_COMMAND, fork_copy
from sf_assets.engines.job import (
    CONSOLE_FILE,
    EXIT_FILE,
    JOB_FILE,
    RESULT_FILE,
    TOKEN_SEPARATOR,
    WORKER_FILE,
    CanaryReport,
    SortJob,
    settle_canary,
)
from sf_assets.engines.provenance import applied_threads, draws_seed, sort_provenance, thread_count
from sf_assets.engines.seeded_draws import seeded_unseeded_draws

# The template that forked this worker (set by serve_forked): it adopts the worker's copies.
_TEMPLATE_PID: int | None = None

EXIT_SORTED = 0
EXIT_SORT_FAILED = 1
EXIT_BAD_JOB = 2
EXIT_CANARY_STOPPED = 3


def _say(message: str) -> None:
    print(f"[sf-assets worker] {message}", flush=True)


def _error_text(exc: BaseException, sorter_folder: Path) -> str:
    """The exception plus the sorter's own log, which holds the real trace."""
    parts = [f"{type(exc).__name__}: {exc}"]
    log_file = sorter_folder / "spikeinterface_log.json"
    try:
        log = json.loads(log_file.read_text())
        if log.get("error_trace"):
            parts.append(str(log["error_trace"]))
    except (OSError, ValueError):
        pass
    return "\n".join(parts)


def _wipe(folder: Path, *, strict: bool) -> None:
    if not folder.exists():
        return
    if strict:
        shutil.rmtree(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)


def run_sorter_kwargs(job: SortJob, folder: Path) -> dict:
    """Everything ``run_sorter`` gets besides the sorter name and the recording.

    The container keyword (``docker_image`` / ``singularity_image``) comes
    from the job's image and engine; the sorter's parameters follow.

    Parameters
    ----------
    job : SortJob
        The sort.
    folder : Path
        The sorter's output folder.

    Returns
    -------
    dict
        Keyword arguments.
    """
    return {
        "folder": str(folder),
        "remove_existing_folder": True,
        "verbose": True,
        **container_run_sorter_kwargs(job.container_image, job.container_engine),
        **job.params,
    }


def run_job_sorter(job: SortJob, recording, folder: Path):
    """``run_sorter`` with the job's sorter and params, its unseeded draws seeded (the canary, the sort, a warm-up).

    Parameters
    ----------
    job : SortJob
        The sorter, its params and how it is run (container, seed).
    recording : BaseRecording
        What to sort.
    folder : Path
        The sorter's output folder.

    Returns
    -------
    BaseSorting
        The sorting.
    """
    from spikeinterface.sorters import run_sorter

    seed = draws_seed(job, resolve_sorter(job.sorter_name))
    with seeded_unseeded_draws(seed) if seed is not None else contextlib.nullcontext():
        return run_sorter(job.si_sorter_name, recording, **run_sorter_kwargs(job, folder))


def run_canary(job: SortJob, recording, canary_dir: Path) -> CanaryReport:
    """Sort the first ``canary_first_n_s`` seconds with the same sorter and params.

    A classified failure means the full sort would fail the same way, so it
    must not start.  Anything unexpected is reported but lets the full sort
    proceed: the canary is a smoke test, not a second judge.  Interrupts are
    never swallowed.

    Parameters
    ----------
    job : SortJob
        The sort.
    recording : BaseRecording
        The whole recording (the window is cut here).
    canary_dir : Path
        The canary's own folder (wiped at entry, removed at exit).

    Returns
    -------
    CanaryReport
        Passed, failed (classified), unexpected, skipped or off.
    """
    plan = plan_canary(recording.get_total_duration(), job.canary_first_n_s)
    if plan.decision is not CanaryDecision.RUN:
        return CanaryReport(status=plan.decision.value, window_s=job.canary_first_n_s, message=plan.reason)
    window_s = plan.window_s
    _wipe(canary_dir, strict=True)
    _say(f"canary: sorting the first {window_s:g} s with {job.sorter_name}")
    started = time.monotonic()
    try:
        sorting = run_job_sorter(job, recording.time_slice(0.0, window_s), canary_dir / "sorter")
    except (KeyboardInterrupt, SystemExit):
        _wipe(canary_dir, strict=False)
        raise
    except Exception as exc:  # classified below; the rest only logged
        elapsed_s = time.monotonic() - started
        failure = classify_sort_error(job.si_sorter_name, _error_text(exc, canary_dir / "sorter"))
        _wipe(canary_dir, strict=False)
        if failure is None:
            _say(f"canary: unexpected error ({type(exc).__name__}: {exc}); the full sort proceeds")
            return CanaryReport(
                status="unexpected_error",
                window_s=window_s,
                elapsed_s=elapsed_s,
                message=f"{type(exc).__name__}: {exc}",
            )
        return _failed(window_s, elapsed_s, None, failure)
    elapsed_s = time.monotonic() - started
    num_units = len(sorting.unit_ids)
    _wipe(canary_dir, strict=False)
    failure = classify_sort_output(job.si_sorter_name, num_units)
    if failure is not None:
        return _failed(window_s, elapsed_s, num_units, failure)
    _say(f"canary: passed with {num_units} units in {elapsed_s:.1f} s")
    return CanaryReport(status="passed", window_s=window_s, num_units=num_units, elapsed_s=elapsed_s)


def _failed(window_s, elapsed_s, num_units, failure: SortFailure) -> CanaryReport:
    _say(f"canary: {failure.failure_class} failure: {failure}")
    return CanaryReport(
        status="failed",
        window_s=window_s,
        num_units=num_units,
        elapsed_s=elapsed_s,
        failure_class=failure.failure_class,
        retry_advice=failure.retry_advice,
        message=str(failure),
    )


def sort(work_dir: Path) -> int:
    """Run one job from ``work_dir``; write canary and result files there.

    The sort runs with its thread count applied (see
    :mod:`sf_assets.engines.provenance`), and every result, errored or not,
    carries its provenance: seeds, threads, library versions, image.

    Parameters
    ----------
    work_dir : Path
        The prepared job's folder.

    Returns
    -------
    int
        ``EXIT_SORTED``, ``EXIT_SORT_FAILED`` or ``EXIT_CANARY_STOPPED``; the result file says why,
        except after the supervisor's verdict on a hung canary, which the canary file holds.
    """
    from sf_assets.stores.data import load_recording
    from sf_assets.stores.kachery import KacheryStore

    job = SortJob.from_json((work_dir / JOB_FILE).read_text())
    jit = _JitUsage(jit_cache.enable(Path(job.jit_cache_dir)) if job.jit_cache_dir else None)
    store = KacheryStore(job.kachery_dir, local_only=job.kachery_local_only)
    recording = load_recording(job.recording_uri, store)
    threads = thread_count(job, os.environ)
    with applied_threads(threads):
        provenance = sort_provenance(job, resolve_sorter(job.sorter_name), threads)
        return _sort_recording(job, work_dir, store, recording, provenance, jit)


class _JitUsage:
    """What this job's sorter loaded from the JIT cache and compiled (:mod:`sf_assets.engines.jit_cache`)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self._before = jit_cache.counts()

    def result_fields(self) -> dict:
        """``{"jit_cache": {...}}`` for the result file, said on the console too; empty without a cache."""
        if self.folder is None:
            return {}
        loaded, compiled = self._counts()
        _say(f"numba: {loaded} function(s) loaded from the JIT cache ({self.folder}), {compiled} compiled")
        return {"jit_cache": {"folder": str(self.folder), "loaded": loaded, "compiled": compiled}}

    def _counts(self) -> tuple[int, int]:
        loaded, compiled = (now - before for now, before in zip(jit_cache.counts(), self._before))
        return loaded, compiled

    def mark_sorted(self, sorter: str) -> None:
        """After a sort that ended well: the cache holds ``sorter``'s code, a new worker need not compile it."""
        if self.folder is not None:
            jit_cache.mark_sorter(self.folder, sorter, *self._counts())


def _sort_recording(job: SortJob, work_dir: Path, store, recording, provenance: dict, jit: _JitUsage) -> int:
    from sf_assets.stores.data import store_sorting

    canary = run_canary(job, recording, work_dir / "_canary")
    standing = settle_canary(work_dir, canary)
    if standing is not canary:
        # The supervisor's canary timeout came first and its verdict (hung) stands, however
        # this canary ended: the full sort must not start while the supervisor stops this worker.
        _say(f"canary: decided by the {standing.decided_by} before it finished; the full sort does not start")
        return EXIT_CANARY_STOPPED
    if canary.blocks_full_sort:
        write_json_atomic(
            work_dir / RESULT_FILE,
            {
                "errored": True,
                "stage": "canary",
                "failure_class": canary.failure_class,
                "error_message": canary.message,
                "provenance": provenance,
                **jit.result_fields(),
            },
        )
        return EXIT_CANARY_STOPPED

    sorter_dir = work_dir / "sorter"
    threads = provenance["threads"]
    _say(
        f"sorting {job.label} with {job.sorter_name} ({job.si_sorter_name}), params {job.params}, "
        f"threads {threads['applied'] or 'as started'} (numba {threads['numba']})"
    )
    started = time.monotonic()
    try:
        sorting = run_job_sorter(job, recording, sorter_dir)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        text = _error_text(exc, sorter_dir)
        print(text, flush=True)
        failure = classify_sort_error(job.si_sorter_name, text)
        write_json_atomic(
            work_dir / RESULT_FILE,
            {
                "errored": True,
                "stage": "sort",
                "failure_class": failure.failure_class if failure else None,
                "error_message": f"{type(exc).__name__}: {exc}",
                "provenance": provenance,
                **jit.result_fields(),
            },
        )
        return EXIT_SORT_FAILED
    sort_elapsed_s = time.monotonic() - started
    jit.mark_sorted(job.si_sorter_name)
    uri = store_sorting(sorting, store, job.label)
    write_json_atomic(
        work_dir / RESULT_FILE,
        {
            "errored": False,
            "stage": "done",
            "sorting_object_uri": uri,
            "num_units": len(sorting.unit_ids),
            "sort_elapsed_s": sort_elapsed_s,
            "provenance": provenance,
            **jit.result_fields(),
        },
    )
    _say(f"sorted {job.label}: {len(sorting.unit_ids)} units in {sort_elapsed_s:.1f} s")
    return EXIT_SORTED


def _die_with_parent(parent: int | None = None, poll_s: float = 1.0) -> None:
    """End this worker (and its sorter's children) when its supervisor dies.

    The worker runs in its own process group so a timeout can stop the whole
    group; the other side of that is that a SIGKILLed supervisor would leave
    it sorting as an orphan, writing into a folder a re-run is about to reuse.
    ``parent`` is the process it must outlive (None: the current parent); a
    worker forked by the template names the template, which may already be
    gone by the time the worker looks.
    """
    import signal
    import threading

    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os.killpg(0, signal.SIGKILL)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def run_job(work_dir: Path) -> int:
    """Sort the job in ``work_dir``; a failure to even load it is reported like a sort error.

    Parameters
    ----------
    work_dir : Path
        The prepared job's folder.

    Returns
    -------
    int
        The exit code.
    """
    try:
        return sort(work_dir)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # loading failed: report it like any sort error
        traceback.print_exc()
        sys.stdout.flush()
        write_json_atomic(
            work_dir / RESULT_FILE,
            {"errored": True, "stage": "load", "failure_class": None, "error_message": f"{type(exc).__name__}: {exc}"},
        )
        return EXIT_SORT_FAILED


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have been reaped.

    Returns
    -------
    float
        Seconds.
    """
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _ConsoleTo:
    """Point this process's stdout and stderr at ``path`` for the duration of a job.

    The file descriptors themselves are redirected, so C code and child
    processes follow.
    """

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        return False


# What spikeinterface's own sorters (simple, spykingcircus2, tridesclous2) import inside their first
# sort: with these imported before it, a new worker's first sort of a sorter whose code the JIT cache
# holds took 0.3 s here instead of 2.3 s (scipy.signal alone about 1 s), and forked workers share them.
SORTER_MODULES = (
    "numba",
    "scipy.signal",
    "sklearn",
    "hdbscan",
    "spikeinterface.preprocessing",
    "spikeinterface.curation",
    "spikeinterface.sortingcomponents.peak_detection",
    "spikeinterface.sortingcomponents.peak_selection",
    "spikeinterface.sortingcomponents.peak_localization",
    "spikeinterface.sortingcomponents.waveforms",
    "spikeinterface.sortingcomponents.clustering",
    "spikeinterface.sortingcomponents.matching",
)


def preload() -> None:
    """Import what the sorts need while no job waits for it (a warm worker starts early).

    Also the modules spikeinterface's own sorters import lazily
    (:data:`SORTER_MODULES`): the sort service's template imports them once,
    about a second of CPU, and every worker it forks starts with them.  A
    failure here is not reported: the first job imports the same modules
    again and reports the error in its own console; a module that is not
    installed is left to the sorters that need it.
    """
    try:
        import spikeinterface.sorters  # noqa: F401

        import sf_assets.stores.data  # noqa: F401
        import sf_assets.stores.kachery  # noqa: F401
    except Exception:
        return
    for name in SORTER_MODULES:
        try:
            importlib.import_module(name)
        except Exception:
            pass


def serve(commands, copy_of: int | None = None) -> int:
    """Run the jobs named on ``commands`` (a text stream, one work folder and its token per line) until it ends.

    Parameters
    ----------
    commands : TextIO
        The command stream.
    copy_of : int or None
        The worker this one is a copy of (:mod:`sf_assets.engines.worker_clone`), for each job's
        :data:`~sf_assets.engines.job.WORKER_FILE`.

    Returns
    -------
    int
        0 once the stream ends.
    """
    preload()
    jobs_done = 0
    while True:
        line = commands.readline()
        if not line:
            return 0
        if line.startswith(FORK_COMMAND):  # a copy of this warm worker for another slot
            fork_copy(line, _TEMPLATE_PID, _serve_as_copy, commands)
            continue
        folder, _, token = line.rstrip("\n").partition(TOKEN_SEPARATOR)
        work_dir = Path(folder.strip())
        with attempt_in_use(work_dir), _ConsoleTo(work_dir / CONSOLE_FILE):
            before = cpu_seconds()
            write_json_atomic(
                work_dir / WORKER_FILE,
                {"pid": os.getpid(), "cpu_before_s": before, "jobs_done": jobs_done, "copy_of": copy_of},
            )
            code = run_job(work_dir)
            cpu_time_s = cpu_seconds() - before
        jobs_done += 1
        write_json_atomic(work_dir / EXIT_FILE, {"exit_code": code, "cpu_time_s": cpu_time_s, "token": token})


def _serve_as_copy(commands, source: int) -> int:
    """The ``--serve`` loop in a copy of worker ``source``: it dies with the template that adopted it."""
    _die_with_parent(_TEMPLATE_PID)
    return serve(commands, copy_of=source)


def _commands_from_stdin():
    """The command pipe, moved off file descriptor 0 so no sorter's child can read it."""
    private = os.dup(0)  # not inherited by children
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return os.fdopen(private, "r", encoding="utf-8")


def serve_forked(parent: int) -> int:
    """The ``--serve`` loop in a worker forked by the template (:mod:`sf_assets.engines.worker_template`).

    Parameters
    ----------
    parent : int
        The template's pid: the worker stops when it is gone.

    Returns
    -------
    int
        0 once the command stream ends.
    """
    global _TEMPLATE_PID
    _TEMPLATE_PID = parent
    _die_with_parent(parent)
    with _commands_from_stdin() as commands:
        return serve(commands)


def main(argv: list[str] | None = None) -> int:
    """``python -m sf_assets.engines.worker WORK_DIR`` (one job) or ``--serve`` (jobs from stdin, warm).

    Parameters
    ----------
    argv : list[str] or None
        The arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        The job's exit code, or the serving loop's with ``--serve``; ``EXIT_BAD_JOB`` for bad usage.
    """
    argv = sys.argv[1:] if argv is None else argv
    stop_signals.restore()  # a stop must stop this worker, whoever started it
    _die_with_parent()
    if argv == ["--serve"]:
        with _commands_from_stdin() as commands:
            return serve(commands)
    if len(argv) != 1:
        print("usage: python -m sf_assets.engines.worker WORK_DIR | --serve", file=sys.stderr)
        return EXIT_BAD_JOB
    with attempt_in_use(Path(argv[0])):
        return run_job(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
