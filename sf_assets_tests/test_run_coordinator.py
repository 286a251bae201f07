"""The run coordinator dagster.yaml names: Dagster's queue, and the backfill daemon's pass interval.

Each check builds the instance in a fresh interpreter, as the daemon process
does, so that the interval it sets (a module constant of Dagster's daemon)
does not leak into this process.  test_dagster_dev times the passes of a real
daemon.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from harness.dagster_dev import write_instance_yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Builds the instance and asks which daemons it needs, as `dagster-daemon run` does before it starts
# them; prints the backfill daemon's interval before and after, and the queue's settings.
DAEMON_START = """
import json, sys
import dagster as dg
from dagster._daemon import controller
from sf_assets.orchestration.launches import queue_capacity
if len(sys.argv) > 2:
    dg.__version__ = sys.argv[2]
before = controller.DEFAULT_DAEMON_INTERVAL_SECONDS
with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    daemons = instance.get_required_daemon_types()
    queue = instance.get_concurrency_config().run_queue_config  # what the queue's daemon applies
    print(json.dumps({
        "before": before,
        "after": controller.DEFAULT_DAEMON_INTERVAL_SECONDS,
        "coordinator": type(instance.run_coordinator).__name__,
        "max_concurrent_runs": queue.max_concurrent_runs,
        "tag_limits": len(queue.tag_concurrency_limits),
        "dequeue_interval_s": instance.run_coordinator.dequeue_interval_seconds,
        "daemons": daemons,
        "command_line_keeps": queue_capacity(instance),  # runs a command-line launch keeps queued or running
    }))
"""


def _daemon_start(home: Path, *version: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-c", DAEMON_START, str(home), *version], env=env, capture_output=True, text=True, timeout=120
    )


def _instance_home(tmp_path: Path, template: Path = PROJECT_ROOT / "dagster.yaml", edit=None) -> Path:
    home = tmp_path / "home"
    path = write_instance_yaml(home, template)
    if edit:
        path.write_text(edit(path.read_text()))
    return home


def test_the_daemon_process_passes_over_backfills_at_the_configured_interval(tmp_path):
    done = _daemon_start(_instance_home(tmp_path))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["coordinator"] == "CampaignRunCoordinator"
    assert seen["before"] == 30
    assert seen["after"] == 10
    assert "BACKFILL" in seen["daemons"] and "QUEUED_RUN_COORDINATOR" in seen["daemons"]
    # Dagster's queue settings are read as before.
    assert (seen["max_concurrent_runs"], seen["tag_limits"], seen["dequeue_interval_s"]) == (6, 1, 1)
    assert seen["command_line_keeps"] == 6


def test_the_interval_follows_dagster_yaml(tmp_path):
    home = _instance_home(tmp_path, edit=lambda text: text.replace("backfill_pass_interval_seconds: 10", "backfill_pass_interval_seconds: 4"))
    done = _daemon_start(home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["after"] == 4


def test_another_dagster_release_keeps_its_own_backfill_interval(tmp_path):
    done = _daemon_start(_instance_home(tmp_path), "1.14.0")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["after"] == seen["before"] == 30
    assert "backfill_pass_interval_seconds=10 not applied: written for Dagster 1.13.27, running 1.14.0" in done.stderr


def test_an_interval_under_a_second_is_refused_naming_the_key(tmp_path):
    home = _instance_home(tmp_path, edit=lambda text: text.replace("backfill_pass_interval_seconds: 10", "backfill_pass_interval_seconds: 0"))
    done = _daemon_start(home)
    assert done.returncode != 0
    assert "backfill_pass_interval_seconds: expected a whole number of seconds >= 1, got 0" in done.stderr


def test_every_deployment_uses_the_campaign_run_coordinator():
    for path in (PROJECT_ROOT / "dagster.yaml", *sorted((PROJECT_ROOT / "deployments").glob("*/dagster.yaml"))):
        coordinator = yaml.safe_load(path.read_text())["run_coordinator"]
        assert (coordinator["module"], coordinator["class"]) == (
            "sf_assets.orchestration.run_coordinator",
            "CampaignRunCoordinator",
        ), path
        assert coordinator["config"]["backfill_pass_interval_seconds"] == 10, path


def test_a_run_limit_set_both_here_and_under_concurrency_runs_is_refused(tmp_path):
    """Dagster refuses that for a class named QueuedRunCoordinator; the subclass must too, not ignore one."""
    home = _instance_home(tmp_path, edit=lambda text: text + "\nconcurrency:\n  runs:\n    max_concurrent_runs: 3\n")
    done = _daemon_start(home)
    assert done.returncode != 0
    assert "run_coordinator.config.max_concurrent_runs is incompatible with the `concurrency` section (it has runs)" in done.stderr
    # Without the queue's own limit, concurrency.runs is Dagster's to apply.
    def move_limits(text: str) -> str:
        config = yaml.safe_load(text)
        for key in ("max_concurrent_runs", "tag_concurrency_limits"):
            del config["run_coordinator"]["config"][key]
        return yaml.safe_dump({**config, "concurrency": {"runs": {"max_concurrent_runs": 3}}})

    home = _instance_home(tmp_path / "without", edit=move_limits)
    done = _daemon_start(home)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["max_concurrent_runs"] == seen["command_line_keeps"] == 3
