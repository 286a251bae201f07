"""Cell-by-cell differences between two sets of results.

A *cell* is one (sorter, study set, study) row of the sorter summary, or one
(sorter, study, recording) sort of a records file.  SpikeForest's users could
not tell why a published score moved; these functions say which cells moved,
by how much, and whether their inputs (recording, params, seeds, engine) or
their sorter's version changed with them.  Pure functions: the asset check on
``sorter_summary`` and ``sf-assets compare-results`` both call them.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from sf_assets.core.errors import RecordError
from sf_assets.core.fields import decode_utf8
from sf_assets.core.records import read_records

SCORE_TOLERANCE = 0.001
"""How far a cell's mean accuracy may move with unchanged inputs before the check warns."""

SUMMARY_COLUMNS = (
    "mean_accuracy",
    "mean_precision",
    "mean_recall",
    "num_well_detected",
    "num_true_units",
    "num_errored",
)
"""The summary columns compared cell by cell (those a file lacks are skipped)."""

# Why a cell's score moved, from what its sortings' identities say.
INPUTS_UNCHANGED = "inputs unchanged"
SORTER_VERSION_CHANGED = "sorter version changed"
INPUTS_CHANGED = "inputs changed"
NEW_CELL = "new cell"
CELL_GONE = "cell gone"


