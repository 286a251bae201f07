"""Storage faults told from bugs, on real full and read-only filesystems."""
from __future__ import annotations

import os
import signal
import sqlite3

import pytest
import sqlalchemy

from sf_assets.core.errors import StorageFault, UriError
from sf_assets.core.storage_faults import storage_fault
from sf_assets.stores.kachery import KacheryStore
from sf_assets_tests.mounts import fill, read_only, tmpfs


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", size="1m") as disk:
        yield disk


def _raised(call) -> BaseException:
    with pytest.raises(BaseException) as info:
        call()
    return info.value


def test_a_write_to_a_full_disk_names_the_full_folder_and_the_cause(small_disk, tmp_path):
    fill(small_disk)
    # write() on an open file names no path: the candidate folder on the full disk is named.
    exc = _raised(lambda: (small_disk / "out.json").write_text("x" * 100_000))
    fault = storage_fault(exc, [tmp_path / "elsewhere", small_disk])
    assert isinstance(fault, StorageFault)
    assert str(fault) == f"{small_disk}: no space left on the device (the disk is full)"


def test_a_write_to_a_read_only_folder_names_the_file(small_disk):
    with read_only(small_disk):
        exc = _raised(lambda: (small_disk / "records.json").write_text("[]"))
    assert str(storage_fault(exc)) == f"{small_disk / 'records.json'}: the filesystem is read-only"


def test_a_fault_wrapped_by_the_kachery_store_is_still_found(small_disk, tmp_path):
    store = KacheryStore(small_disk / "kachery")
    fill(small_disk)
    exc = _raised(lambda: store.store_bytes(b"y" * 200_000, "console_out.json"))
    assert isinstance(exc, (UriError, OSError))
    assert "the disk is full" in str(storage_fault(exc))


def test_a_full_sqlite_database_names_the_full_folder(small_disk):
    connection = sqlite3.connect(small_disk / "runs.db")
    connection.execute("create table t (x blob)")
    connection.commit()
    fill(small_disk)
    exc = _raised(lambda: (connection.execute("insert into t values (?)", (b"z" * 500_000,)), connection.commit()))
    assert isinstance(exc, sqlite3.OperationalError)
    fault = storage_fault(exc, [small_disk.parent / "elsewhere", small_disk])
    assert str(fault).startswith(f"{small_disk}: no space left on the device (the disk is full) (OperationalError: ")


def test_a_read_only_database_through_sqlalchemy(small_disk):
    engine = sqlalchemy.create_engine(f"sqlite:///{small_disk / 'workspace.db'}")
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("create table t (x integer)"))
    engine.dispose()
    with read_only(small_disk):
        def write():
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text("insert into t values (1)"))

        exc = _raised(write)
        fault = storage_fault(exc, [small_disk / "workspace.db"])  # while it is read-only
    engine.dispose()
    assert isinstance(exc, sqlalchemy.exc.OperationalError)
    assert str(fault).startswith(f"{small_disk / 'workspace.db'}: the filesystem is read-only")


def test_what_is_not_storage_is_left_alone(tmp_path):
    connection = sqlite3.connect(tmp_path / "x.db")
    connection.execute("create table t (x integer unique)")
    connection.execute("insert into t values (1)")
    not_storage = [
        _raised(lambda: connection.execute("insert into t values (1)")),  # IntegrityError
        _raised(lambda: connection.execute("select * from no_such_table")),  # OperationalError, not storage
        _raised(lambda: os.kill(1, signal.SIGKILL) if os.getuid() != 0 else os.setuid(-5)),
        ValueError("bad value"),
        _raised(lambda: open(tmp_path / "missing.txt")),  # FileNotFoundError
    ]
    for exc in not_storage:
        assert storage_fault(exc) is None, exc
