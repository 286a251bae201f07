"""A real ``dagster dev`` over a temporary instance, for tests that drive it as the UI does.

:func:`dev_deployment` writes the project's ``dagster.yaml`` (run queue, the
sort service's run launcher, run monitoring) over SQLite in a temporary
folder, a spec for the test, and starts ``dagster dev`` (webserver, daemons,
code server) with its own sort service folder, so its warm workers are
nobody else's.  The studyset sensor finds no spec at its first tick and is
switched off through GraphQL before the spec is written: the tests launch
their backfills themselves, and the sensor's runs of the same pairs would
race them.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from sf_assets.orchestration.assets.studysets import register_partitions
from sf_assets.core.campaign import Campaign
from harness.dagster_dev import DagsterDev, deployment_environment, running_dagster_dev, write_instance_yaml
from sf_assets.engines.engine import EngineSettings
from sf_assets.engines.service_address import ServiceSettings
from sf_assets.stores.inputs import load_config
from sf_assets.orchestration.sensors import STUDYSET_SENSOR
from sf_assets.stores.kachery import KacheryStore
from sf_assets_tests.graph_harness import write_spec

@dataclass
class Deployment:
    dev: DagsterDev
    instance: dg.DagsterInstance
    campaign: Campaign
    root: Path
    service: ServiceSettings
    """The settings the run launcher and the sorting steps reach the sort service with."""
    env: dict[str, str]
    """The deployment's environment (``DAGSTER_HOME`` and the ``SF_ASSETS_*`` variables), for a
    command line run beside it."""
    spec: Path
    manifest: Path


@contextlib.contextmanager
def dev_deployment(root: Path, store: KacheryStore, manifest: Path, sorters: dict[str, dict]) -> Iterator[Deployment]:
    """``dagster dev`` over a fresh instance under ``root``, ready, its studyset sensor off, partitions registered."""
    home = root / "dagster-home"
    write_instance_yaml(home)
    spec = root / "spec.yaml"
    service_dir = Path(tempfile.mkdtemp(prefix="sfs-", dir="/tmp"))  # short: it holds a Unix socket
    # Its workers compile as a fresh install's do (the session's shared numba cache is left out): the
    # UI terminate test needs a SpykingCircus2 sort that lasts.
    env = {**deployment_environment(root / "data", store.root_dir, spec, manifest, service_dir), "NUMBA_CACHE_DIR": ""}
    try:
        with running_dagster_dev(home, env, root / "dagster-dev.log") as dev:
            dev.wait_until_ready()  # first: the deployment creates the instance's SQLite schema
            with dg.DagsterInstance.from_config(str(home)) as instance:
                dev.set_sensor_running(STUDYSET_SENSOR, False)
                write_spec(spec, manifest, sorters)
                campaign = Campaign(*load_config(str(manifest), str(spec), store))
                register_partitions(instance, campaign)  # what the sensor or the studysets asset does first
                service = EngineSettings(work_root="", service_dir=str(service_dir)).service()
                yield Deployment(dev, instance, campaign, root, service, {**env, "DAGSTER_HOME": str(home)}, spec, manifest)
    finally:
        shutil.rmtree(service_dir, ignore_errors=True)  # its service was stopped with the deployment
