"""Attempt folders: each attempt its own, old ones removed only when nobody holds them."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sf_assets.engines.work_dirs import IN_USE_FILE, claim_attempt_dir

HOLD_SCRIPT = """\
import sys, time
from pathlib import Path
from sf_assets.engines.work_dirs import attempt_in_use
with attempt_in_use(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_attempt_gets_its_own_folder_and_leaves_a_held_one_alone(tmp_path):
    pair = tmp_path / "MountainSort5" / "study.rec"
    first = claim_attempt_dir(pair / "run1-a0")
    (first.path / "console.txt").write_text("first attempt\n")
    second = claim_attempt_dir(pair / "run2-a0")
    assert first.path != second.path
    assert (first.path / "console.txt").read_text() == "first attempt\n", "a held attempt is never removed"
    assert second.removed == []
    first.release()
    second.release()
    third = claim_attempt_dir(pair / "run3-a0")
    assert sorted(p.name for p in third.removed) == ["run1-a0", "run2-a0"]
    assert sorted(p.name for p in pair.iterdir()) == ["run3-a0"]


def test_an_attempt_is_claimed_once(tmp_path):
    claim_attempt_dir(tmp_path / "pair" / "run1-a0").release()
    with pytest.raises(FileExistsError):
        claim_attempt_dir(tmp_path / "pair" / "run1-a0")


def test_a_worker_process_that_outlives_its_step_keeps_its_folder(tmp_path):
    pair = tmp_path / "pair"
    step = claim_attempt_dir(pair / "run1-a0")
    worker = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT, str(step.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "holding\n"
        step.release()  # the step is gone; its worker still sorts there
        assert claim_attempt_dir(pair / "run2-a0").removed == []
        assert (step.path / IN_USE_FILE).exists()
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and step.path.exists():
        claim_attempt_dir(pair / f"run{int(time.monotonic() * 1000)}-a0").release()
    assert not step.path.exists(), "a finished attempt is cleaned up by the next claim"


def test_what_is_not_an_attempt_folder_is_never_touched(tmp_path):
    pair = tmp_path / "pair"
    pair.mkdir()
    (pair / "job.json").write_text("{}")  # the layout before attempt folders
    (pair / "sorter").mkdir()
    claim_attempt_dir(pair / "run1-a0").release()
    claim_attempt_dir(pair / "run2-a0").release()
    assert sorted(p.name for p in pair.iterdir()) == ["job.json", "run2-a0", "sorter"]
