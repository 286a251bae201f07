"""Cell-by-cell score differences: the regression check's logic and compare-results' file diff."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sf_assets.core.errors import RecordError
from sf_assets.core.score_diff import (
    CELL_GONE,
    INPUTS_CHANGED,
    INPUTS_UNCHANGED,
    NEW_CELL,
    SORTER_VERSION_CHANGED,
    CellScore,
    diff_results,
    fingerprint,
    read_results,
    score_changes,
)
from sf_assets_tests.test_records import GOOD


def _cell(sorter, accuracy, inputs="k1", versions="v1", study="s1"):
    return CellScore(sorter, "SET", study, accuracy, inputs, versions)


def test_fingerprint_ignores_order_and_sees_every_value():
    assert fingerprint(["a", {"x": 1}]) == fingerprint([{"x": 1}, "a"])
    assert fingerprint(["a"]) != fingerprint(["a", "a"]) != fingerprint(["b"])


def test_a_move_with_nothing_changed_is_unexplained_and_the_others_say_why():
    before = [_cell("A", 0.90), _cell("B", 0.80), _cell("C", 0.70), _cell("D", 0.60), _cell("E", 0.5)]
    after = [
        _cell("A", 0.88),  # same inputs, same versions: non-determinism
        _cell("B", 0.85, versions="v2", inputs="k-of-v2"),  # a new sorter version (its cache keys hold it)
        _cell("C", 0.75, inputs="k2"),  # new params or recordings
        _cell("D", 0.6004),  # within the tolerance
        _cell("F", 0.4),
    ]
    changes = score_changes(before, after, tolerance=0.001)
    assert [(c.key[0], c.cause, c.unexplained) for c in changes] == [
        ("A", INPUTS_UNCHANGED, True),
        ("B", SORTER_VERSION_CHANGED, False),
        ("C", INPUTS_CHANGED, False),
        ("E", CELL_GONE, False),
        ("F", NEW_CELL, False),
    ]
    assert changes[0].delta == pytest.approx(-0.02) and changes[1].delta == pytest.approx(0.05)
    assert score_changes(after, after) == []
    # a cell that lost its score (all its sorts errored) with nothing changed is reported too
    [lost] = score_changes([_cell("A", 0.9)], [_cell("A", None)])
    assert (lost.cause, lost.delta) == (INPUTS_UNCHANGED, None)


SUMMARY_A = (
    "sorter,study_set,study,recordings,mean_accuracy,mean_precision,mean_recall,num_well_detected,num_true_units\n"
    "MS5,SET,s1,2,0.738,0.9,0.75,6,12\n"
    "SC2,SET,s1,2,0.976,0.98,0.99,8,12\n"
)


def test_summaries_are_diffed_cell_by_cell():
    kind, a = read_results(SUMMARY_A, "a.csv")
    assert kind == "summary" and a["MS5/SET/s1"]["mean_accuracy"] == 0.738
    _, b = read_results(SUMMARY_A.replace("0.738", "0.712").replace("SC2,", "TDC2,"), "b.csv")
    described = [d.describe() for d in diff_results(a, b)]
    assert described == [
        "MS5/SET/s1: mean_accuracy 0.738 -> 0.712 (-0.026)",
        "SC2/SET/s1: only in A",
        "TDC2/SET/s1: only in B",
    ]
    assert diff_results(a, a) == []


def test_records_are_diffed_by_sort():
    first = [GOOD.to_json_dict()]
    newer = dict(GOOD.provenance, versions={**GOOD.provenance["versions"], "spikeinterface": "0.106.0"})
    second = [replace(GOOD, provenance=newer, sorting_parameters={"detect_threshold": 4}).to_json_dict()]
    kind, a = read_results(json.dumps(first), "a.json")
    _, b = read_results(json.dumps(second), "b.json")
    assert kind == "records"
    cell = "MountainSort4/paired_kampff/2014_11_25_Pair_3_0"
    assert [(d.cell, d.field) for d in diff_results(a, b)] == [
        (cell, "provenance.versions"),
        (cell, "sortingParameters"),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("sorter,study\nA,s\n", "x.csv: expected a sorter summary CSV with columns sorter, study_set, study; missing: study_set"),
        ("sorter,study_set,study\nA,S,s\nA,S,s\n", "x.csv: line 3: cell A/S/s appears twice"),
        ("[{}]", "x.csv: [0].sortingOutput: missing key; expected an object"),
    ],
)
def test_bad_files_name_the_file_and_what_was_expected(text, message):
    with pytest.raises(RecordError) as info:
        read_results(text, "x.csv")
    assert str(info.value).startswith(message)
