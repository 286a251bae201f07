"""The session-wide Slurm test cluster as a pytest fixture (the cluster itself: :mod:`harness.slurm_cluster`)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.slurm_cluster import (
    CLUSTER_DIR_PREFIX,
    SlurmCluster,
    SlurmClusterError,
    ensure_slurm_installed,
    start_cluster,
    stop_cluster,
    stop_stale_clusters,
)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node cluster; ``SLURM_CONF`` points at it for the whole session."""
    ensure_slurm_installed()
    if os.geteuid() != 0:
        raise SlurmClusterError("starting slurmd and munged needs root; run the Slurm tests as root")
    stop_stale_clusters()
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix=CLUSTER_DIR_PREFIX)))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf_path)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        stop_cluster(cluster)
