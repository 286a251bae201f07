"""What one sort is asked to do, and what it reports back.

A :class:`SortJob` is a plain, JSON-serializable description: the supervising
process writes it to the sort's work folder and the worker process (local,
inside a container, or on a Slurm node) reads it back.  The worker answers with
two small JSON files in the same folder, :data:`CANARY_FILE` as soon as the
canary is decided and :data:`RESULT_FILE` at the end, so every engine reports
in exactly the same way.  The supervisor may write :data:`CANARY_FILE` first,
with its verdict on a canary that hangs (:func:`settle_canary`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sf_assets.core.atomic import create_json_once

JOB_FILE = "job.json"
CANARY_FILE = "canary.json"
RESULT_FILE = "result.json"
CONSOLE_FILE = "console.txt"
# Written by a warm worker (see sf_assets.engines.warm_worker): when it took the job, and how it ended.
WORKER_FILE = "worker.json"
EXIT_FILE = "exit.json"
# Between a job's folder and its submission's token on a warm worker's command line (the token goes
# back in EXIT_FILE, so an earlier try's exit file in the same folder is not taken for this one's).
TOKEN_SEPARATOR = "\t"

# Bump when the worker changes what it produces for the same inputs: the job
# cache and the schedule that re-runs stale sortings read it.
SORT_ENGINE_VERSION = "3"  # 2: thread counts applied per sort, provenance recorded; 3: unseeded draws seeded


@dataclass(frozen=True)
class SortJob:
    """One (sorter, recording) sort.

    Attributes
    ----------
    sorter_name : str
        catalog name as written in the spec (e.g. ``MountainSort5``).
    si_sorter_name : str
        spikeinterface's name (e.g. ``mountainsort5``).
    params : dict[str, Any]
        sorter parameters as given in the spec (spikeinterface merges its defaults; names were validated
        against them already).
    recording_uri : str
        kachery URI of the SpikeForest recording object.
    label : str
        the sorting label ``SORTER/STUDY/RECORDING`` (names stored objects).
    kachery_dir : str
        root of the kachery store the worker reads and writes.
    work_dir : str
        folder owned by this sort attempt alone (see engines.work_dirs).
    canary_first_n_s : float | None
        canary window in seconds (None, 0 or NaN: no canary).
    container_image : str | None
        run the sorter in this image (None: in this environment).
    container_engine : str
        ``docker`` or ``singularity`` when an image is given.
    kachery_local_only : bool
        False when kachery-cloud client keys are configured.
    threads : int | None
        the thread count the sort's numerical libraries get (None: the one its worker was started with, see
        :func:`sf_assets.engines.provenance.thread_count`).
    jit_cache_dir : str | None
        where the worker keeps the sorter's numba-compiled code for the next worker to load
        (:mod:`sf_assets.engines.jit_cache`; None: it compiles in every new worker).
    """

    sorter_name: str
    si_sorter_name: str
    params: dict[str, Any]
    recording_uri: str
    label: str
    kachery_dir: str
    work_dir: str
    canary_first_n_s: float | None = None
    container_image: str | None = None
    container_engine: str = "docker"
    kachery_local_only: bool = True
    threads: int | None = None
    jit_cache_dir: str | None = None

    def to_json(self) -> str:
        """The job as the worker reads it from its work folder.

        Returns
        -------
        str
            JSON with sorted keys, so one job always gives the same bytes.
        """
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SortJob":
        """A job written by :meth:`to_json`.

        Parameters
        ----------
        text : str
            The JSON.

        Returns
        -------
        SortJob
            The job.
        """
        return cls(**json.loads(text))


SUPERVISOR = "supervisor"
"""``CanaryReport.decided_by`` of a verdict the supervisor wrote (a hung canary): it stands over the worker's."""


def settle_canary(work_dir: Path, report: "CanaryReport") -> "CanaryReport":
    """Write ``report`` as the try's canary unless one is there already; return the canary that stands.

    The worker writes its canary once decided, and the supervisor its verdict
    once the canary has taken too long (hung): the first to write decides, so
    a canary that finishes as the supervisor calls it hung cannot go on to
    the full sort, and the supervisor never reports a verdict the worker
    ignored.  A try's folder is its own (a Slurm retry gets a new one), so the
    only other writer is the try's other side.

    Parameters
    ----------
    work_dir : Path
        The try's folder.
    report : CanaryReport
        This side's canary.

    Returns
    -------
    CanaryReport
        ``report`` itself if it was written first, else the one found there.
    """
    path = Path(work_dir) / CANARY_FILE
    while True:
        if create_json_once(path, dataclasses.asdict(report)):
            return report
        there = read_json_if_present(path)
        if there is not None:
            return CanaryReport(**there)
        time.sleep(0.01)  # not there yet (the other side's rename, without hard links) or removed since


@dataclass(frozen=True)
class CanaryReport:
    """Outcome of the short smoke-test sort that precedes the full sort.

    ``status`` is one of ``off`` (no window configured), ``skipped`` (recording
    shorter than the window), ``passed``, ``failed`` (a classified failure:
    the full sort does not start) and ``unexpected_error`` (logged; the full
    sort proceeds).
    """

    status: str
    window_s: float | None = None
    num_units: int | None = None
    elapsed_s: float | None = None
    failure_class: str | None = None
    retry_advice: str | None = None
    message: str | None = None
    decided_by: str = "worker"
    """``worker``, or :data:`SUPERVISOR` for a hung canary its supervisor decided."""

    @property
    def blocks_full_sort(self) -> bool:
        """Does the canary's verdict stop the full sort? Only a classified failure does."""
        return self.status == "failed"


@dataclass(frozen=True)
class SortReport:
    """Outcome of a whole sort attempt, as the supervisor saw it."""

    errored: bool
    start_time: float
    end_time: float
    elapsed_s: float
    cpu_time_s: float | None
    console_path: str
    canary: CanaryReport | None = None
    sorting_object_uri: str | None = None
    num_units: int | None = None
    timed_out: bool = False
    error_message: str | None = None
    failure_class: str | None = None
    exit_code: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def read_json_if_present(path: Path) -> Any | None:
    """Read a JSON file another process may not have written yet.

    Parameters
    ----------
    path : Path
        The file.

    Returns
    -------
    Any or None
        Its content, or None when it does not exist (yet).
    """
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
