"""Shared test fixtures: a private kachery folder and one small synthetic studyset.

Add fixtures below; keep the existing ones (other test modules rely on them).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from sf_assets.stores.kachery import KacheryStore
from sf_assets.stores.synthetic import generate_studyset

if TYPE_CHECKING:
    from sf_assets_tests.graph_harness import GraphEnv


def pytest_configure(config):
    """Run as Python runs in a terminal, whatever started pytest.

    A background job of a non-interactive shell (a CI script's ``&``) starts
    with SIGINT ignored, and Dagster's in-process runs map SIGTERM to it (see
    ``sf_assets/engines/stop_signals.py``): every worker a test starts would
    inherit SIGTERM ignored until it undoes that itself, and a stop sent in its
    first instants (a canary timeout of 0.1 s) would be lost.
    """
    from sf_assets.engines import stop_signals

    stop_signals.restore()
    _share_one_jit_cache(config)


def _share_one_jit_cache(config) -> None:
    """One numba cache for the session's sort workers: each sorter compiles once per run of the suite.

    The tests start hundreds of new sort workers (every service, allocation
    and test starts its own), each with a JIT cache in its own work folder,
    where every one would compile its sorter afresh (spykingcircus2: 20 s
    here).  numba's ``NUMBA_CACHE_DIR``, which the JIT cache defers to
    (``sf_assets/engines/jit_cache.py``), gives them one: the first worker
    compiles, the others load.  A cache given from outside is kept.
    ``test_jit_cache.py`` unsets it to test the work folder's cache, and the
    ``dagster dev`` deployments (``deployment_harness.py``) set it empty, so
    their workers compile as a fresh install's do.
    """
    import tempfile

    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    folder = tempfile.mkdtemp(prefix="sf-assets-tests-numba-")
    os.environ["NUMBA_CACHE_DIR"] = folder
    config.stash[_NUMBA_CACHE] = folder


_NUMBA_CACHE = pytest.StashKey[str]()


def pytest_unconfigure(config):
    """Remove the session's numba cache (:func:`_share_one_jit_cache`), if it made one."""
    import shutil

    folder = config.stash.get(_NUMBA_CACHE, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ignoring_stop_signals():
    """This process ignoring SIGTERM and SIGINT while the test runs, as a background job under Dagster is:
    what the processes it starts inherit."""
    import signal

    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


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


pytest_plugins = ["sf_assets_tests.slurm_fixture"]  # the session-wide Slurm test cluster (engineer E)


class BenchmarkDemo(NamedTuple):
    """What ``benchmark_demo`` yields: a sorted, compared and summarized campaign on a file-backed instance."""

    env: "GraphEnv"
    dagster_home: Path
    environment: dict


DEMO_SORTERS = {
    "MountainSort5": {"studysets": ["SYNTH_SET_A", "SYNTH_SET_B"]},
    # An unknown clusterer: spikeinterface's "simple" sorter raises at once, on both recordings.
    "Simple": {"studysets": ["SYNTH_SET_A"], "params": {"clusterer": "no_such_clusterer"}},
}
"""The demo's spec: 4 good sortings and 2 deliberately errored ones (one study)."""


@pytest.fixture(scope="session")
def benchmark_demo(synthetic_studyset, tmp_path_factory) -> BenchmarkDemo:
    """The synthetic studyset sorted by :data:`DEMO_SORTERS` through the whole graph (results included).

    The instance lives in files (``dagster_home``), so a viewer or a webserver
    started as another process reads the same event log; ``environment`` holds
    the variables that point such a process at this campaign's stores.
    """
    import dagster as dg

    from sf_assets_tests.graph_harness import make_env, write_spec
    from harness.webserver import settings_environment, write_instance_config

    root = tmp_path_factory.mktemp("benchmark-demo")
    home = root / "dagster-home"
    write_instance_config(home)
    spec = write_spec(root / "spec.yaml", synthetic_studyset.manifest_path, DEMO_SORTERS)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        env = make_env(
            root, synthetic_studyset.store, instance, synthetic_studyset.manifest_path, spec, canary_first_n_s=0.0
        )
        outcome = env.launch(workers=1)
        failed = sorted(o.partition_key for o in outcome.sortings if not o.success)
        assert failed == ["synth_a1_K6_C4.001_synth|Simple", "synth_a1_K6_C4.002_synth|Simple"], failed
        assert all(o.success for o in outcome.recordings + outcome.results)
        environment = {**settings_environment(env.options), "DAGSTER_HOME": str(home)}
        yield BenchmarkDemo(env, home, environment)
