"""Fan-in results: the sorter summary table and the run_sortings.py records file.

Both read the latest per-partition metadata from the event log for the pairs
the spec assigns only, so an unassigned (sorter, recording) cell never holds
them back.  The summary also counts each cell's errored sorts (a sorter that
cannot run here shows as a failed cell), says whether the sorter's scores are
reproducible (docs/sorters.md), and carries the score regression check.
"""

import base64
import json
import time

import dagster as dg

from sf_assets.orchestration.assets.automation import AS_RESULTS_LAND
from sf_assets.orchestration.assets.faults import fails_clearly_on_storage_faults
from sf_assets.orchestration.assets.history import latest_partition_events, plain_metadata
from sf_assets.orchestration.assets.metadata import table
from sf_assets.orchestration.assets.score_checks import (
    HISTORY_COLUMNS,
    history_rows,
    score_regression_result,
    score_regression_spec,
    summary_cells,
    summary_history,
)
from sf_assets.orchestration.assets.keys import SORTING_KEY
from sf_assets.orchestration.assets.sortings import draws_seeded, sorting, sorting_comparison
from sf_assets.orchestration.assets.results_page import RESULTS_PAGE, collect_pair_results, write_results_page
from sf_assets.core.atomic import replace_atomically, write_bytes_atomic
from sf_assets.core.campaign import Campaign
from sf_assets.core.score_diff import SUMMARY_COLUMNS as SCORE_COLUMNS
from sf_assets.core.records import SortingRecord, write_records
from sf_assets.core.sorter_catalog import cell_reproducible, resolve_sorter
from sf_assets.orchestration.partitions import pair_key
from sf_assets.report import results_page as page
from sf_assets.report.plots import accuracy_vs_snr_png
from sf_assets.orchestration.resources import KacheryResource, OutputsResource, StudysetResource

def _assigned_partitions(campaign: Campaign) -> dict[str, tuple]:
    return {str(pair_key(s.name, r)): (s, r) for s, r in campaign.jobs}


def collect_records(instance: dg.DagsterInstance, campaign: Campaign) -> list[SortingRecord]:
    """Latest record of every assigned pair that has run, errored ones included.

    Parameters
    ----------
    instance : DagsterInstance
        Whose runs, backfills and event log are read.
    campaign : Campaign
        Its assigned pairs, in spec order.

    Returns
    -------
    list[SortingRecord]
        The records.
    """
    assigned = _assigned_partitions(campaign)
    latest = latest_partition_events(instance, SORTING_KEY, include_observations=True, partitions=assigned)
    records = []
    for partition in assigned:  # spec order
        if partition in latest:
            md = plain_metadata(latest[partition][1])
            if "record" in md:
                records.append(SortingRecord.from_json_dict(md["record"], where=f"sorting[{partition}]"))
    return records


def collect_comparisons(instance: dg.DagsterInstance, campaign: Campaign) -> tuple[list[dict], dict[str, str]]:
    """The current comparison of every assigned pair, and the pairs left out with the reason.

    A pair's latest comparison counts only if it succeeded and is newer than
    the pair's latest sorting event (a new sorting, or an errored attempt):
    the summary never scores a sorting other than the current one.  Event
    storage ids grow with every event the instance records, so they order a
    comparison and a sorting.

    Parameters
    ----------
    instance : DagsterInstance
        Whose runs, backfills and event log are read.
    campaign : Campaign
        Its assigned pairs.

    Returns
    -------
    tuple[list[dict], dict[str, str]]
        The metadata of each current comparison in spec order, and
        ``{partition key: why it was left out}``.
    """
    assigned = _assigned_partitions(campaign)
    comparisons = latest_partition_events(
        instance, dg.AssetKey("sorting_comparison"), include_observations=True, partitions=assigned
    )
    sortings = latest_partition_events(instance, SORTING_KEY, include_observations=True, partitions=assigned)
    current, left_out = [], {}
    for partition in assigned:
        if partition not in comparisons:
            continue
        storage_id, event = comparisons[partition]
        md = plain_metadata(event)
        if md.get("errored"):
            left_out[partition] = md.get("error") or "the comparison failed"
        elif partition in sortings and sortings[partition][0] > storage_id:
            left_out[partition] = "the sorting changed after this comparison (a new sort or an errored attempt)"
        else:
            if "sorting_draws_seeded" not in md and partition in sortings:  # compared before comparisons said
                md["sorting_draws_seeded"] = draws_seeded(plain_metadata(sortings[partition][1]))
            current.append(md)
    return current, left_out


