"""Imported once by the sort service's run host, so that forked runs start at once.

A run's first instance imports Dagster's storage, scheduler and daemon modules
(about 300 of them, 0.6 s of CPU); creating a throwaway SQLite instance here
imports them in the fork server instead of in every run.  The run execution
entry point and the project's run launcher come along; the comparison's
numba-compiled spike matching is compiled once here; and the run processes
keep what Dagster's SQLite storage would rebuild for every run
(:mod:`sf_assets.orchestration.storage_reuse`).
"""
import shutil
import tempfile

import dagster as dg
import dagster._cli.api  # noqa: F401  (the run execution entry point; no public API names it)

import sf_assets.orchestration.run_launcher  # noqa: F401
from sf_assets.orchestration.storage_reuse import read_migration_scripts_once, share_event_log_engines

# Before the throwaway instance below, which reads the scripts the first time.
read_migration_scripts_once()
share_event_log_engines()
_folder = tempfile.mkdtemp(prefix="sf-assets-preload-")
try:
    with dg.DagsterInstance.local_temp(_folder):
        pass
finally:
    shutil.rmtree(_folder, ignore_errors=True)

# The comparison's spike matching is numba-compiled on first use (a few seconds of CPU):
# compile it here once, so that every forked run inherits it compiled.
import numpy as np  # noqa: E402
from spikeinterface.core import NumpySorting  # noqa: E402

from sf_assets.core.comparison import compare_to_ground_truth  # noqa: E402

_spikes = NumpySorting.from_samples_and_labels([np.array([100, 2000, 5000])], [np.array([0, 0, 1])], 30000.0)
compare_to_ground_truth(_spikes, _spikes)
del _spikes
