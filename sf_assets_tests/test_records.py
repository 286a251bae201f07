"""Sorting records: the twelve keys, typed reads, and a writer that never overwrites."""
from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import replace

import pytest

from sf_assets.core.errors import RecordError
from sf_assets.core.records import SortingRecord, read_records, write_records

KEYS = [
    "recordingName",
    "studyName",
    "sorterName",
    "sortingParameters",
    "consoleOutUri",
    "cpuTimeSec",
    "errored",
    "startTime",
    "endTime",
    "sortingOutput",
    "recordingUri",
    "groundTruthUri",
    "provenance",  # sf-assets' thirteenth key, after the twelve of run_sortings.py
]
PROVENANCE = {
    "seeds": {"seed": 0},
    "threads": {"applied": 1, "numba": 1, "threadpools": [{"api": "openblas", "num_threads": 1}], "env": {}},
    "versions": {"spikeinterface": "0.105.3", "numpy": "2.4.6", "numba": "0.68.1", "sorter": "2025.12"},
    "container_image": None,
    "container_image_digest": None,
}

GOOD = SortingRecord(
    recording_name="2014_11_25_Pair_3_0",
    study_name="paired_kampff",
    sorter_name="MountainSort4",
    sorting_parameters={"detect_threshold": 3},
    console_out_uri=f"sha1://{'c' * 40}/console.json",
    cpu_time_sec=12.5,
    errored=False,
    start_time=1_700_000_000.0,
    end_time=1_700_000_012.5,
    sorting_output={"sorting_format": "mda", "data": {"sorting_object_uri": f"sha1://{'a' * 40}/sorting.json"}},
    recording_uri=f"sha1://{'1' * 40}/rec.json",
    ground_truth_uri=f"sha1://{'2' * 40}/rec.firings_true.json",
    provenance=PROVENANCE,
)
ERRORED = replace(GOOD, errored=True, cpu_time_sec=None, end_time=None, sorting_output=None, console_out_uri=None)


def test_json_dict_has_the_twelve_keys_in_order_then_provenance():
    d = GOOD.to_json_dict()
    assert list(d) == KEYS
    assert d["sortingOutput"]["data"]["sorting_object_uri"].endswith("/sorting.json")


def test_round_trip_through_json():
    for record in (GOOD, ERRORED):
        assert SortingRecord.from_json_dict(json.loads(json.dumps(record.to_json_dict())), "r") == record


def test_a_record_without_provenance_reads_as_none_and_a_bad_one_is_refused():
    old = GOOD.to_json_dict()
    del old["provenance"]  # as run_sortings.py wrote it
    assert SortingRecord.from_json_dict(old, "r") == replace(GOOD, provenance=None)
    with pytest.raises(RecordError, match=r"^r: provenance: expected an object, got a list"):
        SortingRecord.from_json_dict(GOOD.to_json_dict() | {"provenance": [1]}, "r")


def test_integer_times_are_read_as_floats():
    d = GOOD.to_json_dict() | {"cpuTimeSec": 12, "startTime": 1_700_000_000}
    record = SortingRecord.from_json_dict(d, "r")
    assert (record.cpu_time_sec, record.start_time) == (12.0, 1_700_000_000.0)
    assert isinstance(record.cpu_time_sec, float)


