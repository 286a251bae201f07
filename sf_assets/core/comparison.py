"""Compare a sorting with ground truth, SpikeForest's way, with every setting recorded.

SpikeForest scores each *true* unit against its best-matching sorted unit:
two spikes match when they lie within ``delta_time_ms`` (1 ms) of each other;
the best unit is the one with the highest agreement ``n / (n + fp + fn)``; a
sorted unit may be the best match of several true units.  From the counts,

* accuracy  = n / (n + fp + fn)
* precision = n / (n + fp)
* recall    = n / (n + fn)

with n the matched spikes, fp the sorted unit's unmatched spikes and fn the
true unit's unmatched spikes.  A true unit that no sorted spike matches scores
0 on all three.  spikeinterface's own convention (0.4 ms, one-to-one
Hungarian assignment above an agreement of 0.5) is selectable with
``match_mode="hungarian"`` and ``delta_time_ms=0.4``
(:data:`SPIKEINTERFACE_MATCHING`).

The spike matching itself is spikeinterface's ``GroundTruthComparison``
(its match-count matrix: each spike counted at most once per unit pair); the
choice of match and the scores are computed here, so they cannot drift with
the library's defaults.  Results always carry the settings that produced them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
import pandas as pd

MATCH_MODES = ("best", "hungarian")

COMPARISON_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        # spike matching (SpikeForest)
        "delta_time_ms": 1.0,
        "match_mode": "best",
        # used by match_mode="hungarian" only (spikeinterface's default)
        "hungarian_min_agreement": 0.5,
        # SNR of a true unit: median template over MAD noise, bandpass-filtered
        "snr_freq_min_hz": 300.0,
        "snr_freq_max_hz": 6000.0,
        "snr_template": "median",
        "snr_ms_before": 1.0,
        "snr_ms_after": 2.0,
        "snr_max_spikes_per_unit": 500,
        "snr_seed": 0,
        # summary
        "snr_threshold": 8.0,
        "well_detected_accuracy": 0.8,
    }
)
"""The pinned defaults; every result and summary records the values it used."""

SPIKEINTERFACE_MATCHING: Mapping[str, Any] = MappingProxyType({"delta_time_ms": 0.4, "match_mode": "hungarian"})
"""spikeinterface's ``compare_sorter_to_ground_truth`` convention, for comparison with its tools."""

PER_UNIT_COLUMNS = (
    "true_unit_id",
    "best_unit_id",
    "accuracy",
    "precision",
    "recall",
    "num_matches",
    "num_fp",
    "num_fn",
    "num_true_spikes",
)


@dataclass(frozen=True)
class ComparisonResult:
    """One sorting scored against its ground truth.

    Attributes
    ----------
    per_unit : pandas.DataFrame
        One row per true unit, columns :data:`PER_UNIT_COLUMNS`;
        ``best_unit_id`` is None where no sorted spike matched.
    settings : dict
        The matching settings used, including ``delta_frames`` (the tolerance
        in samples at this sampling frequency).
    num_sorted_units : int
        Units in the tested sorting.
    """

    per_unit: pd.DataFrame
    settings: dict = field(default_factory=dict)
    num_sorted_units: int = 0


