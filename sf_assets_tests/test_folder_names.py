"""Folder names from labels: any name the manifest accepts fits the filesystem's 255 bytes."""
from __future__ import annotations

import pytest

from sf_assets.core.folder_names import (
    HASH_MARK,
    MAX_NAME_BYTES,
    attempt_name,
    bounded_name,
    is_attempt_name,
    pair_folder,
)
from sf_assets.core.labels import MAX_NAME_CHARS, name_problem

LONGEST_ASCII = "s" * MAX_NAME_CHARS
LONGEST_WIDE = "\U0001f9e0" * MAX_NAME_CHARS  # 4 UTF-8 bytes each: 16 key characters each


@pytest.mark.parametrize("study, recording", [(LONGEST_ASCII, "r" * MAX_NAME_CHARS), (LONGEST_WIDE, LONGEST_WIDE)])
def test_the_longest_accepted_names_make_folders_that_fit(tmp_path, study, recording):
    assert name_problem(study) is None and name_problem(recording) is None
    folder = pair_folder(tmp_path, "MountainSort5", study, recording) / attempt_name("0" * 36, 0)
    for part in folder.relative_to(tmp_path).parts:
        assert len(part.encode()) <= MAX_NAME_BYTES
    folder.mkdir(parents=True)  # the filesystem itself is the judge
    assert folder.is_dir()


def test_a_short_name_is_kept_whole_and_a_long_one_keeps_a_readable_prefix():
    assert bounded_name("synth_a1_K6_C4.001_synth") == "synth_a1_K6_C4.001_synth"
    long_name = "paired_kampff." + "x" * 300
    short = bounded_name(long_name)
    assert len(short.encode()) == MAX_NAME_BYTES
    assert short.startswith("paired_kampff.xxx") and HASH_MARK in short
    assert bounded_name(long_name) == short  # the same name, the same folder


def test_long_names_that_differ_only_at_the_end_get_different_folders():
    a, b = "p" * 300 + "a", "p" * 300 + "b"
    assert bounded_name(a) != bounded_name(b)


def test_shortening_never_splits_a_character():
    short = bounded_name("\u00e9" * 200)  # 2 bytes each
    short.encode("utf-8")
    assert len(short.encode()) <= MAX_NAME_BYTES


def test_attempt_names_come_from_the_run_and_the_retry():
    run_id = "5b1c2f3e-1d2a-4c3b-9e8f-0a1b2c3d4e5f"
    assert attempt_name(run_id, 0) == f"{run_id}-a0"
    assert attempt_name(run_id, 2) != attempt_name(run_id, 0)
    assert is_attempt_name(attempt_name(run_id, 1))
    for other in ("sorter", "_canary", "job.json", f".{run_id}-a0.claim"):
        assert not is_attempt_name(other)
    with pytest.raises(ValueError):
        attempt_name("../x", 0)
