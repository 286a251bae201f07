"""Helpers for tests of the sensors, the schedule and the sorting commands.

- :func:`write_manifest` writes a copy of a studysets manifest keeping only
  some recordings, so a test sorts one or two pairs, not the whole studyset.
- :func:`submit_backfill` does what the sensor daemon does with a backfill
  request, without running it.
- :func:`deployment` runs a code location the way ``dagster dev`` does, but in
  this process: the real sensor daemon and backfill daemon iterate on a
  temporary instance whose runs execute synchronously, so a test can follow a
  sensor tick through its backfill to the materialized sortings.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

# The location file rebuilds the project's Definitions with resources read from the
# environment when the location loads (sf_assets.definitions read it at first import).
# Its runs execute their steps in the run's process: a subprocess per step would only
# add an import of the project (seconds) to each step of these tests.
LOCATION_FILE = """\
import dagster as dg

from sf_assets.definitions import defs as project
from sf_assets.orchestration.resources import default_resources

defs = dg.Definitions(
    assets=project.assets,
    jobs=project.jobs,
    sensors=project.sensors,
    schedules=project.schedules,
    resources=default_resources(),
    executor=dg.in_process_executor,
)
"""


def write_manifest(source: Path, target: Path, keep: Iterable[tuple[str, str]]) -> Path:
    """Copy manifest ``source`` to ``target`` with only the (study, recording) names in ``keep``.

    Study sets and studies stay, even when emptied, so a spec naming them still validates.
    """
    keep = set(keep)
    document = json.loads(Path(source).read_text())
    for study_set in document["StudySets"]:
        for study in study_set["studies"]:
            study["recordings"] = [r for r in study["recordings"] if (r["studyName"], r["name"]) in keep]
    target.write_text(json.dumps(document, indent=2))
    return target


def submit_backfill(instance: dg.DagsterInstance, subset, tags=None) -> str:
    """Submit a backfill of ``subset`` (an AssetGraphSubset) as the sensor daemon would; return its id."""
    import time
    import uuid

    from dagster._core.execution.backfill import PartitionBackfill

    backfill_id = uuid.uuid4().hex[:8]
    instance.add_backfill(
        PartitionBackfill.from_asset_graph_subset(
            backfill_id=backfill_id,
            dynamic_partitions_store=instance,
            backfill_timestamp=time.time(),
            asset_graph_subset=subset,
            tags=tags or {},
            title=None,
            description=None,
            run_config=None,
        )
    )
    return backfill_id


@dataclass
class Deployment:
    """A code location loaded in this process, with the daemons' iterations at hand."""

    instance: dg.DagsterInstance
    workspace_context: object
    logger: logging.Logger

    def tick_sensors(self) -> None:
        """One sensor daemon iteration: every running sensor due for a tick is evaluated."""
        from dagster._daemon.sensor import execute_sensor_iteration

        list(execute_sensor_iteration(self.workspace_context, self.logger, None, None))

    def run_backfills(self, max_iterations: int = 10) -> list:
        """Iterate the backfill daemon until no backfill is in progress; return the backfills."""
        from dagster._core.execution.backfill import BulkActionStatus
        from dagster._daemon.backfill import execute_backfill_iteration

        for _ in range(max_iterations):
            if not any(b.status == BulkActionStatus.REQUESTED for b in self.instance.get_backfills()):
                break
            list(execute_backfill_iteration(self.workspace_context, self.logger))
        return self.instance.get_backfills()


@contextmanager
def deployment(root: Path, instance: dg.DagsterInstance) -> Iterator[Deployment]:
    """Load the project's code location from the environment, as the daemons see it."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget, create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = root / "location.py"
    location.write_text(LOCATION_FILE)
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(location), attribute="defs", working_directory=str(root)),
        location_name="sf_assets",
    )
    with create_test_daemon_workspace_context(InProcessTestWorkspaceLoadTarget(origin), instance) as context:
        yield Deployment(instance, context, logging.getLogger("harness.daemons"))
