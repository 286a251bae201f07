"""Canary decisions, with each local sorter's real failures on real failing inputs.

The sorting tests run spikeinterface's run_sorter on tiny recordings (0.05 s,
or 3 s of noise) that make each sorter fail or find nothing, and check that the
classification names the right failure.  They fail early in each sorter, so
no numba-heavy stage runs (simple pays about 4 s of compilation once).
"""
from __future__ import annotations

import json
import math
import re
import traceback

import numpy as np
import pytest
import spikeinterface.core as sc
from spikeinterface.sorters import available_sorters, run_sorter
from spikeinterface.sorters.utils import SpikeSortingError

from sf_assets.core.canary import (
    ANY_SORTER,
    ERROR_SIGNATURES,
    CanaryDecision,
    canary_window_s,
    classify_sort_error,
    classify_sort_output,
    error_summary,
    plan_canary,
)
from sf_assets.core.errors import (
    BiologicalSortFailure,
    EnvironmentSortFailure,
    InsufficientActivityError,
    ResourceSortFailure,
)

FS = 30000.0


def _save(recording, folder):
    # generated recordings are not serializable: run_sorter needs them on disk
    return recording.save(folder=folder, format="binary", verbose=False)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    root = tmp_path_factory.mktemp("canary-recordings")
    noise = sc.generate_recording(num_channels=4, sampling_frequency=FS, durations=[3.0], seed=0)
    ground_truth, _ = sc.generate_ground_truth_recording(num_channels=4, durations=[3.0], num_units=5, seed=0)
    with_nan = ground_truth.get_traces().copy()
    with_nan[1000:2000] = np.nan
    nan_recording = sc.NumpyRecording([with_nan], sampling_frequency=ground_truth.sampling_frequency)
    nan_recording.set_probe(ground_truth.get_probe())
    no_probe = sc.NumpyRecording([ground_truth.get_traces()], sampling_frequency=ground_truth.sampling_frequency)
    return {
        "short": _save(
            sc.generate_recording(num_channels=4, sampling_frequency=FS, durations=[0.05], seed=0), root / "short"
        ),
        "noise": _save(noise, root / "noise"),
        "one_channel": _save(
            sc.generate_recording(num_channels=1, sampling_frequency=FS, durations=[3.0], seed=0), root / "one_channel"
        ),
        "nan": _save(nan_recording, root / "nan"),
        "no_probe": _save(no_probe, root / "no_probe"),
    }


def _failed_sort(sorter: str, recording, folder, **params) -> list[str]:
    """Run a sort that must fail; return its error as the engine may see it, three ways."""
    with pytest.raises(SpikeSortingError) as info:
        run_sorter(sorter, recording, folder=folder, remove_existing_folder=True, verbose=False, **params)
    trace = json.loads((folder / "spikeinterface_log.json").read_text())["error_trace"]
    return ["".join(traceback.format_exception(info.value)), "\n".join(trace), str(trace)]


def _sorted_units(sorter: str, recording, folder) -> int:
    return len(run_sorter(sorter, recording, folder=folder, remove_existing_folder=True, verbose=False).unit_ids)


def _assert_class(sorter: str, texts: list[str], expected: type, signature_text: str) -> None:
    for text in texts:
        failure = classify_sort_error(sorter, text)
        assert type(failure) is expected, (sorter, text[-600:])
        assert str(failure).startswith(f"{sorter}: ")
        assert signature_text in str(failure)


# --- each local sorter on its own failing inputs -------------------------------------------


def test_simple_short_window_detects_nothing(recordings, tmp_path):
    texts = _failed_sort("simple", recordings["short"], tmp_path / "sort")
    _assert_class("simple", texts, InsufficientActivityError, "while a minimum of 1 is required by TruncatedSVD")


def test_simple_finds_no_units_in_noise(recordings, tmp_path):
    num_units = _sorted_units("simple", recordings["noise"], tmp_path / "sort")
    assert num_units == 0
    assert isinstance(classify_sort_output("simple", num_units), InsufficientActivityError)


def test_mountainsort5_returns_no_units_instead_of_failing(recordings, tmp_path):
    for name in ("short", "noise"):
        num_units = _sorted_units("mountainsort5", recordings[name], tmp_path / name)
        assert num_units == 0, name
        failure = classify_sort_output("mountainsort5", num_units)
        assert str(failure) == "mountainsort5: the sort finished but found 0 units"


def test_tridesclous2_short_window_divides_by_zero_peaks(recordings, tmp_path):
    texts = _failed_sort("tridesclous2", recordings["short"], tmp_path / "sort")
    _assert_class("tridesclous2", texts, InsufficientActivityError, "ZeroDivisionError: division by zero")


def test_spykingcircus2_short_window_has_no_prototype(recordings, tmp_path):
    texts = _failed_sort("spykingcircus2", recordings["short"], tmp_path / "sort")
    _assert_class("spykingcircus2", texts, InsufficientActivityError, "Prototype should have a negative peak")


