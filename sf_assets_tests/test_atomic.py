"""The one atomic file writer: whole files or the old content, nothing left behind."""
from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from sf_assets.core.atomic import (
    create_json_once,
    replace_atomically,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_a_file_is_replaced_whole_and_no_temporary_file_is_left(tmp_path):
    path = tmp_path / "records.json"
    write_text_atomic(path, "old")
    write_json_atomic(path, {"b": 1, "a": tmp_path})
    assert json.loads(path.read_text()) == {"a": str(tmp_path), "b": 1}
    assert path.read_text().startswith('{"a"')  # keys sorted: the same object gives the same bytes
    assert [p.name for p in tmp_path.iterdir()] == ["records.json"]


def test_a_writer_that_fails_leaves_the_old_content_and_no_temporary_file(tmp_path):
    path = tmp_path / "summary.csv"
    write_text_atomic(path, "old\n")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        replace_atomically(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]


def test_a_secret_keeps_its_mode_and_a_durable_write_lands(tmp_path):
    key = tmp_path / "key"
    write_bytes_atomic(key, b"\x01" * 32, mode=0o600, durable=True)
    assert key.read_bytes() == b"\x01" * 32
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600


def test_threads_writing_one_file_at_once_never_collide(tmp_path):
    path = tmp_path / "listing.json"
    errors = []

    def write(i):
        try:
            for _ in range(50):
                write_json_atomic(path, {"writer": i, "padding": "x" * 10_000})
        except Exception as exc:  # noqa: BLE001 (collected, asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text())["writer"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["listing.json"]


def test_of_two_writers_racing_to_decide_the_first_wins_and_the_second_changes_nothing(tmp_path):
    path = tmp_path / "canary.json"
    assert create_json_once(path, {"status": "failed", "by": "supervisor"}) is True
    assert create_json_once(path, {"status": "passed", "by": "worker"}) is False
    assert json.loads(path.read_text()) == {"by": "supervisor", "status": "failed"}
    assert [p.name for p in tmp_path.iterdir()] == ["canary.json"]


def test_where_hard_links_are_refused_the_first_writer_still_decides(tmp_path, monkeypatch):
    import errno
    import os

    def refused(src, dst):  # what a filesystem without hard links answers (EPERM on some FUSE mounts)
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "link", refused)
    path = tmp_path / "canary.json"
    assert create_json_once(path, {"status": "failed", "by": "supervisor"}) is True
    assert create_json_once(path, {"status": "passed", "by": "worker"}) is False
    assert json.loads(path.read_text()) == {"by": "supervisor", "status": "failed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".canary.json.claim", "canary.json"]
