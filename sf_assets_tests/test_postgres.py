"""The PostgreSQL deployment, against a real PostgreSQL server started for this module.

Covers deployments/postgres/dagster.yaml (run, event-log and schedule storage
in PostgreSQL), the workspace store on the same server (two syncs at once, no
duplicate label), a small campaign materialized end to end on both, and the
throw-away server of :mod:`sf_assets_tests.postgres_server` itself.
"""
from __future__ import annotations

import multiprocessing
import shutil
import socket
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from queue import Empty
from typing import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from sf_assets_tests.postgres_server import (
    PostgresServer,
    PostgresUnavailable,
    find_postgres_bin,
    running_postgres,
)
from sf_assets_tests.test_workspace import assert_concurrent_syncs_are_idempotent

REPO = Path(__file__).resolve().parents[1]
POSTGRES_DAGSTER_YAML = REPO / "deployments" / "postgres" / "dagster.yaml"
ROOT_DAGSTER_YAML = REPO / "dagster.yaml"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """One real server for the whole module; every test uses databases of its own."""
    with running_postgres() as server:
        yield server


@contextmanager
def postgres_instance(server: PostgresServer, database: str, home: Path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance loaded from deployments/postgres/dagster.yaml, storing in ``database``.

    The file is used as shipped: only the environment it reads is set.
    """
    server.create_database(database)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(POSTGRES_DAGSTER_YAML, home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in server.dagster_env(database).items():
            patch.setenv(name, value)
        patch.setenv("SF_ASSETS_DAGSTER_DIR", str(home / "files"))
        patch.setenv("DAGSTER_HOME", str(home))
        instance = dg.DagsterInstance.get()
        try:
            yield instance
        finally:
            instance.dispose()


def _query(url: str, sql: str, **params) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


# -- the throw-away server ----------------------------------------------------


def _is_running(pid: int) -> bool:
    """True while ``pid`` is alive; an exited child not yet reaped (a zombie) counts as stopped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_server_starts_and_stops_twice_leaving_other_servers_running(postgres):
    for _round in range(2):
        with running_postgres() as server:
            pid = server.postmaster_pid()
            assert pid is not None and _is_running(pid)
            assert server.port != postgres.port
            settings = dict(
                _query(
                    server.url(),
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('listen_addresses', 'unix_socket_directories', 'password_encryption', 'server_version_num')",
                )
            )
            assert settings["listen_addresses"] == "127.0.0.1"
            assert settings["unix_socket_directories"] == str(server.root)
            assert int(settings["server_version_num"]) >= 150000
            wrong = sa.create_engine(server.url().replace(server.password, "wrong-password"))
            with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
                wrong.connect()
            wrong.dispose()
            root, port = server.root, server.port

        assert not _is_running(pid)
        assert not _accepts_connections(port)
        assert not root.exists()
    # Stopping those two left the module's server alone.
    assert _is_running(postgres.postmaster_pid())
    assert _query(postgres.url(), "SELECT 1") == [(1,)]


def test_missing_postgres_fails_with_the_install_command(tmp_path):
    with pytest.raises(PostgresUnavailable, match=r"initdb, pg_ctl, postgres\) not found .*apt-get install -y postgresql"):
        find_postgres_bin(search_path=str(tmp_path), debian_glob=str(tmp_path / "*" / "bin"))
    assert (find_postgres_bin() / "initdb").exists()


# -- deployments/postgres/dagster.yaml ----------------------------------------


def test_dagster_yaml_reads_the_connection_from_the_environment_and_keeps_the_root_settings():
    deployed = yaml.safe_load(POSTGRES_DAGSTER_YAML.read_text())
    root = yaml.safe_load(ROOT_DAGSTER_YAML.read_text())

    assert deployed["storage"]["postgres"]["postgres_db"] == {
        "hostname": {"env": "SF_ASSETS_PG_HOST"},
        "port": {"env": "SF_ASSETS_PG_PORT"},
        "username": {"env": "SF_ASSETS_PG_USER"},
        "password": {"env": "SF_ASSETS_PG_PASSWORD"},
        "db_name": {"env": "SF_ASSETS_PG_DB"},
        "scheme": "postgresql+psycopg2",
    }
    assert set(deployed) == set(root)
    for section in set(root) - {"storage"}:
        assert deployed[section] == root[section], section


def test_instance_on_postgres_stores_runs_events_and_schedules(postgres, tmp_path):
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b"]))
    def throwaway() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"num_units": 3})

    with postgres_instance(postgres, "dagster_smoke", tmp_path / "home") as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert instance.run_monitoring_enabled and instance.run_retries_enabled

        result = dg.materialize([throwaway], instance=instance, partition_key="b")
        assert result.success
        event = instance.get_latest_materialization_event(dg.AssetKey("throwaway"))
        assert event.dagster_event.partition == "b"
        assert event.asset_materialization.metadata["num_units"].value == 3

    url = postgres.url("dagster_smoke")
    assert _query(url, "SELECT run_id, status FROM runs") == [(result.run_id, "SUCCESS")]
    assert _query(
        url,
        "SELECT partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND run_id = :run_id",
        run_id=result.run_id,
    ) == [("b",)]
    tables = {row[0] for row in _query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"runs", "event_logs", "instigators", "job_ticks"} <= tables