SUMMARY_COLUMNS = ["sorter", "study_set", "study", "recordings", *SCORE_COLUMNS, "reproducible"]
"""The summary table's columns: a cell's identity, its scores (compared cell by cell), reproducibility."""


def summary_frame(comparisons: list[dict], errored: list[dict] = ()):
    """One row per (sorter, study set, study): the SpikeForest summary numbers.

    ``errored`` holds one ``{sorter, study_set, study}`` per errored sort: they
    are counted in ``num_errored``, and a cell with only errored sorts still
    gets a row (0 recordings, no scores): a failed cell.

    Parameters
    ----------
    comparisons : list[dict]
        The current comparisons' metadata (``sorting_draws_seeded`` decides, with the catalog, a cell's
        ``reproducible``: :func:`~sf_assets.core.sorter_catalog.cell_reproducible`).
    errored : list[dict]
        One ``{sorter, study_set, study}`` per errored sort.

    Returns
    -------
    pandas.DataFrame
        The summary's columns, one row per cell.
    """
    import pandas as pd

    rows = []
    for md in comparisons:
        s = md["summary"]
        rows.append(
            {
                "sorter": md["sorter"],
                "study_set": md["study_set"],
                "study": md["study"],
                "recordings": 1,
                "mean_accuracy": s.get("mean_accuracy"),
                "mean_precision": s.get("mean_precision"),
                "mean_recall": s.get("mean_recall"),
                "num_well_detected": s.get("num_well_detected", 0),
                "num_true_units": s.get("num_true_units", 0),
                "num_errored": 0,
                # absent: compared before comparisons said, and its sorting's provenance was not found
                "draws_seeded": md.get("sorting_draws_seeded") is True,
            }
        )
    no_scores = {"mean_accuracy": float("nan"), "mean_precision": float("nan"), "mean_recall": float("nan")}
    for cell in errored:  # the score columns exist even when no comparison does
        rows.append(
            {**cell, **no_scores, "recordings": 0, "num_well_detected": 0, "num_true_units": 0, "num_errored": 1,
             "draws_seeded": None}  # no sorting, so no draws
        )
    if not rows:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    df = pd.DataFrame(rows)
    grouped = df.groupby(["sorter", "study_set", "study"], as_index=False).agg(
        recordings=("recordings", "sum"),
        mean_accuracy=("mean_accuracy", "mean"),
        mean_precision=("mean_precision", "mean"),
        mean_recall=("mean_recall", "mean"),
        num_well_detected=("num_well_detected", "sum"),
        num_true_units=("num_true_units", "sum"),
        num_errored=("num_errored", "sum"),
        draws_seeded=("draws_seeded", lambda values: [v for v in values if v is not None]),
    )
    grouped["reproducible"] = [
        cell_reproducible(resolve_sorter(name), seeded) for name, seeded in zip(grouped["sorter"], grouped["draws_seeded"])
    ]
    return grouped.sort_values(["sorter", "study_set", "study"]).reset_index(drop=True)[SUMMARY_COLUMNS]


def _summary_table(df) -> dg.MetadataValue:
    types = {
        "sorter": "string",
        "study_set": "string",
        "study": "string",
        "recordings": "int",
        "reproducible": "string",
    }
    columns = {c: types.get(c, "float" if c.startswith("mean") else "int") for c in df.columns}
    return table(df.to_dict(orient="records"), columns)