def test_single_channel_noise_has_too_few_spikes(recordings, tmp_path):
    for sorter in ("simple", "tridesclous2"):
        texts = _failed_sort(sorter, recordings["one_channel"], tmp_path / sorter)
        _assert_class(sorter, texts, InsufficientActivityError, "IndexError: index 1 is out of bounds for axis 0")
    texts = _failed_sort("spykingcircus2", recordings["one_channel"], tmp_path / "spykingcircus2")
    _assert_class("spykingcircus2", texts, InsufficientActivityError, "required by TruncatedSVD")


def test_nan_samples_are_a_data_failure(recordings, tmp_path):
    # NaN samples make these sorters fail differently from run to run (SVD did not
    # converge, scikit-learn's "Input X contains NaN", or no peaks at all): every
    # outcome must say the data, not the run, is the problem.
    for sorter in ("mountainsort5", "tridesclous2"):
        for text in _failed_sort(sorter, recordings["nan"], tmp_path / sorter):
            failure = classify_sort_error(sorter, text)
            assert isinstance(failure, (BiologicalSortFailure, InsufficientActivityError)), (sorter, text[-600:])


def test_a_recording_without_probe_is_a_data_failure(recordings, tmp_path):
    texts = _failed_sort("mountainsort5", recordings["no_probe"], tmp_path / "sort")
    _assert_class("mountainsort5", texts, BiologicalSortFailure, "needs a probe to be attached to the recording")


def test_a_sorter_crash_on_bad_params_is_unexpected(recordings, tmp_path):
    texts = _failed_sort("mountainsort5", recordings["noise"], tmp_path / "sort", scheme="7")
    for text in texts:
        assert classify_sort_error("mountainsort5", text) is None
    assert error_summary(texts[0]) == "ValueError: Invalid scheme: 7 given. scheme must be one of '1', '2' or '3'"


def _run_sorter_error(sorter: str, recording, folder, monkeypatch) -> str:
    monkeypatch.delenv("KILOSORT2_PATH", raising=False)
    with pytest.raises(Exception) as info:
        run_sorter(sorter, recording, folder=folder, remove_existing_folder=True, verbose=False)
    return "".join(traceback.format_exception(info.value))


def test_run_sorter_environment_errors(recordings, tmp_path, monkeypatch):
    cases = {
        "kilosort2": "The sorter kilosort2 is not installed",
        "klusta": "The sorter klusta is archived and no longer supported",
        "no_such_sorter": "KeyError: 'no_such_sorter'",
    }
    for sorter, signature_text in cases.items():
        text = _run_sorter_error(sorter, recordings["noise"], tmp_path / sorter, monkeypatch)
        _assert_class(sorter, [text], EnvironmentSortFailure, signature_text)


def test_real_resource_errors():
    with pytest.raises(MemoryError) as memory:
        np.empty(2**62, dtype=np.uint8)
    memory_text = "".join(traceback.format_exception(memory.value))
    _assert_class("simple", [memory_text], ResourceSortFailure, "Unable to allocate")
    with pytest.raises(OSError) as disk_full, open("/dev/full", "wb", buffering=0) as full:
        full.write(b"spikes")
    disk_text = "".join(traceback.format_exception(disk_full.value))
    _assert_class("kilosort4", [disk_text], ResourceSortFailure, "[Errno 28]")


# --- the table itself --------------------------------------------------------------------