def _bad(**changes):
    d = GOOD.to_json_dict()
    for key, value in changes.items():
        if value is KeyError:
            del d[key]
        else:
            d[key] = value
    with pytest.raises(RecordError) as info:
        SortingRecord.from_json_dict(d, "records.json[3]")
    return str(info.value)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"errored": KeyError}, "records.json[3]: errored: missing key; expected true or false"),
        ({"errored": 0}, "records.json[3]: errored: expected true or false, got 0 (an integer)"),
        ({"cpuTimeSec": True}, "records.json[3]: cpuTimeSec: expected a number at least 0 and at most 1e+09, got true (a boolean)"),
        ({"cpuTimeSec": -1}, "records.json[3]: cpuTimeSec: expected a number at least 0 and at most 1e+09, got -1 (an integer)"),
        ({"startTime": "yesterday"}, 'records.json[3]: startTime: expected a number at least 0 and at most 1e+11, got "yesterday" (a string)'),
        ({"endTime": 1.7e12}, "records.json[3]: endTime: expected a number at least 0 and at most 1e+11, got 1700000000000.0 (a number)"),
        ({"sortingParameters": None}, "records.json[3]: sortingParameters: expected an object, got null"),
        ({"recordingName": 5}, "records.json[3]: recordingName: expected a string, got 5 (an integer)"),
        ({"groundTruthUri": KeyError}, "records.json[3]: groundTruthUri: missing key; expected a string"),
        ({"consoleOutUri": 1}, "records.json[3]: consoleOutUri: expected a string, got 1 (an integer)"),
        ({"sortingOutput": []}, "records.json[3]: sortingOutput: expected an object, got a list"),
        ({"sortingOutput": {"data": {}}}, "records.json[3]: sortingOutput.sorting_format: missing key; expected a string"),
        ({"sortingOutput": {"sorting_format": "mda", "data": "x"}}, 'records.json[3]: sortingOutput.data: expected an object, got "x" (a string)'),
    ],
)
def test_bad_records_name_the_key_and_the_expectation(changes, expected):
    assert _bad(**changes) == expected


def test_record_must_be_an_object():
    with pytest.raises(RecordError, match=r"^r: top level: expected an object, got a list$"):
        SortingRecord.from_json_dict([], "r")


def test_write_then_read(tmp_path):
    path = tmp_path / "sortings.json"
    write_records(path, [GOOD, ERRORED])
    assert read_records(path.read_bytes(), str(path)) == [GOOD, ERRORED]
    assert [list(d) for d in json.loads(path.read_text())] == [KEYS, KEYS]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sortings.json"]


def test_write_refuses_to_overwrite_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "sortings.json"
    path.write_text("precious")
    with pytest.raises(RecordError, match="sortings.json: already exists; expected a new file name"):
        write_records(path, [GOOD])
    assert path.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sortings.json"]


def test_write_refuses_a_dangling_symlink(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(RecordError, match="already exists"):
        write_records(link, [GOOD])
    assert not (tmp_path / "elsewhere.json").exists()


def test_write_to_dev_null_is_allowed():
    write_records(os.devnull, [GOOD])


def test_write_into_a_missing_folder(tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        write_records(tmp_path / "no" / "such.json", [GOOD])


def test_unwritable_values_write_nothing(tmp_path):
    path = tmp_path / "sortings.json"
    with pytest.raises(RecordError, match="cannot write the records as JSON"):
        write_records(path, [replace(GOOD, cpu_time_sec=float("nan"))])
    assert list(tmp_path.iterdir()) == []


def test_read_records_rejections():
    with pytest.raises(RecordError, match=r"^s.json: invalid JSON at line 1, column 2: "):
        read_records("[", "s.json")
    with pytest.raises(RecordError, match=r"^s.json: top level: expected a list, got an object$"):
        read_records("{}", "s.json")
    with pytest.raises(RecordError, match=r"^s.json: not UTF-8 text: byte 0xfe at offset 1$"):
        read_records(b"[\xfe]", "s.json")
    with pytest.raises(RecordError, match=r"^s.json: \[1\]\.errored: expected true or false, got null$"):
        read_records(json.dumps([GOOD.to_json_dict(), GOOD.to_json_dict() | {"errored": None}]), "s.json")


def test_concurrent_writers_to_one_path_leave_exactly_one_whole_file(tmp_path):
    path = tmp_path / "sortings.json"
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def write(index: int) -> None:
        barrier.wait()
        try:
            write_records(path, [replace(GOOD, recording_name=f"rec{index}")])
            outcomes.append("written")
        except RecordError:
            outcomes.append("refused")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["written"]
    assert len(read_records(path.read_bytes(), str(path))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sortings.json"]
