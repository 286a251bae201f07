"""Tests for sf_assets.stores.workspace against real SQLite files.

:func:`assert_concurrent_syncs_are_idempotent` takes any database URL, so the
same check can run against a PostgreSQL server.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import traceback
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from sf_assets.core.errors import WorkspaceError
from sf_assets.core.workspace_plan import GROUND_TRUTH, RECORDING, SORTING, WorkspaceEntry
from sf_assets.stores.workspace import WorkspaceStore, choose_workspace, is_workspace_uri


def _sorting_entry(i: int) -> WorkspaceEntry:
    recording = f"rec_{i:05d}"
    return WorkspaceEntry(
        label=f"MS5/study/{recording}",
        kind=SORTING,
        uri=f"sha1://{i:040x}/sorting.json",
        study_name="study",
        recording_name=recording,
        sorter_name="MS5",
        details={"cpu_time_sec": float(i), "sorting_output": {"sorting_format": "mda"}},
    )


def _entries(indices) -> list[WorkspaceEntry]:
    return [_sorting_entry(i) for i in indices]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "workspace.db"


@pytest.fixture
def store(db_path: Path):
    store = WorkspaceStore(f"sqlite:///{db_path}")
    yield store
    store.dispose()


def test_create_workspace_makes_the_tables_and_a_well_formed_uri(store, db_path):
    assert not db_path.exists()
    uri = store.create_workspace("demo")

    assert is_workspace_uri(uri)
    assert store.workspace_exists(uri)
    assert store.existing_labels(uri) == set()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"workspaces", "workspace_entries"} <= tables
    assert store.create_workspace() != uri


def test_sync_adds_missing_labels_then_nothing(store):
    uri = store.create_workspace()
    recording = WorkspaceEntry("study/rec_00001", RECORDING, "sha1://r", "study", "rec_00001")
    truth = WorkspaceEntry(
        "Ground-Truth/study/rec_00001", GROUND_TRUTH, "sha1://g", "study", "rec_00001",
        details={"recording_label": "study/rec_00001"},
    )
    entries = [recording, truth, *_entries(range(3))]

    first = store.sync(uri, entries)
    assert first.added == [e.label for e in entries]
    assert first.already_present == [] and first.dry_run is False
    assert store.list_entries(uri) == sorted(entries, key=lambda e: e.label)  # inserted in label order

    second = store.sync(uri, [*entries, *_entries([7])])
    assert second.added == ["MS5/study/rec_00007"]
    assert second.already_present == [e.label for e in entries]
    assert store.sync(uri, entries).added == []


def test_labels_are_the_only_identity_and_belong_to_one_workspace(store):
    uri_a, uri_b = store.create_workspace(), store.create_workspace()
    store.sync(uri_a, _entries([1]))
    changed = WorkspaceEntry("MS5/study/rec_00001", SORTING, "sha1://new", "study", "rec_00001", "MS5")

    assert store.sync(uri_a, [changed]).already_present == ["MS5/study/rec_00001"]
    assert store.list_entries(uri_a)[0].uri == _sorting_entry(1).uri
    assert store.sync(uri_b, [changed]).added == ["MS5/study/rec_00001"]
    assert store.list_entries(uri_b) == [changed]


def test_database_refuses_a_duplicate_label(store, db_path):
    uri = store.create_workspace()
    store.sync(uri, _entries([1]))
    engine = sa.create_engine(f"sqlite:///{db_path}")
    try:
        with pytest.raises(IntegrityError, match="UNIQUE"):
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO workspace_entries (workspace_id, label, kind, uri, study_name, "
                        "recording_name, details, added_at) SELECT workspace_id, label, kind, uri, "
                        "study_name, recording_name, details, added_at FROM workspace_entries"
                    )
                )
    finally:
        engine.dispose()


def test_stale_plan_reports_labels_another_sync_added_as_already_present(db_path):
    url = f"sqlite:///{db_path}"
    first, second = WorkspaceStore(url), WorkspaceStore(url)
    try:
        uri = first.create_workspace()
        stale_plan = first.plan(uri, _entries(range(10)))
        assert len(stale_plan.to_add) == 10

        second.sync(uri, _entries(range(4, 12)))
        report = first.apply_plan(uri, stale_plan)

        assert report.added == [f"MS5/study/rec_{i:05d}" for i in range(4)]
        assert report.already_present == [f"MS5/study/rec_{i:05d}" for i in range(4, 10)]
        assert len(first.list_entries(uri)) == 12
    finally:
        first.dispose()
        second.dispose()


def test_dry_run_reports_and_writes_nothing(db_path):
    url = f"sqlite:///{db_path}"
    store = WorkspaceStore(url)
    uri = store.create_workspace()
    store.sync(uri, _entries(range(5)))
    store.dispose()  # checkpoints the WAL into the database file
    before = (db_path.read_bytes(), db_path.stat().st_mtime_ns)
    assert not Path(f"{db_path}-wal").exists()

    dry_store = WorkspaceStore(url)
    report = dry_store.sync(uri, _entries(range(3, 8)), dry_run=True)
    assert Path(f"{db_path}-wal").stat().st_size == 0  # nothing written, even to the log
    dry_store.dispose()

    assert report.dry_run is True
    assert report.added == [f"MS5/study/rec_{i:05d}" for i in (5, 6, 7)]
    assert report.already_present == [f"MS5/study/rec_{i:05d}" for i in (3, 4)]
    assert (db_path.read_bytes(), db_path.stat().st_mtime_ns) == before
    check = WorkspaceStore(url)
    try:
        assert len(check.existing_labels(uri)) == 5
    finally:
        check.dispose()


def test_missing_workspace_names_the_uri_and_the_database(store, db_path):
    absent = "workspace://" + "0" * 32
    with pytest.raises(WorkspaceError, match=rf"workspace {absent} does not exist in database sqlite:///{db_path}"):
        store.sync(absent, _entries([1]), dry_run=True)
    assert not db_path.exists(), "a read on a database that does not exist must not create it"

    store.create_workspace()
    for call in (store.require_workspace, store.existing_labels, store.list_entries):
        with pytest.raises(WorkspaceError, match=rf"{absent} does not exist in database .*{db_path.name}"):
            call(absent)
    assert not store.workspace_exists(absent)


def test_a_database_in_a_folder_not_made_yet_is_made_on_the_first_write_only(tmp_path):
    """workspace_sync can run before anything else has written to the data folder (a fresh instance)."""
    db_path = tmp_path / "data" / "not-yet" / "workspace.db"
    store = WorkspaceStore(f"sqlite:///{db_path}")
    try:
        with pytest.raises(WorkspaceError, match="does not exist"):
            store.require_workspace("workspace://" + "0" * 32)
        assert not db_path.parent.exists(), "a read makes nothing"
        uri = store.create_workspace()
        assert store.sync(uri, _entries([1])).added == ["MS5/study/rec_00001"]
        assert db_path.is_file()
    finally:
        store.dispose()


def test_malformed_workspace_uri_is_refused(store, db_path):
    store.create_workspace()
    for bad in ("workspace://XYZ", "http://example.org", "workspace://" + "A" * 32):
        assert not store.workspace_exists(bad)
        with pytest.raises(WorkspaceError, match=r"is malformed \(database sqlite:///.*workspace\.db\): expected 'workspace://'"):
            store.sync(bad, _entries([1]))


def test_choose_workspace_needs_exactly_one_of_uri_and_create(store):
    for uri, create in ((None, False), ("workspace://" + "1" * 32, True)):
        with pytest.raises(WorkspaceError, match="exactly one of --workspace-uri URI and --create-new-workspace"):
            choose_workspace(store, uri, create, dry_run=False)

    assert choose_workspace(store, None, True, dry_run=True) is None
    created = choose_workspace(store, None, True, dry_run=False)
    assert store.workspace_exists(created)
    assert choose_workspace(store, created, False, dry_run=True) == created
    with pytest.raises(WorkspaceError, match="does not exist"):
        choose_workspace(store, "workspace://" + "2" * 32, False, dry_run=True)


def test_unusable_database_url_is_refused_without_showing_the_password():
    with pytest.raises(WorkspaceError, match="workspace database URL 'not a url' is malformed"):
        WorkspaceStore("not a url")
    with pytest.raises(WorkspaceError, match=r"'nosuchdialect://user:\*\*\*@host/db' cannot be used") as caught:
        WorkspaceStore("nosuchdialect://user:secret@host/db")
    assert "secret" not in str(caught.value)


def test_concurrent_syncs_in_two_processes_are_idempotent(tmp_path):
    assert_concurrent_syncs_are_idempotent(f"sqlite:///{tmp_path / 'shared.db'}", tmp_path)


# -- the reusable concurrency check ------------------------------------------

# Two overlapping ranges of sorting entries: 1,800 distinct labels, 600 shared.
_CHILD_RANGES = {"left": range(0, 1_200), "right": range(600, 1_800)}


def assert_concurrent_syncs_are_idempotent(db_url: str, tmp_path: Path) -> None:
    """Two processes sync overlapping entries into one workspace at the same time.

    Round "forced": both plan against the empty workspace, wait for each other,
    then insert, so every shared label is raced for.  Round "plain": both call
    ``sync`` at the same moment.  In both rounds no label may appear twice, no
    sync may fail, and the labels each process reports as added must partition
    the distinct labels.
    """
    parent = WorkspaceStore(db_url)
    workspaces = {"forced": parent.create_workspace("forced"), "plain": parent.create_workspace("plain")}
    parent.dispose()

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(_CHILD_RANGES))
    reports = {name: tmp_path / f"concurrent-sync-{name}.json" for name in _CHILD_RANGES}
    children = [
        context.Process(target=_sync_in_child, args=(db_url, workspaces, name, barrier, str(reports[name])))
        for name in _CHILD_RANGES
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=180)
    outcomes = {name: json.loads(path.read_text()) if path.exists() else None for name, path in reports.items()}
    for child in children:
        if child.is_alive():
            child.kill()
    assert all(child.exitcode == 0 for child in children), outcomes

    distinct = {_sorting_entry(i).label for indices in _CHILD_RANGES.values() for i in indices}
    shared = {_sorting_entry(i).label for i in set(_CHILD_RANGES["left"]) & set(_CHILD_RANGES["right"])}
    store = WorkspaceStore(db_url)
    try:
        for round_name, uri in workspaces.items():
            rounds = {name: outcomes[name][round_name] for name in _CHILD_RANGES}
            added = [label for report in rounds.values() for label in report["added"]]
            assert len(added) == len(distinct) and set(added) == distinct, round_name
            for name, report in rounds.items():
                mine = {_sorting_entry(i).label for i in _CHILD_RANGES[name]}
                assert set(report["added"]) | set(report["already_present"]) == mine
                assert len(report["added"]) + len(report["already_present"]) == len(mine)
            if round_name == "forced":
                raced = [label for report in rounds.values() for label in report["already_present"]]
                assert sorted(raced) == sorted(shared)

            labels = [entry.label for entry in store.list_entries(uri)]
            assert len(labels) == len(set(labels)) == len(distinct), round_name
            again = store.sync(uri, _entries(range(0, 1_800)))
            assert again.added == [] and len(again.already_present) == len(distinct)
    finally:
        store.dispose()


def _sync_in_child(db_url: str, workspaces: dict, name: str, barrier, report_path: str) -> None:
    """Run both rounds in a child process; write the reports (or the traceback) as JSON."""
    result: dict = {}
    try:
        store = WorkspaceStore(db_url)
        entries = _entries(_CHILD_RANGES[name])
        store.existing_labels(workspaces["plain"])  # open the pool before the race starts

        plan = store.plan(workspaces["forced"], entries)
        barrier.wait(timeout=120)
        forced = store.apply_plan(workspaces["forced"], plan)
        result["forced"] = {"added": forced.added, "already_present": forced.already_present}

        barrier.wait(timeout=120)
        plain = store.sync(workspaces["plain"], entries)
        result["plain"] = {"added": plain.added, "already_present": plain.already_present}
        store.dispose()
    except BaseException:
        barrier.abort()
        result["error"] = traceback.format_exc()
        Path(report_path).write_text(json.dumps(result))
        os._exit(1)
    Path(report_path).write_text(json.dumps(result))
