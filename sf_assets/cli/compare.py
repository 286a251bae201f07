"""``sf-assets compare-results A B``: two records or summary files, cell by cell.

Answers "why does my table differ from the published one?": it lists every
cell whose scores, params, seeds, library versions or output differ between
two ``sorting_records.json`` files or two ``sorter_summary.csv`` files.  Exit
codes follow ``diff``: 0 identical, 1 different, 2 bad input.
"""
from __future__ import annotations

import argparse

from sf_assets.core.errors import RecordError
from sf_assets.core.score_diff import diff_results, read_results
from sf_assets.stores.inputs import read_source

EXIT_DIFFERENT = 1


def compare_results(args: argparse.Namespace) -> int:
    kind_a, cells_a = read_results(*read_source(args.a, None))
    kind_b, cells_b = read_results(*read_source(args.b, None))
    if kind_a != kind_b:
        raise RecordError(f"{args.b}: a {kind_b} file, but {args.a} is a {kind_a} file; expected two of a kind")
    differences = diff_results(cells_a, cells_b)
    for difference in differences:
        print(difference.describe())
    cells = len(cells_a.keys() | cells_b.keys())
    differing = len({d.cell for d in differences})
    if differing:
        print(f"{kind_a}: {differing} of {cells} cell(s) differ")
    else:
        print(f"{kind_a}: all {cells} cell(s) identical")
    return EXIT_DIFFERENT if differences else 0


def add_compare_results(subparsers: argparse._SubParsersAction) -> None:
    """Register ``compare-results``."""
    parser = subparsers.add_parser(
        "compare-results",
        help="diff two records or summary files cell by cell",
        description="Compare two run-sortings records files (JSON) or two sorter_summary.csv files cell by cell: "
        "scores, params, seeds, library versions and outputs. Exit 0 when identical, 1 when they differ.",
    )
    parser.add_argument("a", metavar="A", help="records JSON or summary CSV: a path or sha1:// URI")
    parser.add_argument("b", metavar="B", help="the file to compare it with, of the same kind")
    parser.set_defaults(run=compare_results)
