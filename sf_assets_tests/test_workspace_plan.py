"""Tests for sf_assets.core.workspace_plan: entries from sorting records, and the diff."""
from __future__ import annotations

import json
import time

import pytest

from sf_assets.core.errors import RecordError, WorkspaceError
from sf_assets.core.records import SortingRecord, read_records
from sf_assets.core.workspace_plan import (
    GROUND_TRUTH,
    RECORDING,
    SORTING,
    WorkspaceEntry,
    entries_from_records,
    plan_sync,
    sorting_output_uri,
)


def _record(sorter: str, study: str, recording: str, errored: bool = False, **overrides) -> SortingRecord:
    fields = dict(
        recording_name=recording,
        study_name=study,
        sorter_name=sorter,
        sorting_parameters={"detect_threshold": 5.5},
        console_out_uri=f"sha1://{'c' * 40}/console-{sorter}-{recording}.json",
        cpu_time_sec=None if errored else 12.5,
        errored=errored,
        start_time=1_700_000_000.0,
        end_time=1_700_000_012.5,
        sorting_output=None
        if errored
        else {
            "sorting_format": "mda",
            "data": {"sorting_object_uri": f"sha1://{'a' * 40}/{sorter}-{recording}.json"},
        },
        recording_uri=f"sha1://{'1' * 40}/{study}-{recording}.json",
        ground_truth_uri=f"sha1://{'2' * 40}/{study}-{recording}-firings_true.json",
    )
    fields.update(overrides)
    return SortingRecord(**fields)


def test_entries_cover_recordings_ground_truths_and_sortings_once():
    records = [
        _record("MS5", "study_a", "rec1"),
        _record("MS5", "study_a", "rec2"),
        _record("Tridesclous2", "study_a", "rec1"),
        _record("Tridesclous2", "study_a", "rec2"),
    ]
    entries, notes = entries_from_records(records)

    assert notes == []
    assert [(e.kind, e.label) for e in entries] == [
        (RECORDING, "study_a/rec1"),
        (RECORDING, "study_a/rec2"),
        (GROUND_TRUTH, "Ground-Truth/study_a/rec1"),
        (GROUND_TRUTH, "Ground-Truth/study_a/rec2"),
        (SORTING, "MS5/study_a/rec1"),
        (SORTING, "MS5/study_a/rec2"),
        (SORTING, "Tridesclous2/study_a/rec1"),
        (SORTING, "Tridesclous2/study_a/rec2"),
    ]
    by_label = {e.label: e for e in entries}
    assert by_label["study_a/rec1"].uri == records[0].recording_uri
    assert by_label["Ground-Truth/study_a/rec1"].uri == records[0].ground_truth_uri
    assert by_label["Ground-Truth/study_a/rec1"].details == {"recording_label": "study_a/rec1"}
    sorting = by_label["Tridesclous2/study_a/rec2"]
    assert sorting.uri == records[3].sorting_output["data"]["sorting_object_uri"]
    assert (sorting.sorter_name, sorting.study_name, sorting.recording_name) == (
        "Tridesclous2",
        "study_a",
        "rec2",
    )
    assert sorting.details["sorting_parameters"] == {"detect_threshold": 5.5}
    assert sorting.details["cpu_time_sec"] == 12.5
    assert sorting.details["recording_label"] == "study_a/rec2"
    assert sorting.details["ground_truth_label"] == "Ground-Truth/study_a/rec2"
    json.dumps([e.details for e in entries])  # details must be storable as JSON
    assert all(e.sorter_name is None for e in entries if e.kind != SORTING)


def test_errored_record_gives_a_note_but_keeps_its_recording_and_ground_truth():
    errored = _record("KS4", "study_b", "rec9", errored=True)
    entries, notes = entries_from_records([errored])

    assert [e.label for e in entries] == ["study_b/rec9", "Ground-Truth/study_b/rec9"]
    assert notes == [f"skipped errored sorting KS4/study_b/rec9 (console output: {errored.console_out_uri})"]


def test_errored_record_without_console_output_says_so():
    _, notes = entries_from_records([_record("KS4", "s", "r", errored=True, console_out_uri=None)])
    assert notes == ["skipped errored sorting KS4/s/r (console output: none recorded)"]


def test_records_read_from_json_give_the_same_entries():
    records = [_record("MS5", "study_a", "rec1"), _record("KS4", "study_a", "rec1", errored=True)]
    raw = json.dumps([r.to_json_dict() for r in records])
    assert entries_from_records(read_records(raw, "sortings.json")) == entries_from_records(records)


