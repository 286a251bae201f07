"""Error types a user can act on.

Every error names where the problem is (a file, a key, a URI) and what was
expected.  The command line turns any :class:`SfAssetsError` into one line on
stderr and exit code 2; the Dagster layer lets them fail the step with the same
message.  The canary's classified failures are :class:`SortFailure` subclasses,
so one ``except`` clause can tell "the sorter says this recording cannot be
sorted" from a bug.
"""
from __future__ import annotations


class SfAssetsError(Exception):
    """Base class for every error sf-assets raises on purpose."""


class ManifestError(SfAssetsError):
    """A studysets manifest is malformed: names the file and the JSON path."""


class SpecError(SfAssetsError):
    """A spec.yaml is malformed or disagrees with its manifest."""


class UnknownSorterError(SpecError):
    """A sorter name is not in the sorter catalog; the message lists the known names."""


class UriError(SfAssetsError):
    """A URI cannot be parsed, or its content is missing or corrupt."""


class RecordingError(SfAssetsError):
    """A recording or ground-truth object cannot be loaded."""


class RecordError(SfAssetsError):
    """A sorting-record file cannot be read or written."""


class WorkspaceError(SfAssetsError):
    """A workspace does not exist or the workspace database refuses a change."""


class ViewerError(SfAssetsError):
    """A label cannot be opened in the viewer: unknown, malformed, or its data cannot be read."""


class SortFailure(SfAssetsError):
    """A sort failed for a reason the canary recognised.

    Subclasses tell the caller what to do next: never retry a biological
    failure, stop the whole campaign on an environment failure, retry a
    resource failure on a smaller job or skip it.
    """

    failure_class = "unclassified"
    retry_advice = "investigate"


class InsufficientActivityError(SortFailure):
    """The recording window holds too few spikes for the sorter to find units."""

    failure_class = "insufficient_activity"
    retry_advice = "do not retry: the data, not the run, is the problem"


class BiologicalSortFailure(SortFailure):
    """The data defeat the sorter (no clusters, degenerate templates, ...)."""

    failure_class = "biological"
    retry_advice = "do not retry: the data, not the run, is the problem"


class EnvironmentSortFailure(SortFailure):
    """The sorter cannot run here (unknown sorter, missing package, no image)."""

    failure_class = "environment"
    retry_advice = "stop: fix the installation before sorting anything else"


class ResourceSortFailure(SortFailure):
    """The machine ran out of something (memory, disk, GPU)."""

    failure_class = "resource"
    retry_advice = "retry with a smaller job, or skip this recording"


CLASSIFIED_FAILURES = (
    InsufficientActivityError,
    BiologicalSortFailure,
    EnvironmentSortFailure,
    ResourceSortFailure,
)


class StorageFault(SfAssetsError):
    """The machine's storage refused: a full disk, a read-only folder, a database I/O error.

    Not bad input, and nothing sf-assets can fix by itself: the message names
    the path (or database) and the cause in one line; the command line exits
    with :data:`EXIT_STORAGE_FAULT`.
    """


EXIT_STORAGE_FAULT = 3
"""Exit code of a command stopped by a :class:`StorageFault` (2 is bad input, 1 a failed run)."""