@dg.asset(
    group_name="results",
    kinds={"pandas", "matplotlib"},
    deps=[sorting_comparison, sorting],  # errored sortings are counted too
    automation_condition=AS_RESULTS_LAND,
    check_specs=[score_regression_spec],
    description="One table, sorter x study set/study: mean accuracy, precision and recall over "
    "true units with SNR above 8, well-detected counts (accuracy >= 0.8), errored sorts and whether "
    "the sorter's scores are reproducible; plus accuracy vs SNR, each cell's score history, and the "
    "static results page (outputs/results.html) with failed pairs shown as such.",
)
@fails_clearly_on_storage_faults
def sorter_summary(
    context: dg.AssetExecutionContext,
    studyset: StudysetResource,
    kachery: KacheryResource,
    outputs: OutputsResource,
):
    """Summarize the assigned pairs' comparisons per sorter and study; write the CSV, plot and results page."""
    store = kachery.store()
    campaign = studyset.campaign(kachery)
    comparisons, left_out = collect_comparisons(context.instance, campaign)
    for partition, why in left_out.items():
        context.log.warning(f"summary leaves out {partition}: {why}")
    pairs = collect_pair_results(context.instance, _assigned_partitions(campaign), store)
    units_by_sorter: dict[str, list[dict]] = {}
    for pair in pairs:
        units_by_sorter.setdefault(pair.sorter, []).extend(pair.units)
    study_sets = {r.study_name: r.study_set_name for _, r in campaign.jobs}
    errored = [
        {"sorter": r.sorter_name, "study_set": study_sets.get(r.study_name, ""), "study": r.study_name}
        for r in collect_records(context.instance, campaign)
        if r.errored
    ]
    df = summary_frame(comparisons, errored)
    cells = summary_cells(df.to_dict(orient="records"), comparisons)
    history = summary_history(context.instance)
    previous = history[-1][1] if history else None
    png = accuracy_vs_snr_png(units_by_sorter)
    folder = outputs.path()
    csv_path = folder / "sorter_summary.csv"
    # Whole or not at all: `sf-assets compare` and the results page's readers may open them any time.
    replace_atomically(csv_path, lambda tmp: df.to_csv(tmp, index=False))
    write_bytes_atomic(folder / "accuracy_vs_snr.png", png)
    history_path = _write_history(folder, history + [(time.time(), cells)])
    page_path = folder / RESULTS_PAGE
    write_results_page(page_path, pairs)
    plot_md = f"![accuracy vs SNR](data:image/png;base64,{base64.b64encode(png).decode()})"
    yield dg.MaterializeResult(
        metadata={
            "summary": _summary_table(df),
            "accuracy_vs_snr": dg.MetadataValue.md(plot_md),
            "num_comparisons": len(comparisons),
            "left_out": dg.MetadataValue.json(left_out),
            "num_errored": len(errored),
            "csv": dg.MetadataValue.path(str(csv_path)),
            "score_history": dg.MetadataValue.path(str(history_path)),
            "cells": dg.MetadataValue.json([c.to_json_dict() for c in cells]),
            "results_page": dg.MetadataValue.url(page_path.resolve().as_uri()),
            "pairs_by_status": dg.MetadataValue.json(
                {page.STATUS_TEXT[s]: sum(1 for p in pairs if p.status == s) for s in page.STATUSES}
            ),
            "text": dg.MetadataValue.md("```\n" + df.to_string(index=False) + "\n```"),
        }
    )
    yield score_regression_result(previous, cells)


def _write_history(folder, history) -> str:
    """``score_history.csv``: every cell's mean accuracy in each of the latest summaries, oldest first."""
    import pandas as pd

    path = folder / "score_history.csv"
    frame = pd.DataFrame(history_rows(history), columns=HISTORY_COLUMNS)
    replace_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    return str(path)


@dg.asset(
    group_name="results",
    kinds={"json", "kachery"},
    deps=[sorting],
    automation_condition=AS_RESULTS_LAND,
    description="The run_sortings.py output: one record per assigned (sorter, recording) that has run, "
    "errored ones included, written to a file and to kachery for the old tools.",
)
@fails_clearly_on_storage_faults
def sorting_records(
    context: dg.AssetExecutionContext, studyset: StudysetResource, kachery: KacheryResource, outputs: OutputsResource
):
    """Write the ``run_sortings.py`` records of every assigned pair that has run, to a file and to kachery."""
    campaign = studyset.campaign(kachery)
    records = collect_records(context.instance, campaign)
    store = kachery.store()
    payload = [r.to_json_dict() for r in records]
    uri = store.store_json(payload, label="sorting_records.json")
    path = outputs.path() / "sorting_records.json"
    # This file is the asset's own: it is replaced whole, never appended, and two
    # overlapping runs write under different temporary names.
    replace_atomically(path, lambda tmp: write_records(tmp, records))
    return dg.MaterializeResult(
        metadata={
            "num_records": len(records),
            "num_errored": sum(1 for r in records if r.errored),
            "records_uri": uri,
            "path": dg.MetadataValue.path(str(path)),
            "preview": dg.MetadataValue.json(json.loads(json.dumps(payload[:3]))),
        }
    )