def compare_to_ground_truth(
    sorting,
    gt_sorting,
    *,
    delta_time_ms: float = COMPARISON_SETTINGS["delta_time_ms"],
    match_mode: str = COMPARISON_SETTINGS["match_mode"],
) -> ComparisonResult:
    """Score every true unit of ``gt_sorting`` against ``sorting``.

    Parameters
    ----------
    sorting : BaseSorting
        The sorter's output (one segment, same sampling frequency as the ground truth).
    gt_sorting : BaseSorting
        The ground truth.
    delta_time_ms : float, default: 1.0
        Two spikes match when ``|t1 - t2| <= delta_time_ms`` (rounded down to samples).
    match_mode : {"best", "hungarian"}, default: "best"
        ``best``: each true unit's best sorted unit (SpikeForest).
        ``hungarian``: a one-to-one assignment, pairs below an agreement of
        0.5 unmatched (spikeinterface).

    Returns
    -------
    ComparisonResult
    """
    from spikeinterface.comparison import GroundTruthComparison

    if match_mode not in MATCH_MODES:
        raise ValueError(f"match_mode: expected one of {MATCH_MODES}, got {match_mode!r}")
    if not delta_time_ms > 0:
        raise ValueError(f"delta_time_ms: expected a positive number of milliseconds, got {delta_time_ms!r}")
    comparison = GroundTruthComparison(
        gt_sorting,
        sorting,
        delta_time=float(delta_time_ms),
        match_score=COMPARISON_SETTINGS["hungarian_min_agreement"],
        match_mode=match_mode,
    )
    counts = comparison.match_event_count
    true_counts = comparison.event_counts1
    sorted_counts = comparison.event_counts2
    rows = []
    for true_id in gt_sorting.unit_ids:
        best_id = _matched_unit(comparison, true_id, match_mode)
        num_true = int(true_counts[true_id])
        if best_id is None:
            n, fp = 0, 0
        else:
            n = int(counts.at[true_id, best_id])
            fp = int(sorted_counts[best_id]) - n
        fn = num_true - n
        rows.append(
            {
                "true_unit_id": _plain(true_id),
                "best_unit_id": None if best_id is None else _plain(best_id),
                "accuracy": _ratio(n, n + fp + fn),
                "precision": _ratio(n, n + fp),
                "recall": _ratio(n, n + fn),
                "num_matches": n,
                "num_fp": fp,
                "num_fn": fn,
                "num_true_spikes": num_true,
            }
        )
    per_unit = pd.DataFrame(rows, columns=list(PER_UNIT_COLUMNS))
    # Object columns keep None as None (pandas 3 would make a string column with NaN),
    # so the table goes to JSON as null.
    for column in ("true_unit_id", "best_unit_id"):
        per_unit[column] = pd.Series([row[column] for row in rows], dtype=object)
    settings = {
        "delta_time_ms": float(delta_time_ms),
        "delta_frames": int(comparison.delta_frames),
        "match_mode": match_mode,
        "sampling_frequency_hz": float(gt_sorting.get_sampling_frequency()),
    }
    if match_mode == "hungarian":
        settings["hungarian_min_agreement"] = COMPARISON_SETTINGS["hungarian_min_agreement"]
    return ComparisonResult(per_unit=per_unit, settings=settings, num_sorted_units=int(sorting.get_num_units()))


def _matched_unit(comparison, true_id, match_mode: str):
    """The sorted unit scored against ``true_id``, or None."""
    if match_mode == "hungarian":
        matched = comparison.hungarian_match_12[true_id]
        return None if matched == -1 or matched == "" else matched
    scores = comparison.agreement_scores.loc[true_id]
    if scores.empty or not scores.max() > 0:
        return None
    # argmax keeps the first of equal scores: deterministic for a given unit order
    return scores.index[int(np.argmax(scores.to_numpy()))]


def true_unit_snrs(recording, gt_sorting) -> dict:
    """The SNR of each true unit, as SpikeForest reports it.

    The recording is bandpass-filtered (300-6000 Hz).  A unit's SNR is the
    peak absolute amplitude of its median waveform (at most 500 spikes, fixed
    seed, 1 ms before to 2 ms after each spike) on the channel where that
    peak is largest, divided by that channel's noise level, the median
    absolute deviation / 0.6745 (spikeinterface's ``get_noise_levels``).
    Units without spikes (or with spikes only within 2 ms of the ends) get NaN.

    Parameters
    ----------
    recording : BaseRecording
        The raw recording (raw units; the ratio does not depend on scaling).
    gt_sorting : BaseSorting
        The ground truth, at the recording's sampling frequency.

    Returns
    -------
    dict
        ``{true_unit_id: snr}``.
    """
    import spikeinterface.preprocessing as spre
    from spikeinterface.core import estimate_templates, get_noise_levels

    s = COMPARISON_SETTINGS
    filtered = spre.bandpass_filter(recording, freq_min=s["snr_freq_min_hz"], freq_max=s["snr_freq_max_hz"])
    job = {"n_jobs": 1, "progress_bar": False}
    noise = get_noise_levels(
        filtered, return_in_uV=False, method="mad", random_slices_kwargs={"seed": s["snr_seed"]}, **job
    )
    nbefore = int(round(s["snr_ms_before"] * recording.sampling_frequency / 1000))
    nafter = int(round(s["snr_ms_after"] * recording.sampling_frequency / 1000))
    num_samples = [recording.get_num_samples(i) for i in range(recording.get_num_segments())]
    spike_counts = gt_sorting.count_num_spikes_per_unit()
    snrs = {_plain(u): float("nan") for u in gt_sorting.unit_ids}
    active = gt_sorting.select_units([u for u in gt_sorting.unit_ids if spike_counts[u] > 0])
    if active.get_num_units() == 0:
        return snrs
    spikes = active.to_spike_vector()
    spikes = spikes[
        _uniform_spike_choice(
            spikes,
            active.get_num_units(),
            num_samples,
            max_per_unit=s["snr_max_spikes_per_unit"],
            margin=max(nbefore, nafter),
            seed=s["snr_seed"],
        )
    ]
    templates = estimate_templates(
        filtered, spikes, active.unit_ids, nbefore, nafter, operator="median", return_in_uV=False, **job
    )
    selected = np.bincount(spikes["unit_index"], minlength=active.get_num_units())
    for index, unit_id in enumerate(active.unit_ids):
        if selected[index] == 0:  # every spike too close to the recording's edges
            continue
        peak_per_channel = np.abs(templates[index]).max(axis=0)
        channel = int(np.argmax(peak_per_channel))
        snrs[_plain(unit_id)] = float(peak_per_channel[channel] / noise[channel])
    return snrs