def test_repeated_sorting_record_keeps_the_first_and_says_so():
    first = _record("MS5", "s", "r")
    again = _record(
        "MS5",
        "s",
        "r",
        sorting_output={"sorting_format": "mda", "data": {"sorting_object_uri": "sha1://" + "b" * 40 + "/x.json"}},
    )
    entries, notes = entries_from_records([first, again])

    assert [e.uri for e in entries if e.kind == SORTING] == [first.sorting_output["data"]["sorting_object_uri"]]
    assert len(notes) == 1 and notes[0].startswith("ignored repeated sorting record MS5/s/r")


def test_records_disagreeing_on_a_recording_uri_raise():
    a = _record("MS5", "s", "r")
    b = _record("KS4", "s", "r", recording_uri="sha1://" + "9" * 40 + "/other.json")
    with pytest.raises(RecordError, match=r"recording 's/r'.*other\.json"):
        entries_from_records([a, b])


def test_a_name_that_cannot_be_part_of_a_label_raises_naming_the_record():
    records = [_record("MS5", "s", "r"), _record("MS5", "s", "a/b")]
    with pytest.raises(RecordError, match=r"sorting record \[1\] .*recordingName 'a/b'.*cannot make a workspace label"):
        entries_from_records(records)


def test_successful_record_without_sorting_output_raises():
    with pytest.raises(RecordError, match="sorting record MS5/s/r: sortingOutput is null"):
        entries_from_records([_record("MS5", "s", "r", sorting_output=None)])


def test_sorting_output_uri_reads_legacy_h5_and_rejects_unknown_data():
    legacy = {"sorting_format": "h5_v1", "data": {"h5_path": "sha1://" + "d" * 40 + "/sorting.h5"}}
    assert sorting_output_uri(legacy, "here") == legacy["data"]["h5_path"]
    with pytest.raises(RecordError, match=r"MS5/s/r: sortingOutput.data must hold one of"):
        sorting_output_uri({"sorting_format": "npz", "data": {"path": 3}}, "MS5/s/r")


def test_entry_rejects_an_unknown_kind_and_a_misplaced_sorter_name():
    with pytest.raises(WorkspaceError, match="kind 'curation'"):
        WorkspaceEntry("x/y", "curation", "u", "x", "y")
    with pytest.raises(WorkspaceError, match="sorter_name must be set"):
        WorkspaceEntry("MS5/x/y", SORTING, "u", "x", "y")
    with pytest.raises(WorkspaceError, match="sorter_name must be set"):
        WorkspaceEntry("x/y", RECORDING, "u", "x", "y", sorter_name="MS5")


def _entry(i: int) -> WorkspaceEntry:
    return WorkspaceEntry(f"study/rec_{i:05d}", RECORDING, f"sha1://{i:040x}/rec.json", "study", f"rec_{i:05d}")


def test_plan_splits_by_label_only_and_keeps_order():
    entries = [_entry(3), _entry(1), _entry(2)]
    present = {"study/rec_00001", "unrelated/label"}
    changed_uri = WorkspaceEntry("study/rec_00002", RECORDING, "sha1://other", "study", "rec_00002")

    plan = plan_sync([*entries[:2], changed_uri], present | {"study/rec_00002"})
    assert [e.label for e in plan.to_add] == ["study/rec_00003"]
    assert plan.already_present == ["study/rec_00001", "study/rec_00002"]

    plan = plan_sync(entries, present)
    assert plan.to_add == [entries[0], entries[2]]
    assert plan.already_present == ["study/rec_00001"]


def test_plan_rejects_a_label_given_twice():
    with pytest.raises(WorkspaceError, match="'study/rec_00007' twice"):
        plan_sync([_entry(7), _entry(7)], set())


def test_plan_over_nine_thousand_labels_takes_milliseconds():
    entries = [_entry(i) for i in range(9_000)]
    existing = {f"study/rec_{i:05d}" for i in range(4_500, 13_500)}

    started = time.perf_counter()
    plan = plan_sync(entries, existing)
    elapsed_s = time.perf_counter() - started

    assert len(plan.to_add) == 4_500 and len(plan.already_present) == 4_500
    # A quadratic diff (list look-ups) takes seconds here; the set diff about 2 ms.
    assert elapsed_s < 0.1, f"plan_sync took {elapsed_s:.3f} s for 9,000 entries"
