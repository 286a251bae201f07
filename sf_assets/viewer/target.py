"""What a typed label opens: a sorting, a ground truth, or an errored sorting's console.

:func:`resolve_target` reads the workspace database (the labels and the
URIs people browse, as the old labbox workspace held them) and the Dagster
event log (the comparison of a sorting with its ground truth, the true
units' SNRs, and the errored sorts, which the workspace never holds).
Nothing is loaded or written here: every lookup that can fail does so
before the viewer builds anything.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from sf_assets.core.errors import ViewerError
from sf_assets.core.labels import GROUND_TRUTH

SORTING = "sorting"
GROUND_TRUTH_KIND = "ground_truth"
ERRORED_SORTING = "errored_sorting"


@dataclass(frozen=True)
class ViewTarget:
    """Everything the viewer needs about one label, as URIs.

    Attributes
    ----------
    label : str
        As typed: ``SORTER/STUDY/RECORDING`` or ``Ground-Truth/STUDY/RECORDING``.
    kind : str
        ``sorting``, ``ground_truth`` or ``errored_sorting``.
    recording_uri : str
        The recording object.
    sorting_uri : str
        The sorting object shown (the ground truth's, for a ground truth); empty
        for an errored sorting.
    comparison_uri : str
        The stored per-true-unit comparison of this sorting ("" if none).
    comparisons : dict
        Ground truth only: ``{sorter: comparison URI}`` of this recording's sortings.
    snrs_uri : str
        The true units' SNRs ("" if the ground truth was never measured).
    console_out_uri, failure : str
        Errored sorting only: its console output and failure class.
    """

    label: str
    kind: str
    recording_uri: str = ""
    sorting_uri: str = ""
    comparison_uri: str = ""
    comparisons: dict = field(default_factory=dict)
    snrs_uri: str = ""
    console_out_uri: str = ""
    failure: str = ""


def split_label(label: str) -> tuple[str, str, str]:
    """``(first, study, recording)`` of a sorting or ground-truth label.

    Parameters
    ----------
    label : str
        A label.

    Returns
    -------
    tuple[str, str, str]
        Sorter (or ``Ground-Truth``), study, recording.

    Raises
    ------
    ViewerError
        For anything but three non-empty ``/``-separated parts.
    """
    parts = label.split("/")
    if len(parts) == 2 and all(parts):
        raise ViewerError(
            f"label {label!r} is a recording: open its ground truth {GROUND_TRUTH}/{label} "
            f"or one of its sortings SORTER/{label}"
        )
    if len(parts) != 3 or not all(parts):
        raise ViewerError(
            f"label {label!r} is malformed: expected SORTER/STUDY/RECORDING or {GROUND_TRUTH}/STUDY/RECORDING"
        )
    return parts[0], parts[1], parts[2]


def unknown_label(label: str, known: list[str], where: str) -> ViewerError:
    """The error for a label the workspace does not hold, with the closest known ones.

    Parameters
    ----------
    label : str
        The label asked for.
    known : list[str]
        The labels the workspace holds.
    where : str
        The workspace, for the message.

    Returns
    -------
    ViewerError
        The error to raise.
    """
    close = difflib.get_close_matches(label, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else (
        f"; it holds {len(known)} labels, e.g. {', '.join(sorted(known)[:3])}" if known else "; it holds no labels yet"
    )
    return ViewerError(f"{where}: no sorting or ground truth labelled {label!r}{hint}")
