"""Ground-truth agreement as the viewer shows it, read from the stored comparison.

The ``sorting_comparison`` asset stores one JSON per sorting: a row per *true*
unit (``true_unit_id``, ``best_unit_id``, ``accuracy``, ``precision``,
``recall``, ``snr``) and the settings used.  The viewer shows the same
numbers, never recomputed: per sorted unit, the true unit it is the best
match of (the most accurate one when it matches several), that accuracy and
that true unit's SNR; per true unit of a ground truth, its SNR and each
sorter's accuracy on it.
"""
from __future__ import annotations

import math

NO_MATCH = ""


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def sorted_unit_agreement(unit_ids: list, comparison_units: list[dict]) -> dict[str, list]:
    """Columns for the viewer's unit table, one value per sorted unit of ``unit_ids``.

    Parameters
    ----------
    unit_ids : list
        The sorted units, in the analyzer's order.
    comparison_units : list[dict]
        The comparison's rows (one per true unit, with its best match).

    Returns
    -------
    dict
        ``gt_unit`` (the matched true unit, ``""`` if none), ``gt_accuracy``
        and ``gt_snr`` (NaN if none).
    """
    best: dict[str, dict] = {}
    for row in comparison_units:
        matched = row.get("best_unit_id")
        if matched is None:
            continue
        kept = best.get(str(matched))
        if kept is None or _number(row.get("accuracy")) > _number(kept.get("accuracy")):
            best[str(matched)] = row
    columns = {"gt_unit": [], "gt_accuracy": [], "gt_snr": []}
    for unit_id in unit_ids:
        row = best.get(str(unit_id))
        columns["gt_unit"].append(NO_MATCH if row is None else str(row["true_unit_id"]))
        columns["gt_accuracy"].append(float("nan") if row is None else _number(row.get("accuracy")))
        columns["gt_snr"].append(float("nan") if row is None else _number(row.get("snr")))
    return columns


def true_unit_agreement(unit_ids: list, snr_by_unit: dict, comparisons: dict[str, list[dict]]) -> dict[str, list]:
    """Columns for a ground truth's unit table: ``snr`` and ``accuracy_<sorter>`` per true unit.

    Parameters
    ----------
    unit_ids : list
        The true units, in the analyzer's order.
    snr_by_unit : dict
        ``{str(unit id): snr or None}`` as the ``ground_truth`` asset stores it.
    comparisons : dict
        ``{sorter: comparison rows}`` for the sortings of this recording.

    Returns
    -------
    dict[str, list]
        Column name -> one value per true unit (NaN where unknown).
    """
    columns = {"snr": [_number(snr_by_unit.get(str(u))) for u in unit_ids]}
    for sorter, rows in sorted(comparisons.items()):
        by_true = {str(r["true_unit_id"]): r for r in rows}
        columns[f"accuracy_{sorter}"] = [_number(by_true.get(str(u), {}).get("accuracy")) for u in unit_ids]
    return columns


def agreement_rows(comparison_units: list[dict]) -> list[dict]:
    """The comparison's rows for the viewer's agreement table, highest SNR first.

    Parameters
    ----------
    comparison_units : list[dict]
        The comparison's rows.

    Returns
    -------
    list[dict]
        Rows with the table's columns.
    """
    def snr_key(row):
        snr = _number(row.get("snr"))
        return -snr if not math.isnan(snr) else math.inf

    return sorted(comparison_units, key=snr_key)