def fingerprint(values: list[Any]) -> str:
    """A short, order-independent hash of JSON values (the cache keys or versions of a cell's sortings).

    Parameters
    ----------
    values : list[Any]
        JSON values.

    Returns
    -------
    str
        12 hex digits; the same values give the same digits in any order.
    """
    texts = sorted(json.dumps(v, sort_keys=True) for v in values)
    return hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class CellScore:
    """One summary cell as a materialization saw it.

    Attributes
    ----------
    sorter, study_set, study : str
    mean_accuracy : float | None
        None when no sorting of the cell was scored (all errored).
    inputs : str
        :func:`fingerprint` of the cell's sortings' cache keys (recording,
        sorter, params with seeds, image, engine version).
    versions : str
        :func:`fingerprint` of the library versions its sortings ran with.
    """

    sorter: str
    study_set: str
    study: str
    mean_accuracy: float | None
    inputs: str
    versions: str

    @property
    def key(self) -> tuple[str, str, str]:
        """The cell's place in the table: (sorter, study set, study)."""
        return (self.sorter, self.study_set, self.study)

    def to_json_dict(self) -> dict[str, Any]:
        """The cell as stored in the summary's metadata.

        Returns
        -------
        dict
            Plain JSON values; :meth:`from_json_dict` reads it back.
        """
        return {
            "sorter": self.sorter,
            "study_set": self.study_set,
            "study": self.study,
            "mean_accuracy": self.mean_accuracy,
            "inputs": self.inputs,
            "versions": self.versions,
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> CellScore:
        """A cell stored by :meth:`to_json_dict`.

        Parameters
        ----------
        d : dict
            The stored cell.

        Returns
        -------
        CellScore
            The cell.
        """
        return cls(d["sorter"], d["study_set"], d["study"], d.get("mean_accuracy"), d["inputs"], d["versions"])


@dataclass(frozen=True)
class CellChange:
    """A cell whose mean accuracy differs between two materializations.

    ``delta`` is after minus before (None for a new or vanished cell, or when
    one side has no score); ``cause`` is one of :data:`INPUTS_UNCHANGED`,
    :data:`SORTER_VERSION_CHANGED`, :data:`INPUTS_CHANGED`, :data:`NEW_CELL`,
    :data:`CELL_GONE`.
    """

    key: tuple[str, str, str]
    before: float | None
    after: float | None
    delta: float | None
    cause: str

    @property
    def unexplained(self) -> bool:
        """True when nothing recorded changed: the sorter is not deterministic (or its environment is not pinned)."""
        return self.cause == INPUTS_UNCHANGED


def _same(a: float | None, b: float | None, tolerance: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tolerance


def score_changes(
    before: list[CellScore], after: list[CellScore], tolerance: float = SCORE_TOLERANCE
) -> list[CellChange]:
    """The cells whose mean accuracy moved by more than ``tolerance`` (or appeared, or went), and why.

    Parameters
    ----------
    before, after : list of CellScore
        Two materializations of the summary, older first.
    tolerance : float
        Largest move of a mean accuracy (0-1) that is not reported.

    Returns
    -------
    list of CellChange
        In (sorter, study set, study) order.
    """
    old = {cell.key: cell for cell in before}
    new = {cell.key: cell for cell in after}
    changes = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a is None:
            changes.append(CellChange(key, None, b.mean_accuracy, None, NEW_CELL))
        elif b is None:
            changes.append(CellChange(key, a.mean_accuracy, None, None, CELL_GONE))
        elif not _same(a.mean_accuracy, b.mean_accuracy, tolerance):
            # Versions first: a cache key holds the libraries' versions, so a new release changes the inputs too.
            if a.versions != b.versions:
                cause = SORTER_VERSION_CHANGED
            elif a.inputs != b.inputs:
                cause = INPUTS_CHANGED
            else:
                cause = INPUTS_UNCHANGED
            delta = None if a.mean_accuracy is None or b.mean_accuracy is None else b.mean_accuracy - a.mean_accuracy
            changes.append(CellChange(key, a.mean_accuracy, b.mean_accuracy, delta, cause))
    return changes


# --- compare-results: two files, cell by cell ------------------------------------------


@dataclass(frozen=True)
class FileDifference:
    """One difference between two results files: a cell, what differs, and both values."""

    cell: str
    field: str
    a: Any
    b: Any

    def describe(self) -> str:
        """The difference in one line, as ``compare-results`` prints it.

        Returns
        -------
        str
            ``CELL: FIELD A -> B`` (with the change for numbers), or ``CELL: only in A``.
        """
        if self.field == ONLY_IN:
            return f"{self.cell}: only in {self.a}"
        if isinstance(self.a, float) and isinstance(self.b, float):
            return f"{self.cell}: {self.field} {self.a:.6g} -> {self.b:.6g} ({self.b - self.a:+.6g})"
        return f"{self.cell}: {self.field} {_show(self.a)} -> {_show(self.b)}"


_ABSENT = object()
ONLY_IN = "only in"


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, sort_keys=True)


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return None if math.isnan(value) else value


def read_summary_csv(text: str, source: str) -> dict[str, dict[str, Any]]:
    """A ``sorter_summary.csv``: {``SORTER/STUDY_SET/STUDY``: {column: value}}.

    Parameters
    ----------
    text : str
        The CSV.
    source : str
        The file's name, for the error.

    Returns
    -------
    dict[str, dict[str, Any]]
        Each cell's score columns, numbers read as numbers.

    Raises
    ------
    RecordError
        The file lacks the ``sorter``, ``study_set`` or ``study`` column, or
        names a cell twice.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("sorter", "study_set", "study") if c not in (reader.fieldnames or [])]
    if missing:
        raise RecordError(
            f"{source}: expected a sorter summary CSV with columns sorter, study_set, study; "
            f"missing: {', '.join(missing)}"
        )
    cells: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(reader, start=2):
        cell = f"{row['sorter']}/{row['study_set']}/{row['study']}"
        if cell in cells:
            raise RecordError(f"{source}: line {line}: cell {cell} appears twice")
        cells[cell] = {c: _number(row[c]) for c in SUMMARY_COLUMNS if c in row}
    return cells


RECORD_FIELDS = ("errored", "sortingParameters", "sortingOutput", "recordingUri", "groundTruthUri")
PROVENANCE_FIELDS = ("seeds", "unseeded_draws_seed", "versions", "container_image", "container_image_digest")


def _record_cells(text: str, source: str) -> dict[str, dict[str, Any]]:
    cells: dict[str, dict[str, Any]] = {}
    for index, record in enumerate(read_records(text, source)):
        cell = f"{record.sorter_name}/{record.study_name}/{record.recording_name}"
        if cell in cells:
            raise RecordError(f"{source}[{index}]: sort {cell} appears twice")
        d = record.to_json_dict()
        fields = {f: d[f] for f in RECORD_FIELDS}
        provenance = record.provenance or {}
        fields.update({f"provenance.{f}": provenance.get(f) for f in PROVENANCE_FIELDS})
        fields["provenance.threads"] = (provenance.get("threads") or {}).get("applied")
        cells[cell] = fields
    return cells


def read_results(raw: bytes | str, source: str) -> tuple[str, dict[str, dict[str, Any]]]:
    """A records file (JSON list) or a summary CSV, as ``(kind, {cell: {field: value}})``.

    ``kind`` is ``"records"`` or ``"summary"``, told apart by content: a
    records file is a JSON list.

    Parameters
    ----------
    raw : bytes or str
        The file's content.
    source : str
        The file's name, for the error.

    Returns
    -------
    tuple[str, dict[str, dict[str, Any]]]
        The kind and the cells.

    Raises
    ------
    RecordError
        If the file is malformed, naming ``source``.
    """
    text = decode_utf8(raw, source, RecordError)
    if text.lstrip().startswith("["):
        return "records", _record_cells(text, source)
    return "summary", read_summary_csv(text, source)


def diff_results(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[FileDifference]:
    """Every field that differs between two files' cells, and every cell only one file has.

    Parameters
    ----------
    a : dict[str, dict[str, Any]]
        The first file's cells (:func:`read_results`).
    b : dict[str, dict[str, Any]]
        The second file's cells.

    Returns
    -------
    list[FileDifference]
        By cell, then field; empty when the files agree.
    """
    differences = []
    for cell in sorted(a.keys() | b.keys()):
        if cell not in a or cell not in b:
            differences.append(FileDifference(cell, ONLY_IN, "A" if cell in a else "B", None))
            continue
        for field in sorted(a[cell].keys() | b[cell].keys()):
            va, vb = a[cell].get(field, _ABSENT), b[cell].get(field, _ABSENT)
            if va != vb:
                differences.append(FileDifference(cell, field, va, vb))
    return differences