def _uniform_spike_choice(spikes, num_units: int, num_samples: list[int], max_per_unit: int, margin: int, seed: int):
    """Indices into ``spikes`` of at most ``max_per_unit`` spikes per unit, away from segment edges.

    The same draws as spikeinterface's ``random_spikes_selection(method="uniform")``
    (one generator, units in order, each choosing among its spikes in time
    order), without its numba-compiled grouping: compiling that costs each
    process about a second, longer than the whole selection takes here.
    """
    rng = np.random.default_rng(seed=seed)
    sample = spikes["sample_index"]
    segment = spikes["segment_index"]
    end = np.asarray(num_samples, dtype=np.int64)[segment]
    inside = (sample >= margin) & (sample < end - margin)
    # Spike vectors are sorted by segment, then sample: a stable sort by unit keeps that order.
    order = np.argsort(spikes["unit_index"], kind="stable")
    bounds = np.searchsorted(spikes["unit_index"][order], np.arange(num_units + 1))
    chosen = []
    for unit_index in range(num_units):
        candidates = order[bounds[unit_index] : bounds[unit_index + 1]]
        candidates = candidates[inside[candidates]]
        size = min(max_per_unit, candidates.size)
        chosen.append(rng.choice(candidates, size=size, replace=False, shuffle=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def summarize(
    per_unit: pd.DataFrame,
    snr_threshold: float = COMPARISON_SETTINGS["snr_threshold"],
    well_detected_accuracy: float = COMPARISON_SETTINGS["well_detected_accuracy"],
) -> dict:
    """The SpikeForest summary of per-unit scores.

    Parameters
    ----------
    per_unit : pandas.DataFrame
        Columns ``accuracy``, ``precision``, ``recall`` and ``snr`` (one row per true unit).
    snr_threshold : float, default: 8.0
        Means are over units whose SNR is strictly above this.
    well_detected_accuracy : float, default: 0.8
        A unit with at least this accuracy counts as well detected (all units, any SNR).

    Returns
    -------
    dict
        ``mean_accuracy``, ``mean_precision``, ``mean_recall`` (NaN when no
        unit passes the threshold), ``num_units_above_snr_threshold``,
        ``num_well_detected``, ``num_true_units`` and ``settings``.
    """
    missing = [c for c in ("accuracy", "precision", "recall", "snr") if c not in per_unit.columns]
    if missing:
        raise ValueError(f"per_unit: missing columns {missing}; has {list(per_unit.columns)}")
    above = per_unit[per_unit["snr"].astype(float) > snr_threshold]

    def mean(column: str) -> float:
        return float(above[column].astype(float).mean()) if len(above) else float("nan")

    return {
        "mean_accuracy": mean("accuracy"),
        "mean_precision": mean("precision"),
        "mean_recall": mean("recall"),
        "num_units_above_snr_threshold": int(len(above)),
        "num_well_detected": int((per_unit["accuracy"].astype(float) >= well_detected_accuracy).sum()),
        "num_true_units": int(len(per_unit)),
        "settings": {"snr_threshold": float(snr_threshold), "well_detected_accuracy": float(well_detected_accuracy)},
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _plain(unit_id):
    """numpy scalars as Python ints / strings, so tables and JSON stay plain."""
    if isinstance(unit_id, np.integer):
        return int(unit_id)
    if isinstance(unit_id, np.str_):
        return str(unit_id)
    return unit_id
