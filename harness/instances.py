"""Temporary Dagster instances configured as the project's ``dagster.yaml`` configures the real one.

Runs launched on them take the path every run takes: the run queue (with the
project's concurrency limits) and the project's run launcher, which forks
them in the host's sort service.  Storage stays Dagster's test default, in a
temporary folder.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def project_instance_overrides() -> dict:
    """The run queue and run launcher sections of the repository's ``dagster.yaml``."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    return {key: config[key] for key in ("run_coordinator", "run_launcher")}


@contextmanager
def project_instance(temp_dir: str, overrides: dict | None = None):
    """``dg.instance_for_test`` with the project's run queue and launcher."""
    with dg.instance_for_test(temp_dir=temp_dir, overrides={**project_instance_overrides(), **(overrides or {})}) as instance:
        yield instance


def run_once_it_leaves_starting(instance: dg.DagsterInstance, run_id: str, within_s: float) -> "dg.DagsterRun":
    """The run once its status is no longer STARTING; fails the calling test if it stays so ``within_s``."""
    import time

    deadline = time.monotonic() + within_s
    while (run := instance.get_run_by_id(run_id)).status == dg.DagsterRunStatus.STARTING:
        assert time.monotonic() < deadline, f"run {run_id} stayed STARTING for {within_s:g} s"
        time.sleep(0.1)
    return run
