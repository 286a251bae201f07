"""The report of a sort refused before any worker started.

A spec may name a sorter that cannot run here (no spikeinterface wrapper any
more, its packages missing, or a container-only sorter without a container
runtime).  SpikeForest recorded such jobs as failed cells, so sf-assets does
too: the pair gets the same errored record as a sort that crashed, with a
console output that states the reason, instead of no record at all.
"""
from __future__ import annotations

import time
from pathlib import Path

from sf_assets.core.errors import SortFailure
from sf_assets.engines.job import CONSOLE_FILE, SortJob, SortReport

REFUSED = "refused"
"""``SortReport.details["stage"]`` of a sort that never started."""


def refused_report(job: SortJob, failure: SortFailure) -> SortReport:
    """An errored :class:`SortReport` for ``job``, refused with ``failure`` before it started.

    Writes the job's console file (in its work folder) with one line naming
    the sort and the reason, so the errored record's ``consoleOutUri`` says
    why this cell is empty.

    Parameters
    ----------
    job : SortJob
        The sort that was not run.
    failure : SortFailure
        Why (its ``failure_class`` is kept, e.g. ``environment``).

    Returns
    -------
    SortReport
        ``errored=True``, no CPU time, ``details={"stage": "refused"}``.
    """
    work_dir = Path(job.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    console = work_dir / CONSOLE_FILE
    console.write_text(f"[sf-assets] {job.label} was not sorted: {failure.failure_class} failure: {failure}\n")
    now = time.time()
    return SortReport(
        errored=True,
        start_time=now,
        end_time=now,
        elapsed_s=0.0,
        cpu_time_s=0.0,
        console_path=str(console),
        error_message=str(failure),
        failure_class=failure.failure_class,
        details={"stage": REFUSED},
    )
