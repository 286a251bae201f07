"""What a workspace sync would add: entries from sorting records, and the diff.

The old ``prepare_workspace.py`` posted every recording, ground truth and
sorting of a run to a workspace, skipping labels that were already there.  The
decision "what is missing" is pure set arithmetic on labels, so it lives here,
apart from the database: the store applies a plan, the command line prints one
for ``--dry-run``, and both agree because both call :func:`plan_sync`.

Labels are the only identity (as in the old script): an entry whose label is
already present is never compared or replaced, whatever its URI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from sf_assets.core.errors import RecordError, WorkspaceError
from sf_assets.core.labels import ground_truth_label, recording_label, sorting_label

if TYPE_CHECKING:
    from sf_assets.core.records import SortingRecord

RECORDING = "recording"
GROUND_TRUTH = "ground_truth"
SORTING = "sorting"
ENTRY_KINDS = (RECORDING, GROUND_TRUTH, SORTING)

# Keys of a record's ``sortingOutput["data"]`` that hold the sorting's URI, in the
# order they are tried: our own MDA object, the labbox ``h5_v1`` file, a bare
# firings file.
_SORTING_URI_KEYS = ("sorting_object_uri", "h5_path", "firings")


@dataclass(frozen=True)
class WorkspaceEntry:
    """One labelled item of a workspace: a recording, a ground truth or a sorting.

    Parameters
    ----------
    label : str
        ``STUDY/RECORDING``, ``Ground-Truth/STUDY/RECORDING`` or
        ``SORTER/STUDY/RECORDING``; unique within a workspace.
    kind : str
        One of ``"recording"``, ``"ground_truth"``, ``"sorting"``.
    uri : str
        Where the content lives (a recording object, a sorting object, ...).
    study_name, recording_name : str
        The recording this entry belongs to.
    sorter_name : str or None
        The sorter, for sortings only.
    details : dict
        JSON-serialisable extras (parameters, CPU time, parent labels).
    """

    label: str
    kind: str
    uri: str
    study_name: str
    recording_name: str
    sorter_name: str | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ENTRY_KINDS:
            raise WorkspaceError(
                f"workspace entry {self.label!r}: kind {self.kind!r} is not one of {list(ENTRY_KINDS)}"
            )
        if (self.kind == SORTING) != (self.sorter_name is not None):
            raise WorkspaceError(
                f"workspace entry {self.label!r}: sorter_name must be set for kind "
                f"{SORTING!r} and only for it (kind {self.kind!r}, sorter_name {self.sorter_name!r})"
            )


@dataclass(frozen=True)
class SyncPlan:
    """The outcome of comparing entries with a workspace's labels.

    ``to_add`` and ``already_present`` keep the order of the entries given.
    """

    to_add: list[WorkspaceEntry]
    already_present: list[str]


def sorting_output_uri(sorting_output: dict, where: str) -> str:
    """Return the URI of a sorting from a record's ``sortingOutput``.

    Parameters
    ----------
    sorting_output : dict
        ``{"sorting_format": ..., "data": {...}}`` as in a sorting record.
    where : str
        What to name in an error (the sorting's label).

    Returns
    -------
    str
        The first of ``data["sorting_object_uri"]``, ``data["h5_path"]``,
        ``data["firings"]`` that is present.

    Raises
    ------
    RecordError
        If ``data`` holds none of them.
    """
    data = sorting_output.get("data") if isinstance(sorting_output, dict) else None
    if isinstance(data, dict):
        for key in _SORTING_URI_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    raise RecordError(
        f"{where}: sortingOutput.data must hold one of {list(_SORTING_URI_KEYS)} "
        f"as a URI string; got {sorting_output!r}"
    )


def entries_from_records(
    records: Iterable[SortingRecord],
) -> tuple[list[WorkspaceEntry], list[str]]:
    """Turn sorting records into workspace entries, each label once.

    Every record contributes its recording and its ground truth; a record that
    did not error also contributes its sorting.  Recordings come first, then
    ground truths, then sortings (a viewer shows parents before children), each
    group in the order the records name them.

    Parameters
    ----------
    records : iterable of SortingRecord
        As read from a ``run_sortings`` output file.

    Returns
    -------
    entries : list of WorkspaceEntry
        Unique labels.
    notes : list of str
        One line per record that gave no sorting entry (errored, or a repeat
        of a sorting label already taken from an earlier record).

    Raises
    ------
    RecordError
        If a name cannot be part of a label (``/``, control characters), or
        if two records give the same recording (or ground truth) different URIs:
        they come from different manifests and no single entry is right.  A
        successful record whose sorting output names no URI also raises.
    """
    recordings: dict[str, WorkspaceEntry] = {}
    ground_truths: dict[str, WorkspaceEntry] = {}
    sortings: dict[str, WorkspaceEntry] = {}
    notes: list[str] = []
    for index, record in enumerate(records):
        study, name = record.study_name, record.recording_name
        try:
            rec_label = recording_label(study, name)
            gt_label = ground_truth_label(study, name)
            label = sorting_label(record.sorter_name, study, name)
        except ValueError as error:
            raise RecordError(
                f"sorting record [{index}] (sorterName {record.sorter_name!r}, studyName {study!r}, "
                f"recordingName {name!r}): cannot make a workspace label: {error}"
            ) from None
        _add_once(
            recordings,
            WorkspaceEntry(rec_label, RECORDING, record.recording_uri, study, name),
        )
        _add_once(
            ground_truths,
            WorkspaceEntry(
                gt_label,
                GROUND_TRUTH,
                record.ground_truth_uri,
                study,
                name,
                details={"recording_label": rec_label},
            ),
        )
        if record.errored:
            notes.append(
                f"skipped errored sorting {label} (console output: {record.console_out_uri or 'none recorded'})"
            )
            continue
        if record.sorting_output is None:
            raise RecordError(
                f"sorting record {label}: sortingOutput is null but errored is false; "
                "expected {sorting_format, data}"
            )
        entry = WorkspaceEntry(
            label,
            SORTING,
            sorting_output_uri(record.sorting_output, f"sorting record {label}"),
            study,
            name,
            sorter_name=record.sorter_name,
            details={
                "recording_label": rec_label,
                "ground_truth_label": gt_label,
                "sorting_output": record.sorting_output,
                "sorting_parameters": record.sorting_parameters,
                "cpu_time_sec": record.cpu_time_sec,
                "console_out_uri": record.console_out_uri,
            },
        )
        kept = sortings.setdefault(label, entry)
        if kept is not entry:
            notes.append(
                f"ignored repeated sorting record {label} (uri {entry.uri}; kept the first, uri {kept.uri})"
            )
    entries = [*recordings.values(), *ground_truths.values(), *sortings.values()]
    return entries, notes


def _add_once(by_label: dict[str, WorkspaceEntry], entry: WorkspaceEntry) -> None:
    """Keep the first entry per label; a repeat must name the same URI."""
    kept = by_label.setdefault(entry.label, entry)
    if kept.uri != entry.uri:
        raise RecordError(
            f"sorting records disagree on {entry.kind} {entry.label!r}: "
            f"uri {kept.uri!r} and {entry.uri!r}; expected one URI per label"
        )


def plan_sync(entries: Iterable[WorkspaceEntry], existing_labels: set[str]) -> SyncPlan:
    """Split entries into those to add and those whose label is already present.

    Linear in the number of entries (set look-ups only), so a plan over tens of
    thousands of labels takes milliseconds.

    Parameters
    ----------
    entries : iterable of WorkspaceEntry
        With unique labels.
    existing_labels : set of str
        The labels the workspace holds now.

    Returns
    -------
    SyncPlan

    Raises
    ------
    WorkspaceError
        If two entries share a label (the database would keep only one of them).
    """
    to_add: list[WorkspaceEntry] = []
    already_present: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        if entry.label in seen:
            raise WorkspaceError(
                f"entries to sync name label {entry.label!r} twice; expected each label once"
            )
        seen.add(entry.label)
        if entry.label in existing_labels:
            already_present.append(entry.label)
        else:
            to_add.append(entry)
    return SyncPlan(to_add=to_add, already_present=already_present)
