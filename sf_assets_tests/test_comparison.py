"""Ground-truth comparison and SNRs on hand-built data with known answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from spikeinterface.comparison import compare_sorter_to_ground_truth
from spikeinterface.core import NumpyRecording, NumpySorting

from sf_assets.core.comparison import (
    COMPARISON_SETTINGS,
    PER_UNIT_COLUMNS,
    SPIKEINTERFACE_MATCHING,
    compare_to_ground_truth,
    summarize,
    true_unit_snrs,
)
from sf_assets.stores.data import load_recording, load_sorting_object

FS = 30000.0
NUM_SPIKES = 100


def _sorting(trains: dict) -> NumpySorting:
    unit_ids = list(trains)
    samples = np.concatenate([np.asarray(t, dtype=np.int64) for t in trains.values()])
    labels = np.concatenate([np.full(len(t), u) for u, t in trains.items()])
    order = np.argsort(samples, kind="stable")
    return NumpySorting.from_samples_and_labels([samples[order]], [labels[order]], FS, unit_ids=unit_ids)


@pytest.fixture
def truth() -> dict:
    """Two true units, 100 spikes each, never within 10 ms of each other."""
    return {1: 1000 + 3000 * np.arange(NUM_SPIKES), 2: 2500 + 3000 * np.arange(NUM_SPIKES)}


def _row(result, true_unit_id) -> dict:
    table = result.per_unit.set_index("true_unit_id")
    return table.loc[true_unit_id].to_dict()


def test_perfect_copy(truth):
    result = compare_to_ground_truth(_sorting({"a": truth[1], "b": truth[2]}), _sorting(truth))
    assert list(result.per_unit.columns) == list(PER_UNIT_COLUMNS)
    assert list(result.per_unit["true_unit_id"]) == [1, 2]
    assert list(result.per_unit["best_unit_id"]) == ["a", "b"]
    assert list(result.per_unit["accuracy"]) == [1.0, 1.0]
    assert list(result.per_unit["num_matches"]) == [NUM_SPIKES, NUM_SPIKES]
    assert result.num_sorted_units == 2


def test_half_the_spikes_dropped(truth):
    result = compare_to_ground_truth(_sorting({1: truth[1][::2], 2: truth[2]}), _sorting(truth))
    row = _row(result, 1)
    assert row["recall"] == 0.5 and row["precision"] == 1.0 and row["accuracy"] == 0.5
    assert (row["num_matches"], row["num_fp"], row["num_fn"], row["num_true_spikes"]) == (50, 0, 50, 100)


def test_extra_false_spikes(truth):
    extra = truth[1][:25] + 1200  # 40 ms after unit 1's spikes, 10 ms before unit 2's
    padded = {1: np.sort(np.concatenate([truth[1], extra])), 2: truth[2]}
    result = compare_to_ground_truth(_sorting(padded), _sorting(truth))
    row = _row(result, 1)
    assert row["num_fp"] == 25 and row["num_fn"] == 0
    assert row["precision"] == pytest.approx(100 / 125)
    assert row["recall"] == 1.0
    assert row["accuracy"] == pytest.approx(100 / 125)


def test_shift_of_0_8_ms_matches_at_1_ms_but_not_at_0_4_ms(truth):
    shift = int(0.8e-3 * FS)  # 24 samples
    shifted = _sorting({1: truth[1] + shift, 2: truth[2] + shift})
    spikeforest = compare_to_ground_truth(shifted, _sorting(truth))
    assert list(spikeforest.per_unit["accuracy"]) == [1.0, 1.0]
    assert spikeforest.settings["delta_frames"] == 30
    strict = compare_to_ground_truth(shifted, _sorting(truth), delta_time_ms=0.4)
    assert list(strict.per_unit["accuracy"]) == [0.0, 0.0]
    assert list(strict.per_unit["best_unit_id"]) == [None, None]
    assert strict.settings["delta_frames"] == 12


def test_best_match_lets_one_sorted_unit_serve_two_true_units(truth):
    merged = _sorting({"m": np.sort(np.concatenate([truth[1], truth[2]]))})
    best = compare_to_ground_truth(merged, _sorting(truth))
    assert list(best.per_unit["best_unit_id"]) == ["m", "m"]
    assert list(best.per_unit["recall"]) == [1.0, 1.0]
    assert list(best.per_unit["precision"]) == [0.5, 0.5]
    assert list(best.per_unit["num_fp"]) == [100, 100]
    # Hungarian matching is one-to-one: at agreement 0.5 one true unit gets "m", the other nothing.
    hungarian = compare_to_ground_truth(merged, _sorting(truth), match_mode="hungarian")
    assert sorted(map(str, hungarian.per_unit["best_unit_id"])) == ["None", "m"]
    assert sorted(hungarian.per_unit["accuracy"]) == [0.0, 0.5]


def test_best_match_picks_the_highest_agreement(truth):
    # "good" has 90 of unit 1's spikes, "poor" 30 of them plus 60 false ones.
    false_spikes = truth[1][:60] + 1200
    sorted_units = {"poor": np.sort(np.concatenate([truth[1][:30], false_spikes])), "good": truth[1][10:], 2: truth[2]}
    result = compare_to_ground_truth(_sorting(sorted_units), _sorting(truth))
    row = _row(result, 1)
    assert row["best_unit_id"] == "good"
    assert row["num_matches"] == 90 and row["accuracy"] == pytest.approx(0.9)


def test_nothing_sorted(truth):
    empty = NumpySorting.from_samples_and_labels([np.array([], dtype=np.int64)], [np.array([], dtype=np.int64)], FS)
    result = compare_to_ground_truth(empty, _sorting(truth))
    assert list(result.per_unit["best_unit_id"]) == [None, None]
    assert list(result.per_unit["accuracy"]) == [0.0, 0.0]
    assert list(result.per_unit["precision"]) == [0.0, 0.0]
    assert list(result.per_unit["num_fn"]) == [NUM_SPIKES, NUM_SPIKES]
    assert result.num_sorted_units == 0


def test_settings_are_recorded_and_checked(truth):
    result = compare_to_ground_truth(_sorting(truth), _sorting(truth))
    assert result.settings == {
        "delta_time_ms": 1.0,
        "delta_frames": 30,
        "match_mode": "best",
        "sampling_frequency_hz": FS,
    }
    assert COMPARISON_SETTINGS["delta_time_ms"] == 1.0 and COMPARISON_SETTINGS["match_mode"] == "best"
    with pytest.raises(ValueError, match="match_mode"):
        compare_to_ground_truth(_sorting(truth), _sorting(truth), match_mode="greedy")
    with pytest.raises(ValueError, match="delta_time_ms"):
        compare_to_ground_truth(_sorting(truth), _sorting(truth), delta_time_ms=0)
    with pytest.raises(TypeError):
        COMPARISON_SETTINGS["delta_time_ms"] = 2.0


def test_spikeinterface_setting_agrees_with_spikeinterface(truth):
    rng = np.random.default_rng(0)
    jittered = {
        "a": np.sort(rng.choice(truth[1], 80, replace=False) + rng.integers(-15, 15, 80)),
        "b": np.sort(np.concatenate([truth[2][:70], truth[2][:20] + 900])),
    }
    ours = compare_to_ground_truth(_sorting(jittered), _sorting(truth), **SPIKEINTERFACE_MATCHING)
    theirs = compare_sorter_to_ground_truth(_sorting(truth), _sorting(jittered), delta_time=0.4, match_mode="hungarian")
    performance = theirs.get_performance(method="by_unit")
    for column in ("accuracy", "precision", "recall"):
        np.testing.assert_allclose(ours.per_unit[column].to_numpy(), performance[column].astype(float).to_numpy())


# ------------------------------------------------------------------------ SNR


def _spike_waveform(num_samples: int = 60) -> np.ndarray:
    """A smooth negative spike, -1 at its trough, mostly inside 300-6000 Hz."""
    t = np.arange(num_samples) - 30
    return -np.exp(-(t**2) / (2 * 4.0**2)) + 0.3 * np.exp(-((t - 12) ** 2) / (2 * 8.0**2))


def test_snr_scales_with_amplitude_and_finds_the_peak_channel():
    rng = np.random.default_rng(1)
    num_samples, noise_sd = int(10 * FS), 10.0
    traces = rng.normal(0.0, noise_sd, size=(num_samples, 4)).astype(np.float32)
    waveform = _spike_waveform()
    trains = {1: 3000 + 1500 * np.arange(150), 2: 3700 + 1500 * np.arange(150), 3: 4400 + 1500 * np.arange(150)}
    for unit, channel, amplitude in ((1, 1, 200.0), (2, 2, 100.0), (3, 3, 0.0)):
        for start in trains[unit]:
            traces[start - 30 : start + 30, channel] += amplitude * waveform
    recording = NumpyRecording([traces], FS)
    snrs = true_unit_snrs(recording, _sorting(trains))
    assert set(snrs) == {1, 2, 3}
    assert snrs[1] / snrs[2] == pytest.approx(2.0, rel=0.05)
    assert snrs[1] > 8.0 > snrs[3]
    # Noise alone: the median of 150 noise snippets peaks far below a real spike.
    assert snrs[3] < 2.0


def test_snr_of_a_unit_without_spikes_is_nan():
    traces = np.random.default_rng(2).normal(0, 5, size=(int(2 * FS), 2)).astype(np.float32)
    sorting = NumpySorting.from_samples_and_labels([np.array([6000, 9000])], [np.array([1, 1])], FS, unit_ids=[1, 2])
    snrs = true_unit_snrs(NumpyRecording([traces], FS), sorting)
    assert math.isfinite(snrs[1]) and math.isnan(snrs[2])


def test_snrs_of_the_synthetic_studyset(synthetic_studyset):
    store, manifest_path, _, _ = synthetic_studyset
    entry = json.loads(manifest_path.read_text())["StudySets"][0]["studies"][0]["recordings"][0]
    recording = load_recording(entry["recordingUri"], store)
    gt = load_sorting_object(entry["sortingTrueUri"], store, recording.get_sampling_frequency())
    snrs = true_unit_snrs(recording, gt)
    assert len(snrs) == entry["numTrueUnits"]
    assert all(math.isfinite(v) and v > 0 for v in snrs.values())
    # The generator makes a spread of units, some of them clearly above threshold.
    assert max(snrs.values()) > COMPARISON_SETTINGS["snr_threshold"]
    assert snrs == true_unit_snrs(recording, gt)


@pytest.mark.parametrize("num_segments", [1, 2])
@pytest.mark.parametrize("seed", [0, 7])
def test_snr_spike_choice_draws_what_spikeinterface_draws(num_segments, seed):
    """The numba-free selection picks exactly the spikes of ``random_spikes_selection``."""
    from spikeinterface.core import generate_sorting, random_spikes_selection

    from sf_assets.core.comparison import _uniform_spike_choice

    sorting = generate_sorting(
        num_units=6, durations=[20.0] * num_segments, firing_rates=[0.2, 2.0, 9.0, 30.0, 60.0, 4.0], seed=seed
    )
    num_samples = [int(20.0 * sorting.sampling_frequency)] * num_segments
    expected = random_spikes_selection(
        sorting, num_samples, method="uniform", max_spikes_per_unit=50, margin_size=90, seed=seed
    )
    chosen = _uniform_spike_choice(sorting.to_spike_vector(), sorting.get_num_units(), num_samples, 50, 90, seed)
    assert chosen.size > 0
    np.testing.assert_array_equal(chosen, expected)


# -------------------------------------------------------------------- summary


def test_summarize_means_over_units_above_the_snr_threshold():
    per_unit = pd.DataFrame(
        {
            "accuracy": [1.0, 0.5, 0.9, 0.1],
            "precision": [1.0, 1.0, 0.8, 0.2],
            "recall": [1.0, 0.5, 0.9, 0.3],
            "snr": [20.0, 10.0, 8.0, 3.0],
        }
    )
    summary = summarize(per_unit)
    assert summary["mean_accuracy"] == pytest.approx(0.75)
    assert summary["mean_precision"] == pytest.approx(1.0)
    assert summary["mean_recall"] == pytest.approx(0.75)
    assert summary["num_units_above_snr_threshold"] == 2  # SNR 8.0 itself is not above 8
    assert summary["num_well_detected"] == 2  # accuracy >= 0.8 at any SNR: 1.0 and 0.9
    assert summary["num_true_units"] == 4
    assert summary["settings"] == {"snr_threshold": 8.0, "well_detected_accuracy": 0.8}
    lenient = summarize(per_unit, snr_threshold=5.0, well_detected_accuracy=0.5)
    assert lenient["mean_accuracy"] == pytest.approx(0.8) and lenient["num_well_detected"] == 3


def test_summarize_with_no_unit_above_threshold():
    summary = summarize(pd.DataFrame({"accuracy": [1.0], "precision": [1.0], "recall": [1.0], "snr": [2.0]}))
    assert math.isnan(summary["mean_accuracy"]) and summary["num_units_above_snr_threshold"] == 0
    with pytest.raises(ValueError, match="snr"):
        summarize(pd.DataFrame({"accuracy": [1.0], "precision": [1.0], "recall": [1.0]}))
