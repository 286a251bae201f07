"""The SortingAnalyzer a viewer needs, built once per (sorting, recording) and cached.

spikeinterface-gui shows a ``SortingAnalyzer``: waveforms, templates, unit
locations, correlograms, quality metrics.  Computing them takes seconds to
minutes, so the analyzer is saved in a folder named by the sha1s of the
sorting object and of the recording object (and of the settings below): the
same content always maps to the same folder, and a second open only loads it.

The folder is built under a temporary name beside its final place and
renamed when complete, so a crash, an interrupt or a concurrent build never
leaves a half-written analyzer where a later open would find it.  A cached
folder that no longer loads (a disk error, a deleted file) is removed and
built again: it is derived data.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from sf_assets.core.comparison import COMPARISON_SETTINGS

# What the viewer computes, in order (spikeinterface extension -> params).  The
# filter matches the SNR's (300-6000 Hz), so the viewer's templates are the
# ones the comparison's SNRs were measured on.
ANALYZER_SETTINGS = {
    "freq_min_hz": COMPARISON_SETTINGS["snr_freq_min_hz"],
    "freq_max_hz": COMPARISON_SETTINGS["snr_freq_max_hz"],
    "extensions": {
        "random_spikes": {"method": "uniform", "max_spikes_per_unit": 500, "seed": 0},
        "waveforms": {"ms_before": 1.0, "ms_after": 2.0},
        "templates": {"operators": ["average", "std"]},
        "noise_levels": {"random_slices_kwargs": {"seed": 0}},
        "unit_locations": {"method": "monopolar_triangulation"},
        "correlograms": {"window_ms": 50.0, "bin_ms": 1.0},
        "isi_histograms": {"window_ms": 50.0, "bin_ms": 1.0},
        "template_similarity": {},
        "spike_amplitudes": {},
        "quality_metrics": {"metric_names": ["snr", "firing_rate", "isi_violation"]},
    },
}

# One process, no progress bars: the viewer's command prints its own timing line.
_JOB = {"n_jobs": 1, "progress_bar": False}


@dataclass(frozen=True)
class OpenedAnalyzer:
    """An analyzer ready for the viewer, and how it was obtained.

    Attributes
    ----------
    analyzer : SortingAnalyzer
    folder : Path
        Its cache folder.
    built : bool
        True if this call computed it; False if it came from the cache.
    seconds : float
        Wall time spent building or loading it.
    """

    analyzer: object
    folder: Path
    built: bool
    seconds: float


def analyzer_folder_name(sorting_sha1: str, recording_sha1: str) -> str:
    """The cache folder's name: the two content sha1s and a digest of :data:`ANALYZER_SETTINGS`.

    Parameters
    ----------
    sorting_sha1 : str
        The sorting object's sha1.
    recording_sha1 : str
        The recording object's sha1.

    Returns
    -------
    str
        A name that changes when either input or the analyzer's settings change.
    """
    settings = hashlib.sha1(json.dumps(ANALYZER_SETTINGS, sort_keys=True).encode()).hexdigest()[:12]
    return f"{sorting_sha1}-{recording_sha1}-{settings}"


def filtered(recording):
    """The recording as the viewer shows it: band-passed like the SNR measurement.

    Parameters
    ----------
    recording : BaseRecording
        The raw recording.

    Returns
    -------
    BaseRecording
        The filtered recording (lazy).
    """
    import spikeinterface.preprocessing as spre

    return spre.bandpass_filter(
        recording, freq_min=ANALYZER_SETTINGS["freq_min_hz"], freq_max=ANALYZER_SETTINGS["freq_max_hz"]
    )


def open_analyzer(sorting, recording, cache_root: Path, sorting_sha1: str, recording_sha1: str) -> OpenedAnalyzer:
    """The cached analyzer of ``sorting`` on ``recording``, built first if missing.

    Parameters
    ----------
    sorting : BaseSorting
    recording : BaseRecording
        Raw; it is band-passed here (:func:`filtered`).
    cache_root : Path
        Folder holding one sub-folder per analyzer.
    sorting_sha1, recording_sha1 : str
        Content hashes of the sorting object and the recording object: the cache key.

    Returns
    -------
    OpenedAnalyzer
    """
    started = time.perf_counter()
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    folder = cache_root / analyzer_folder_name(sorting_sha1, recording_sha1)
    if folder.is_dir():
        try:
            analyzer = _load(folder)
            missing = [name for name in ANALYZER_SETTINGS["extensions"] if not analyzer.has_extension(name)]
            if missing:
                raise ValueError(f"extensions {missing} are missing")
            analyzer.set_temporary_recording(filtered(recording))
            return OpenedAnalyzer(analyzer, folder, built=False, seconds=time.perf_counter() - started)
        except Exception as exc:  # derived data: rebuild rather than fail
            print(f"cached analyzer {folder} does not load ({type(exc).__name__}: {exc}); building it again")
            _discard(folder, cache_root)
    _build(sorting, recording, folder)
    analyzer = _load(folder)
    analyzer.set_temporary_recording(filtered(recording))
    return OpenedAnalyzer(analyzer, folder, built=True, seconds=time.perf_counter() - started)


def _load(folder: Path):
    """Load a cached analyzer with its extensions."""
    from spikeinterface.core import load_sorting_analyzer

    with warnings.catch_warnings():
        # spikeinterface 0.105.3 calls the analyzers this module writes "from an older version"
        # when their main channels are first asked for, and derives them from the templates:
        # nothing for a user to do.  Asking here keeps that warning out of the viewer's output.
        warnings.filterwarnings("ignore", message="This sorting analyzer is from an an older version")
        analyzer = load_sorting_analyzer(folder, load_extensions=True)
        analyzer.main_channel_indices
    return analyzer


def _build(sorting, recording, folder: Path) -> None:
    """Compute the analyzer in a temporary folder beside ``folder``, then rename it into place."""
    from spikeinterface.core import create_sorting_analyzer

    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name[:16]}-building-"))
    try:
        analyzer = create_sorting_analyzer(
            sorting,
            filtered(recording),
            format="binary_folder",
            folder=tmp / "analyzer",
            return_in_uV=True,
            job_kwargs=_JOB,
        )
        analyzer.compute(dict(ANALYZER_SETTINGS["extensions"]), **_JOB)
        try:
            os.rename(tmp / "analyzer", folder)
        except OSError:
            if not folder.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(folder: Path, cache_root: Path) -> None:
    """Move a broken cache folder out of the way, then delete it."""
    trash = Path(tempfile.mkdtemp(dir=cache_root, prefix=".discarded-"))
    try:
        os.rename(folder, trash / "analyzer")
    except OSError:
        pass
    shutil.rmtree(trash, ignore_errors=True)
