"""Imported once by the sort service's run host, so that forked runs start at once.

A run's first instance imports Dagster's storage, scheduler and daemon modules
(about 300 of them, 0.6 s of CPU); creating a throwaway SQLite instance here
imports them in the fork server instead of in every run.  The run execution
entry point and the project's run launcher come along.
"""
import shutil
import tempfile

import dagster as dg
import dagster._cli.api  # noqa: F401  (the run execution entry point)

import sf_assets.run_launcher  # noqa: F401

_folder = tempfile.mkdtemp(prefix="sf-assets-preload-")
try:
    with dg.DagsterInstance.local_temp(_folder):
        pass
finally:
    shutil.rmtree(_folder, ignore_errors=True)