# -- the workspace store on the same server -----------------------------------


def test_concurrent_workspace_syncs_on_postgres_never_duplicate_a_label(postgres, tmp_path):
    assert_concurrent_syncs_are_idempotent(postgres.create_database("workspace_race"), tmp_path)


# -- a small campaign, end to end, with the instance and the workspace on PostgreSQL --

CAMPAIGN_SORTER = "simple"  # the fastest sorter that runs here: this test is about storage
PER_PARTITION_ASSETS = ("recording", "ground_truth", "sorting", "sorting_comparison")
FAN_IN_ASSETS = ("studysets", "sorter_summary", "sorting_records", "workspace_sync")


def test_campaign_on_postgres_records_runs_events_and_labels_once(postgres, tmp_path):
    from sf_assets.core.campaign import Campaign
    from sf_assets.stores.inputs import load_config
    from sf_assets.cli.launch import RunOptions, launch_campaign
    from sf_assets.stores.kachery import KacheryStore
    from sf_assets.stores.synthetic import generate_studyset

    store = KacheryStore(tmp_path / "kachery")
    generated = generate_studyset(
        store, tmp_path / "studyset", seed=3, num_study_sets=1, studies_per_set=1, recordings_per_study=2,
        num_channels=(4,), duration_s=10.0, sorters=(CAMPAIGN_SORTER,),
    )
    campaign = Campaign(*load_config(str(generated.manifest_path), str(generated.spec_path), store))
    assert len(campaign.recordings()) == 2 and len(campaign.jobs) == 2
    options = RunOptions(
        spec_source=str(generated.spec_path),
        manifest_source=str(generated.manifest_path),
        kachery_dir=str(store.root_dir),
        work_root=str(tmp_path / "sorts"),
        workspace_db_url=postgres.create_database("campaign_workspace"),
        outputs_dir=str(tmp_path / "outputs"),
        canary_first_n_s=0.0,  # the canary has its own tests; here it would only double each sort
    )
    expected_labels = _campaign_labels(campaign)
    dagster_db = "campaign_dagster"

    with postgres_instance(postgres, dagster_db, tmp_path / "dagster-home") as instance:
        outcome = launch_campaign(instance, campaign, options, workers=1)

        every_run = outcome.recordings + outcome.sortings + outcome.results
        assert [o.error for o in every_run if not o.success] == []
        assert len(outcome.recordings) == 2 and len(outcome.sortings) == 2
        runs = instance.get_runs()
        assert sorted(run.run_id for run in runs) == sorted(o.run_id for o in every_run)
        assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}

        # Again: the job cache, read back from PostgreSQL, holds both sortings.
        again = launch_campaign(instance, campaign, options, workers=1)
        assert again.sortings == [] and len(again.cached_pairs) == 2
        assert all(o.success for o in again.results)
        assert _workspace_label_counts(options.workspace_db_url) == {"default": dict.fromkeys(expected_labels, 1)}

        # Two workspace_sync materializations at once, in two processes, into one new workspace.
        reports = _workspace_syncs_at_once(options)
        assert all(report["success"] for report in reports), reports
        assert sum(report["added"] for report in reports) == len(expected_labels)
        assert all(report["added"] + report["already_present"] == len(expected_labels) for report in reports)
        assert _workspace_label_counts(options.workspace_db_url)["race"] == dict.fromkeys(expected_labels, 1)
        race_runs = {report["run_id"] for report in reports}
        assert {instance.get_run_by_id(run_id).status for run_id in race_runs} == {dg.DagsterRunStatus.SUCCESS}

    # What PostgreSQL itself holds, read without Dagster.
    url = postgres.url(dagster_db)
    num_runs = len(every_run) + len(again.results) + len(race_runs)
    assert _query(url, "SELECT status, count(*) FROM runs GROUP BY status") == [("SUCCESS", num_runs)]
    materialized = {
        yaml.safe_load(asset_key)[0]: (partitions, events)
        for asset_key, partitions, events in _query(
            url,
            "SELECT asset_key, count(DISTINCT partition), count(*) FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key",
        )
    }
    assert {name: materialized[name] for name in PER_PARTITION_ASSETS} == dict.fromkeys(PER_PARTITION_ASSETS, (2, 2))
    assert {name: materialized[name][1] for name in FAN_IN_ASSETS} == {
        "studysets": 2, "sorter_summary": 2, "sorting_records": 2, "workspace_sync": 4,
    }