# One text per row, in table order: the messages observed (docs/sorters.md) or the upstream ones.
NO_PEAKS = "ValueError: Found array with 0 sample(s) (shape=(0, 75)) while a minimum of 1 is required by TruncatedSVD."
ROW_SAMPLES = [
    ("simple", NO_PEAKS),
    ("tridesclous2", 'File "x.py", line 83, in select_peaks\nIndexError: index 1 is out of bounds for axis 0 with size 1'),
    ("tridesclous2", "ZeroDivisionError: division by zero"),
    ("spykingcircus2", "AssertionError: Prototype should have a negative peak"),
    ("herdingspikes", "in HSDetectionLightning.get_random_data_chunks\nValueError: high < 0"),
    ("mountainsort5", "numpy.linalg.LinAlgError: SVD did not converge"),
    ("mountainsort4", "get_channel_property(ids[0], 'location')\nTypeError: 'NoneType' object is not subscriptable"),
    ("tridesclous2", 'ValueError: get_channel_locations(..) needs a probe to be attached to the recording'),
    ("mountainsort5", "ValueError: Input X contains NaN.\nPCA does not accept missing values encoded as NaN natively."),
    ("lupin", "Exception: The sorter lupin is not installed. Please install it with:"),
    ("yass", "ValueError: The sorter yass is archived and no longer supported."),
    ("kilosort4", "ModuleNotFoundError: No module named 'torch'"),
    ("herdingspikes", "AttributeError: `np.Inf` was removed in the NumPy 2.0 release. Use `np.inf` instead."),
    ("mountainsort4", "DockerException: Error while fetching server API version: ('Connection aborted.')"),
    ("kilosort2", "AssertionError: The container requires a NVIDIA GPU capability, but it is not available"),
    ("simple", "ValueError: sorter simple not in SORTER_DOCKER_MAP. Please specify a container_image."),
    ("kilosort4", "RuntimeError: Found no NVIDIA driver on your system."),
    ("kilosort", 'SorterClass = sorter_dict[sorter_name]\nKeyError: "kilosort"'),
    ("kilosort4", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    ("mountainsort5", "numpy._core._exceptions._ArrayMemoryError: Unable to allocate 3.5 GiB for an array"),
    ("spykingcircus2", "OSError: [Errno 28] No space left on device"),
]


def test_every_row_is_exercised_and_gives_its_class():
    assert len(ROW_SAMPLES) == len(ERROR_SIGNATURES)
    for (sorter, text), signature in zip(ROW_SAMPLES, ERROR_SIGNATURES):
        failure = classify_sort_error(sorter, text)
        assert failure is not None and failure.signature is signature, (sorter, text)
        assert type(failure) is signature.failure


def test_rows_name_real_sorters_and_come_specific_first():
    known = set(available_sorters())
    generic_seen = False
    for signature in ERROR_SIGNATURES:
        assert signature.meaning and signature.seen
        if ANY_SORTER in signature.sorters:
            assert signature.sorters == (ANY_SORTER,)
            generic_seen = True
        else:
            assert not generic_seen, f"{signature.sorters} comes after a '*' row"
            assert set(signature.sorters) <= known, signature.sorters


def test_sorter_specific_rows_do_not_fire_for_other_sorters():
    assert classify_sort_error("simple", "ZeroDivisionError: division by zero") is None
    assert classify_sort_error("mountainsort5", "AssertionError: Prototype should have a negative peak") is None
    assert classify_sort_error("kilosort4", NO_PEAKS) is None


def test_the_sorters_own_error_wins_over_an_earlier_handled_import_error():
    text = (
        "Traceback (most recent call last):\nModuleNotFoundError: No module named 'torch'\n\n"
        "During handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\nZeroDivisionError: division by zero\n"
    )
    assert isinstance(classify_sort_error("tridesclous2", text), InsufficientActivityError)
    assert isinstance(classify_sort_error("simple", text), EnvironmentSortFailure)


def test_unexpected_errors_and_interrupts_are_not_classified():
    assert classify_sort_error("mountainsort5", "ValueError: something nobody has seen") is None
    assert classify_sort_error("simple", "") is None
    interrupted = 'Traceback (most recent call last):\n  File "x.py", line 1\nKeyboardInterrupt'
    assert classify_sort_error("simple", interrupted) is None
    with pytest.raises(TypeError, match="error_text: expected the error's text"):
        classify_sort_error("simple", KeyboardInterrupt())


def test_classify_sort_output():
    assert isinstance(classify_sort_output("tridesclous2", 0), InsufficientActivityError)
    assert classify_sort_output("tridesclous2", 3) is None
    with pytest.raises(ValueError, match="num_units"):
        classify_sort_output("tridesclous2", -1)


def test_error_summary_skips_the_spikeinterface_wrapper():
    text = (
        "Traceback (most recent call last):\n  File \"basesorter.py\"\n    raise ValueError(\n"
        "ValueError: the real reason\n\nSpike sorting failed. You can inspect the runtime trace in x.\n"
    )
    assert error_summary(text) == "ValueError: the real reason"
    assert error_summary("just a line\n\n") == "just a line"
    assert error_summary("") == "(no error text)"


# --- the window --------------------------------------------------------------------------


@pytest.mark.parametrize("first_n_s", [None, 0, 0.0, math.nan])
def test_canary_off(first_n_s):
    plan = plan_canary(600.0, first_n_s)
    assert (plan.decision, plan.window_s) == (CanaryDecision.OFF, None)
    assert canary_window_s(600.0, first_n_s) is None


@pytest.mark.parametrize("duration_s", [10.0, 30.0, 29.5])
def test_canary_skipped_when_the_recording_is_not_longer_than_the_window(duration_s):
    plan = plan_canary(duration_s, 30.0)
    assert (plan.decision, plan.window_s) == (CanaryDecision.SKIPPED, None)
    assert plan.reason == (
        f"canary skipped: the recording lasts {duration_s:g} s, not longer than the 30 s canary window"
    )
    assert canary_window_s(duration_s, 30.0) is None
    assert plan_canary(duration_s, math.inf).decision is CanaryDecision.SKIPPED


def test_canary_runs_on_the_window():
    plan = plan_canary(600.0, 30)
    assert (plan.decision, plan.window_s) == (CanaryDecision.RUN, 30.0)
    assert plan.reason == "canary sorts the first 30 s of 600 s"
    assert canary_window_s(30.001, 30.0) == 30.0
    assert isinstance(canary_window_s(600.0, 30), float)


def test_canary_rejects_impossible_values():
    expected = "canary_first_n_s: expected 0 (off), NaN (off) or a positive number of seconds, got -5"
    with pytest.raises(ValueError, match=re.escape(expected)):
        canary_window_s(600.0, -5)
    for duration_s in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="recording_duration_s: expected a positive finite number"):
            canary_window_s(duration_s, 30.0)
