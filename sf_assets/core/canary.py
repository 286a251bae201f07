"""Canary decisions: when to run one, and what its failure means.

Before a full sort, the engine sorts the first ``canary_first_n_s`` seconds of
the recording with the same sorter and parameters.  This module holds the
pure decisions around that smoke test (no sorting happens here):

* :func:`plan_canary` / :func:`canary_window_s`: whether a canary runs, and on
  how many seconds.
* :func:`classify_sort_error` / :func:`classify_sort_output`: whether a failed
  or empty sort is a failure we recognise.  A recognised failure is returned as
  a :class:`~sf_assets.core.errors.SortFailure` subclass, whose class tells the
  caller what to do (never retry insufficient activity or a biological failure,
  stop the campaign on an environment failure, retry a resource failure on a
  smaller job).  Anything not recognised returns None: the canary is a smoke
  test, not a judge, so the full sort then proceeds.

The error table holds each sorter's own signatures, found by running it on
real failing inputs with spikeinterface 0.105.3 (docs/sorters.md lists the
inputs and timings), followed by signatures any sorter can produce.
KeyboardInterrupt and SystemExit are no sort failures: they are never
classified, and callers re-raise them before classifying anything.
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from sf_assets.core.errors import (
    BiologicalSortFailure,
    EnvironmentSortFailure,
    InsufficientActivityError,
    ResourceSortFailure,
    SortFailure,
)

# --- the canary window -------------------------------------------------------------------


class CanaryDecision(str, enum.Enum):
    """Why a canary does or does not run."""

    OFF = "off"  # canary_first_n_s is None, 0 or NaN
    SKIPPED = "skipped"  # the recording is no longer than the window: the canary would be the full sort
    RUN = "run"


@dataclass(frozen=True)
class CanaryPlan:
    """What the canary does for one recording.

    Attributes
    ----------
    decision : CanaryDecision
        off, skipped or run.
    window_s : float | None
        seconds to sort from the start of the recording; None unless run.
    reason : str
        one sentence for logs and check metadata.
    """

    decision: CanaryDecision
    window_s: float | None
    reason: str


def plan_canary(recording_duration_s: float, canary_first_n_s: float | None) -> CanaryPlan:
    """Decide the canary for a recording of ``recording_duration_s`` seconds.

    ``canary_first_n_s`` None, 0 or NaN turns the canary off.  A recording no
    longer than the window is skipped: its canary would sort the whole
    recording, which is the full sort itself.

    Parameters
    ----------
    recording_duration_s : float
        The recording's duration in seconds.
    canary_first_n_s : float or None
        The canary window in seconds (the spec's ``canary_first_n_s``).

    Returns
    -------
    CanaryPlan
        Off, skipped or run, with the window and the reason in one sentence.

    Raises
    ------
    ValueError
        a negative window, or a duration that is not a positive finite number.
    """
    if canary_first_n_s is None or math.isnan(canary_first_n_s) or canary_first_n_s == 0:
        return CanaryPlan(CanaryDecision.OFF, None, "canary off (canary_first_n_s is None, 0 or NaN)")
    if canary_first_n_s < 0:
        raise ValueError(
            f"canary_first_n_s: expected 0 (off), NaN (off) or a positive number of seconds, got {canary_first_n_s}"
        )
    if not (math.isfinite(recording_duration_s) and recording_duration_s > 0):
        raise ValueError(
            f"recording_duration_s: expected a positive finite number of seconds, got {recording_duration_s}"
        )
    if recording_duration_s <= canary_first_n_s:
        return CanaryPlan(
            CanaryDecision.SKIPPED,
            None,
            f"canary skipped: the recording lasts {recording_duration_s:g} s, "
            f"not longer than the {canary_first_n_s:g} s canary window",
        )
    window_s = float(canary_first_n_s)
    reason = f"canary sorts the first {window_s:g} s of {recording_duration_s:g} s"
    return CanaryPlan(CanaryDecision.RUN, window_s, reason)


def canary_window_s(recording_duration_s: float, canary_first_n_s: float | None) -> float | None:
    """Seconds the canary sorts, or None when it is off or skipped (see :func:`plan_canary`).

    Parameters
    ----------
    recording_duration_s : float
        The recording's duration in seconds.
    canary_first_n_s : float or None
        The canary window in seconds.

    Returns
    -------
    float or None
        The window in seconds.
    """
    return plan_canary(recording_duration_s, canary_first_n_s).window_s


# --- the error table -----------------------------------------------------------------------

ANY_SORTER = "*"

# spikeinterface's own sorters share sortingcomponents, and so their failure modes.
_SI_INTERNAL = ("simple", "spykingcircus2", "tridesclous2", "lupin")


@dataclass(frozen=True)
class ErrorSignature:
    """One row of the error table.

    Attributes
    ----------
    sorters : tuple[str, ...]
        spikeinterface sorter names it applies to, or ``("*",)`` for any.
    pattern : re.Pattern[str]
        searched anywhere in the error text (tracebacks, or the ``error_trace`` of
        ``spikeinterface_log.json``, joined or not).
    failure : type[SortFailure]
        the SortFailure subclass it means.
    meaning : str
        what happened, in words a user can act on.
    seen : str
        where it was observed: sorter, input, versions.
    """

    sorters: tuple[str, ...]
    pattern: re.Pattern[str]
    failure: type[SortFailure]
    meaning: str
    seen: str

    def applies_to(self, sorter_si_name: str) -> bool:
        """Does this row apply to the sorter?

        Parameters
        ----------
        sorter_si_name : str
            The spikeinterface sorter name.

        Returns
        -------
        bool
            True for its own rows and the rows of any sorter.
        """
        return ANY_SORTER in self.sorters or sorter_si_name in self.sorters


def _row(sorters, pattern: str, failure: type[SortFailure], meaning: str, seen: str) -> ErrorSignature:
    sorters = (sorters,) if isinstance(sorters, str) else tuple(sorters)
    return ErrorSignature(sorters, re.compile(pattern), failure, meaning, seen)


#: Tried in order, first match wins.  Sorter-specific rows come first: they
#: match the sort's own final error, whereas a generic word such as
#: ImportError can also sit in an earlier, handled exception of the same trace.
ERROR_SIGNATURES: tuple[ErrorSignature, ...] = (
    # -- sorter-specific, observed here (spikeinterface 0.105.3) --
    _row(
        _SI_INTERNAL,
        r"Found array with 0 sample\(s\) \(shape=\(0, \d+\)\) while a minimum of 1 is required by TruncatedSVD",
        InsufficientActivityError,
        "no spikes were detected, so there was nothing to cluster",
        "simple: 0.05 s window, all-zero and sine-wave recordings; spykingcircus2: 1-channel noise, "
        "NaN samples, sine wave",
    ),
    _row(
        _SI_INTERNAL,
        r"in select_peaks[\s\S]*?IndexError: index \d+ is out of bounds for axis 0 with size \d+",
        InsufficientActivityError,
        "too few spikes were detected to pick a training set",
        "simple, tridesclous2: 3 s of 1-channel noise",
    ),
    _row(
        "tridesclous2",
        r"ZeroDivisionError: division by zero",
        InsufficientActivityError,
        "no spikes were detected (tridesclous2 divides by the number of peaks kept)",
        "tridesclous2: 0.05 s window, all-zero and sine-wave recordings",
    ),
    _row(
        "spykingcircus2",
        r"Prototype should have a negative peak",
        InsufficientActivityError,
        "no spikes were detected to build the detection prototype from",
        "spykingcircus2: 0.05 s window, all-zero recording",
    ),
    _row(
        "herdingspikes",
        r"get_random_data_chunks[\s\S]*?ValueError: high < 0",
        InsufficientActivityError,
        "the recording is shorter than the detector's noise-estimation chunks",
        "herdingspikes 0.4.6: 0.05 s window",
    ),
    _row(
        ("mountainsort5", "tridesclous2"),
        r"LinAlgError: SVD did not converge",
        BiologicalSortFailure,
        "the traces hold NaN or infinite values",
        "mountainsort5, tridesclous2: 3 s recording with NaN samples (one of three outcomes that vary run to run)",
    ),
    _row(
        ("mountainsort4", "herdingspikes"),
        r"get_channel_property[\s\S]*?TypeError: 'NoneType' object is not subscriptable",
        EnvironmentSortFailure,
        "this sorter package reads the 'location' channel property, which spikeinterface 0.105 no longer "
        "sets: run it in its container",
        "mountainsort4 1.0.7, herdingspikes 0.4.6: any recording",
    ),
    # -- any sorter: the data --
    _row(
        ANY_SORTER,
        r"needs a probe to be attached to the recording|Channel locations are required for this spike sorter"
        r"|Channel locations are not unique",
        BiologicalSortFailure,
        "the recording has no usable channel geometry (probe)",
        "simple, mountainsort5, tridesclous2, spykingcircus2: recording without a probe",
    ),
    _row(
        ANY_SORTER,
        r"Input (?:\w+ )?contains (?:NaN|infinity)",
        BiologicalSortFailure,
        "the traces hold NaN or infinite values",
        "mountainsort5: 3 s recording with NaN samples (scikit-learn's PCA refuses them)",
    ),
    # -- any sorter: the environment --
    _row(
        ANY_SORTER,
        r"The sorter \w+ is not installed",
        EnvironmentSortFailure,
        "the sorter's package is not installed here",
        "run_sorter: kilosort2, kilosort4, lupin, mountainsort4, herdingspikes, tridesclous, spykingcircus",
    ),
    _row(
        ANY_SORTER,
        r"The sorter \w+ is archived and no longer supported",
        EnvironmentSortFailure,
        "spikeinterface no longer runs this sorter",
        "run_sorter: klusta, yass",
    ),
    _row(
        ANY_SORTER,
        r"\b(?:ModuleNotFoundError|ImportError): ",
        EnvironmentSortFailure,
        "a Python package the sorter needs is missing or broken",
        "Python's import errors",
    ),
    _row(
        ANY_SORTER,
        r"`np\.\w+` was removed in the NumPy 2\.0 release",
        EnvironmentSortFailure,
        "the sorter package predates numpy 2",
        "herdingspikes 0.4.6 (np.Inf)",
    ),
    _row(
        ANY_SORTER,
        r"Docker is not installed|The python `docker` package must be installed"
        r"|Error while fetching server API version|Singularity is not installed"
        r"|The python `spython` package must be installed|Unable to locate container image",
        EnvironmentSortFailure,
        "docker or singularity is missing here, or the docker daemon is not running",
        "run_sorter with docker_image (no daemon) or singularity_image (not installed)",
    ),
    _row(
        ANY_SORTER,
        r"The container requires a NVIDIA GPU capability, but it is not available",
        EnvironmentSortFailure,
        "the sorter's container needs an NVIDIA GPU and this machine has none",
        "run_sorter kilosort2 with docker_image on a machine without GPU",
    ),
    _row(
        ANY_SORTER,
        r"not in SORTER_DOCKER_MAP",
        EnvironmentSortFailure,
        "spikeinterface has no container image for this sorter",
        "spikeinterface's run_sorter_container message",
    ),
    _row(
        ANY_SORTER,
        r"Found no NVIDIA driver|No CUDA GPUs are available|CUDA driver version is insufficient",
        EnvironmentSortFailure,
        "CUDA cannot be used on this machine",
        "torch's messages (not reproduced here: no GPU sorter is installed)",
    ),
    _row(
        ANY_SORTER,
        r"\bUnknownSorterError\b|Unknown sorter|sorter_dict\[sorter_name\][\s\S]*?KeyError",
        EnvironmentSortFailure,
        "spikeinterface does not know this sorter name",
        "run_sorter with an unknown name (KeyError from sorter_dict)",
    ),
    # -- any sorter: resources --
    _row(
        ANY_SORTER,
        r"(?i:out of memory)|CUBLAS_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation",
        ResourceSortFailure,
        "the GPU (or host) ran out of memory",
        "torch's and CUDA's messages (not reproduced here: no GPU)",
    ),
    _row(
        ANY_SORTER,
        r"MemoryError\b|Unable to allocate [\d.]+ \w+ for an array|\[Errno 12\] Cannot allocate memory",
        ResourceSortFailure,
        "the machine ran out of memory",
        "numpy's allocation error (MemoryError, _ArrayMemoryError)",
    ),
    _row(
        ANY_SORTER,
        r"\[Errno 28\]|No space left on device|\[Errno 122\]|Disk quota exceeded",
        ResourceSortFailure,
        "the disk is full",
        "simple, mountainsort5: sorting into a full 8-48 KiB tmpfs",
    ),
)


def _matched_line(error_text: str, match: re.Match[str]) -> str:
    """The line holding the end of the match (the exception line), trimmed for a message.

    Lines can be very long (a log's ``error_trace`` printed as one list), so at
    most 150 characters before the match's end and 50 after are kept.
    """
    line_start = error_text.rfind("\n", 0, match.end()) + 1
    line_end = error_text.find("\n", match.end())
    line_end = len(error_text) if line_end < 0 else line_end
    start, end = max(line_start, match.end() - 150), min(line_end, match.end() + 50)
    return " ".join(error_text[start:end].split())


def classify_sort_error(sorter_si_name: str, error_text: str) -> SortFailure | None:
    """The recognised failure behind a sort's error text, or None when unexpected.

    Parameters
    ----------
    sorter_si_name : str
        the spikeinterface sorter name (``"mountainsort5"``), which selects the sorter-specific rows of
        :data:`ERROR_SIGNATURES`.
    error_text : str
        everything known about the error: the exception as ``traceback.format_exception`` prints it and/or the
        ``error_trace`` of ``<folder>/spikeinterface_log.json``.  ``str(SpikeSortingError)`` alone also works:
        it embeds the sorter's traceback.

    Returns
    -------
    SortFailure | None
        A SortFailure subclass instance whose message names the sorter, what
    SortFailure | None
        happened and the matched line, with the matching row as its
    SortFailure | None
        ``signature`` attribute; or None (the full sort proceeds).

    Raises
    ------
    TypeError
        ``error_text`` is not a string (an exception object is not classified: KeyboardInterrupt and
        SystemExit must be re-raised).
    """
    if not isinstance(error_text, str):
        raise TypeError(f"error_text: expected the error's text (str), got {type(error_text).__name__}")
    for signature in ERROR_SIGNATURES:
        if not signature.applies_to(sorter_si_name):
            continue
        match = signature.pattern.search(error_text)
        if match:
            failure = signature.failure(
                f"{sorter_si_name}: {signature.meaning} (error: {_matched_line(error_text, match)})"
            )
            failure.signature = signature
            return failure
    return None


def classify_sort_output(sorter_si_name: str, num_units: int) -> SortFailure | None:
    """An InsufficientActivityError when a sort that succeeded found no units, else None.

    mountainsort5 returns 0 units on noise and on very short windows instead of
    raising; simple does the same on noise.

    Parameters
    ----------
    sorter_si_name : str
        The spikeinterface sorter name (for the failure's message).
    num_units : int
        Units the sort found.

    Returns
    -------
    SortFailure or None
        The failure, or None when it found units.
    """
    if num_units < 0:
        raise ValueError(f"num_units: expected a count of units (>= 0), got {num_units}")
    if num_units == 0:
        return InsufficientActivityError(f"{sorter_si_name}: the sort finished but found 0 units")
    return None


_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Failure|Interrupt|Exit))(?::.*)?$")


def error_summary(error_text: str) -> str:
    """The line of an error text a person should read first.

    The innermost exception line (``ValueError: ...``), skipping
    spikeinterface's ``SpikeSortingError`` wrapper; else the last non-empty
    line.

    Parameters
    ----------
    error_text : str
        A traceback or a sorter's error trace.

    Returns
    -------
    str
        One line.
    """
    lines = [line.strip() for line in error_text.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _ERROR_LINE.match(line)
        if match and match.group(1) != "SpikeSortingError":
            return line
    return lines[-1] if lines else "(no error text)"
