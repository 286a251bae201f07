"""The score regression check on ``sorter_summary``, and each cell's score history.

A cell's mean accuracy should move only when something that made it moved:
the recordings, the params (seeds included), the image, the engine version
(all in each sorting's cache key) or the sorter's libraries (each sorting's
recorded versions).  After every summary this check compares each cell with
the previous summary (:func:`sf_assets.core.score_diff.score_changes`): a
move beyond the tolerance with none of those changed is a non-deterministic
sort, and the check warns; a move with a new sorter version or new inputs is
reported with its delta, and passes.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import dagster as dg

from sf_assets.orchestration.assets.history import plain_metadata
from sf_assets.orchestration.assets.metadata import table
from sf_assets.core.score_diff import SCORE_TOLERANCE, CellChange, CellScore, fingerprint, score_changes

SCORE_REGRESSION = "score_regression"
SUMMARY_KEY = dg.AssetKey("sorter_summary")
HISTORY_LIMIT = 50
"""Summaries read back for the per-cell history."""

score_regression_spec = dg.AssetCheckSpec(
    SCORE_REGRESSION,
    asset="sorter_summary",
    description=f"Warns when a cell's mean accuracy moved by more than {SCORE_TOLERANCE} since the previous "
    "summary although its recordings, params, seeds, image, engine and sorter versions did not change "
    "(a non-deterministic sort); reports the delta of cells whose sorter version or inputs changed.",
)


def summary_cells(rows: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> list[CellScore]:
    """The summary's cells, each with the fingerprints of its sortings' inputs and versions.

    Parameters
    ----------
    rows : list of dict
        The summary rows (``sorter``, ``study_set``, ``study``, ``mean_accuracy``).
    comparisons : list of dict
        The ``sorting_comparison`` metadata of the summarized pairs
        (``sorting_cache_key``, ``sorting_versions``).
    """
    keys: dict[tuple, list] = defaultdict(list)
    versions: dict[tuple, list] = defaultdict(list)
    for md in comparisons:
        cell = (md["sorter"], md["study_set"], md["study"])
        keys[cell].append(md.get("sorting_cache_key"))
        versions[cell].append(md.get("sorting_versions"))
    cells = []
    for row in rows:
        cell = (row["sorter"], row["study_set"], row["study"])
        accuracy = row.get("mean_accuracy")
        cells.append(
            CellScore(
                *cell,
                mean_accuracy=None if accuracy is None or accuracy != accuracy else float(accuracy),
                inputs=fingerprint(keys[cell]),
                versions=fingerprint(versions[cell]),
            )
        )
    return cells


def summary_history(instance: dg.DagsterInstance, limit: int = HISTORY_LIMIT) -> list[tuple[float, list[CellScore]]]:
    """The cells of the latest ``limit`` summaries, oldest first, each with its time (epoch seconds)."""
    result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=SUMMARY_KEY), limit=limit)
    history = []
    for record in reversed(result.records):
        cells = plain_metadata(record.event_log_entry).get("cells")
        if isinstance(cells, list):
            history.append((record.event_log_entry.timestamp, [CellScore.from_json_dict(c) for c in cells]))
    return history


HISTORY_COLUMNS = ["materialized_at", "sorter", "study_set", "study", "mean_accuracy", "inputs", "versions"]


def history_rows(history: list[tuple[float, list[CellScore]]]) -> list[dict[str, Any]]:
    """One row per (summary, cell): the per-cell score history, oldest first."""
    return [
        {
            "materialized_at": timestamp,
            "sorter": cell.sorter,
            "study_set": cell.study_set,
            "study": cell.study,
            "mean_accuracy": cell.mean_accuracy,
            "inputs": cell.inputs,
            "versions": cell.versions,
        }
        for timestamp, cells in history
        for cell in cells
    ]


def _change_row(change: CellChange) -> dict[str, Any]:
    sorter, study_set, study = change.key
    return {
        "sorter": sorter,
        "study_set": study_set,
        "study": study,
        "before": change.before,
        "after": change.after,
        "delta": change.delta,
        "cause": change.cause,
    }


def score_regression_result(previous: list[CellScore] | None, cells: list[CellScore]) -> dg.AssetCheckResult:
    """The check's verdict on ``cells`` against the previous summary's (None: there was none)."""
    if previous is None:
        return dg.AssetCheckResult(
            check_name=SCORE_REGRESSION,
            passed=True,
            metadata={"tolerance": SCORE_TOLERANCE, "num_cells": len(cells)},
            description="first summary: nothing to compare with",
        )
    changes = score_changes(previous, cells, SCORE_TOLERANCE)
    unexplained = [c for c in changes if c.unexplained]
    metadata: dict[str, Any] = {
        "tolerance": SCORE_TOLERANCE,
        "num_cells": len(cells),
        "num_changed_cells": len(changes),
        "num_unexplained": len(unexplained),
    }
    if changes:
        metadata["changes"] = table(
            [_change_row(c) for c in changes],
            {
                "sorter": "string",
                "study_set": "string",
                "study": "string",
                "before": "float",
                "after": "float",
                "delta": "float",
                "cause": "string",
            },
        )
    if unexplained:
        worst = max(unexplained, key=lambda c: abs(c.delta or 0.0))
        description = (
            f"{len(unexplained)} cell(s) moved with unchanged inputs and versions (non-deterministic sorts); "
            f"largest: {'/'.join(worst.key)} {'n/a' if worst.delta is None else format(worst.delta, '+.4f')}"
        )
    elif changes:
        description = f"{len(changes)} cell(s) changed, each with a changed sorter version or inputs"
    else:
        description = f"no cell moved by more than {SCORE_TOLERANCE}"
    return dg.AssetCheckResult(
        check_name=SCORE_REGRESSION,
        passed=not unexplained,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=description,
    )
