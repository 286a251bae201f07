"""Shared test fixtures: a private kachery folder and one small synthetic studyset.

Add fixtures below; keep the existing ones (other test modules rely on them).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from sf_assets.stores.kachery import KacheryStore
from sf_assets.synthetic import generate_studyset


@pytest.fixture(scope="session", autouse=True)
def _private_kachery_cloud_dir(tmp_path_factory):
    """Point KACHERY_CLOUD_DIR at a temporary folder for the whole session.

    KacheryStore sets the variable itself around each call; this guards any
    other code that imports kachery_cloud from touching ~/.kachery-cloud.
    """
    folder = tmp_path_factory.mktemp("kachery-cloud-default")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KACHERY_CLOUD_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session", autouse=True)
def _private_sort_service_dir():
    """One sort service folder for the test session, and no service left behind after it.

    Sorting steps (in this process, in Dagster run processes and in command-line
    subprocesses) all find the host's sort service through SF_ASSETS_SERVICE_DIR,
    so the session's sorts share warm workers as a user's runs do.
    """
    import signal
    import tempfile

    from sf_assets.engines.service_address import INFO_NAME

    folder = Path(tempfile.mkdtemp(prefix="sfs-", dir="/tmp"))  # short: it holds a Unix socket
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SF_ASSETS_SERVICE_DIR", str(folder))
        yield folder
    for info in folder.glob(f"*/{INFO_NAME}"):
        try:
            import json

            os.kill(json.loads(info.read_text())["pid"], signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass


@pytest.fixture
def kachery_store(tmp_path) -> KacheryStore:
    """An empty local-only store of its own for one test."""
    return KacheryStore(tmp_path / "kachery")


class SyntheticStudyset(NamedTuple):
    """What ``synthetic_studyset`` yields; unpacks as (store, manifest_path, spec_path, out_dir)."""

    store: KacheryStore
    manifest_path: Path
    spec_path: Path
    out_dir: Path


SYNTHETIC_STUDYSET_ARGS = dict(
    seed=0,
    num_study_sets=2,
    studies_per_set=1,
    recordings_per_study=2,
    num_channels=(4,),
    duration_s=10.0,
    sampling_frequency_hz=30000.0,
)
"""The session studyset: 2 sets x 1 study x 2 recordings of 4 channels, 10 s, 6 true units."""


@pytest.fixture(scope="session")
def synthetic_studyset(tmp_path_factory, _private_kachery_cloud_dir) -> SyntheticStudyset:
    """A tiny studyset generated once per session (shared: treat its files as read-only).

    Study sets SYNTH_SET_A / SYNTH_SET_B, studies synth_a1_K6_C4 / synth_b1_K6_C4,
    recordings 001_synth / 002_synth; the spec runs the default sorters on both sets.
    """
    root = tmp_path_factory.mktemp("synthetic-studyset")
    store = KacheryStore(root / "kachery")
    out_dir = root / "studyset"
    generated = generate_studyset(store, out_dir, **SYNTHETIC_STUDYSET_ARGS)
    return SyntheticStudyset(store, generated.manifest_path, generated.spec_path, out_dir)


pytest_plugins = ["sf_assets_tests.slurm_cluster"]  # the session-wide Slurm test cluster (engineer E)