def _campaign_labels(campaign) -> set[str]:
    from sf_assets.core.labels import ground_truth_label, recording_label, sorting_label

    labels = set()
    for sorter, rec in campaign.jobs:
        labels |= {
            recording_label(rec.study_name, rec.name),
            ground_truth_label(rec.study_name, rec.name),
            sorting_label(sorter.name, rec.study_name, rec.name),
        }
    return labels


def _workspace_label_counts(db_url: str) -> dict[str, dict[str, int]]:
    """{workspace name: {label: rows}}, straight from the tables."""
    counts: dict[str, dict[str, int]] = {}
    for name, label, rows in _query(
        db_url,
        "SELECT w.name, e.label, count(*) FROM workspaces w JOIN workspace_entries e ON e.workspace_id = w.id "
        "GROUP BY w.name, e.label",
    ):
        counts.setdefault(name, {})[label] = rows
    return counts


def _workspace_syncs_at_once(options) -> list[dict]:
    """Materialize workspace_sync in two processes released together; return their reports.

    The children inherit this process's environment, so they load the same
    PostgreSQL instance through DAGSTER_HOME.
    """
    from sf_assets.stores.workspace import WorkspaceStore

    store = WorkspaceStore(options.workspace_db_url)
    uri = store.create_workspace("race")
    store.dispose()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    queue = context.Queue()
    children = [context.Process(target=_sync_workspace_in_child, args=(options, uri, barrier, queue)) for _ in range(2)]
    for child in children:
        child.start()
    reports: list[dict] = []
    deadline = time.monotonic() + 180
    while len(reports) < len(children) and time.monotonic() < deadline:
        try:
            reports.append(queue.get(timeout=1))
        except Empty:
            if not any(child.is_alive() for child in children) and queue.empty():
                break  # a child died without a report: fail now, not at the deadline
    for child in children:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert [child.exitcode for child in children] == [0, 0], reports
    return reports


def _sync_workspace_in_child(options, workspace_uri: str, barrier, queue) -> None:
    report: dict = {"success": False}
    try:
        from sf_assets.orchestration.assets.workspace import workspace_sync
        from sf_assets.orchestration.resources import KacheryResource, StudysetResource, WorkspaceResource

        kachery = KacheryResource(root_dir=options.kachery_dir, local_only=True)
        resources = {
            "kachery": kachery,
            "studyset": StudysetResource(spec_source=options.spec_source, manifest_source=options.manifest_source),
            "workspace": WorkspaceResource(db_url=options.workspace_db_url, workspace_uri=workspace_uri),
        }
        instance = dg.DagsterInstance.get()
        resources["studyset"].campaign(kachery)  # load the campaign before the race starts
        barrier.wait(timeout=60)
        result = dg.materialize([workspace_sync], instance=instance, resources=resources)
        metadata = result.asset_materializations_for_node("workspace_sync")[0].metadata
        report = {
            "success": result.success,
            "run_id": result.run_id,
            "added": metadata["added"].value,
            "already_present": metadata["already_present"].value,
        }
    except BaseException:
        barrier.abort()
        report["error"] = traceback.format_exc()
    queue.put(report)
