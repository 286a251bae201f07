"""``sf-assets compare-results A B``: exit 0 identical, 1 different, 2 bad input."""
from __future__ import annotations

import json
from dataclasses import replace

from sf_assets.cli import main
from sf_assets_tests.test_records import GOOD
from sf_assets_tests.test_score_diff import SUMMARY_A


def test_identical_summaries_exit_0(tmp_path, capsys):
    (tmp_path / "a.csv").write_text(SUMMARY_A)
    (tmp_path / "b.csv").write_text(SUMMARY_A)
    assert main(["compare-results", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0
    assert capsys.readouterr().out == "summary: all 2 cell(s) identical\n"


def test_a_moved_score_is_listed_and_exits_1(tmp_path, capsys):
    (tmp_path / "a.csv").write_text(SUMMARY_A)
    (tmp_path / "b.csv").write_text(SUMMARY_A.replace("0.976", "0.934"))
    assert main(["compare-results", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 1
    assert capsys.readouterr().out == (
        "SC2/SET/s1: mean_accuracy 0.976 -> 0.934 (-0.042)\nsummary: 1 of 2 cell(s) differ\n"
    )


def test_records_with_another_seed_differ(tmp_path, capsys):
    other = replace(GOOD, sorting_parameters={"seed": 1}, provenance={**GOOD.provenance, "seeds": {"seed": 1}})
    (tmp_path / "a.json").write_text(json.dumps([GOOD.to_json_dict()]))
    (tmp_path / "b.json").write_text(json.dumps([other.to_json_dict()]))
    assert main(["compare-results", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    out = capsys.readouterr().out.splitlines()
    cell = "MountainSort4/paired_kampff/2014_11_25_Pair_3_0"
    assert out == [
        f'{cell}: provenance.seeds {{"seed": 0}} -> {{"seed": 1}}',
        f'{cell}: sortingParameters {{"detect_threshold": 3}} -> {{"seed": 1}}',
        "records: 1 of 1 cell(s) differ",
    ]


def test_two_kinds_or_a_missing_file_exit_2_with_one_line(tmp_path, capsys):
    (tmp_path / "a.csv").write_text(SUMMARY_A)
    (tmp_path / "b.json").write_text(json.dumps([GOOD.to_json_dict()]))
    assert main(["compare-results", str(tmp_path / "a.csv"), str(tmp_path / "b.json")]) == 2
    err = capsys.readouterr().err
    assert err == f"sf-assets: error: {tmp_path / 'b.json'}: a records file, but {tmp_path / 'a.csv'} is a summary file; expected two of a kind\n"
    assert main(["compare-results", str(tmp_path / "a.csv"), str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
