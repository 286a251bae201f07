"""A synthetic ground-truth studyset in exactly the SpikeForest formats.

The real SpikeForest data live in kachery-cloud and cannot be fetched from
every machine, so the demo and the tests run on a generated stand-in: study
sets of studies of recordings, each made by spikeinterface's
``generate_ground_truth_recording`` (templates injected into noise at known
spike times), stored as ``raw.mda`` + ``firings_true.mda`` with their
recording / ground-truth objects, and described by a ``studysets.json``
(current schema) and a matching ``spec.yaml``.  The same arguments always
produce byte-identical files and the same URIs.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from sf_assets.stores.data import store_ground_truth, store_recording
from sf_assets.stores.kachery import KacheryStore

MANIFEST_FILE = "studysets.json"
SPEC_FILE = "spec.yaml"
SPIKE_SIGN = -1
"""The generator's templates peak negative, like extracellular spikes."""

DEFAULT_SORTERS = ("MountainSort5", "SpykingCircus2", "Tridesclous2")


@dataclass(frozen=True)
class GeneratedStudyset:
    """Where a generated studyset went.

    Attributes
    ----------
    manifest_path : Path
        ``studysets.json`` in the output folder.
    spec_path : Path
        ``spec.yaml`` in the output folder; its ``studysets`` is ``manifest_uri``.
    manifest_uri : str
        The manifest stored in kachery.
    """

    manifest_path: Path
    spec_path: Path
    manifest_uri: str


def generate_studyset(
    store: KacheryStore,
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_study_sets: int = 2,
    studies_per_set: int = 2,
    recordings_per_study: int = 2,
    num_channels: Sequence[int] = (4, 8),
    duration_s: float = 30.0,
    sampling_frequency_hz: float = 30000.0,
    num_units: int | None = None,
    noise_level: float = 5.0,
    sorters: Sequence[str] = DEFAULT_SORTERS,
) -> GeneratedStudyset:
    """Generate recordings with ground truth, store them, and write manifest and spec.

    Parameters
    ----------
    store : KacheryStore
        Receives every recording, ground truth and the manifest.
    out_dir : str | Path
        Receives ``studysets.json`` and ``spec.yaml`` (replaced atomically).
    seed : int, default: 0
        Everything generated follows from it.
    num_study_sets, studies_per_set, recordings_per_study : int
        The shape of the studyset.  Sets are named ``SYNTH_SET_A``,
        ``SYNTH_SET_B``, ...; studies ``synth_a1_K8_C4`` (set letter, study
        number, units, channels); recordings ``001_synth``, ...
    num_channels : sequence of int, default: (4, 8)
        Channel counts, taken in turn by successive studies.
    duration_s : float, default: 30.0
        Length of each recording in seconds.
    sampling_frequency_hz : float, default: 30000.0
    num_units : int | None, default: None
        True units per recording; None: one and a half times the channel count
        (denser layouts make the generator place units closer than 20 um).
    noise_level : float, default: 5.0
        Standard deviation of the generated noise, in the generator's
        microvolts; with its default templates the true units' SNRs then span
        roughly 5 to 40.
    sorters : sequence of str
        The sorters the spec runs, each on every study set.

    Returns
    -------
    GeneratedStudyset
    """
    _check_positive(
        num_study_sets=num_study_sets,
        studies_per_set=studies_per_set,
        recordings_per_study=recordings_per_study,
        duration_s=duration_s,
        sampling_frequency_hz=sampling_frequency_hz,
        noise_level=noise_level,
    )
    channel_counts = [int(c) for c in num_channels]
    if not channel_counts or min(channel_counts) < 1:
        raise ValueError(f"num_channels: expected positive channel counts, got {list(num_channels)}")
    if num_units is not None and num_units < 1:
        raise ValueError(f"num_units: expected a positive count or None, got {num_units}")
    if not sorters:
        raise ValueError("sorters: expected at least one sorter name")

    study_sets = []
    study_number = 0
    for set_index in range(num_study_sets):
        letter = _letters(set_index)
        set_name = f"SYNTH_SET_{letter}"
        studies = []
        for study_index in range(studies_per_set):
            channels = channel_counts[study_number % len(channel_counts)]
            units = num_units if num_units is not None else channels + channels // 2
            study_name = f"synth_{letter.lower()}{study_index + 1}_K{units}_C{channels}"
            recordings = [
                _generate_recording(
                    store,
                    set_name,
                    study_name,
                    f"{rec_index + 1:03d}_synth",
                    seed=_recording_seed(seed, set_index, study_index, rec_index),
                    num_channels=channels,
                    num_units=units,
                    duration_s=duration_s,
                    sampling_frequency_hz=sampling_frequency_hz,
                    noise_level=noise_level,
                )
                for rec_index in range(recordings_per_study)
            ]
            studies.append({"name": study_name, "studySetName": set_name, "recordings": recordings})
            study_number += 1
        study_set = {
            "name": set_name,
            "info": {
                "label": set_name,
                "electrode_type": "silicon-probe",
                "doi": None,
                "ground_truth": "simulation",
                "recording_type": "in-silico",
                "organism": None,
                "generator": "spikeinterface generate_ground_truth_recording",
                "seed": seed,
            },
            "description": _description(set_name, seed, duration_s, sampling_frequency_hz, noise_level),
            "studies": studies,
        }
        # As in SpikeForest, a set refers to its own stored JSON (without this key).
        study_set["self_reference"] = store.store_json(study_set, f"{set_name}.json")
        study_sets.append(study_set)

    manifest_bytes = (json.dumps({"StudySets": study_sets}, indent=4) + "\n").encode("utf-8")
    manifest_uri = store.store_bytes(manifest_bytes, MANIFEST_FILE)
    set_names = [s["name"] for s in study_sets]
    spec = {
        "studysets": manifest_uri,
        "studyset-names": set_names,
        "spike-sorters": [{"name": name, "params": {}, "studysets": list(set_names)} for name in sorters],
    }
    spec_bytes = yaml.safe_dump(spec, sort_keys=False, default_flow_style=False).encode("utf-8")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST_FILE
    spec_path = out_dir / SPEC_FILE
    _write_atomic(manifest_path, manifest_bytes)
    _write_atomic(spec_path, spec_bytes)
    return GeneratedStudyset(manifest_path=manifest_path, spec_path=spec_path, manifest_uri=manifest_uri)


def _generate_recording(
    store: KacheryStore,
    set_name: str,
    study_name: str,
    name: str,
    *,
    seed: int,
    num_channels: int,
    num_units: int,
    duration_s: float,
    sampling_frequency_hz: float,
    noise_level: float,
) -> dict:
    """Generate, store, and describe one recording as a manifest entry."""
    from spikeinterface.core import generate_ground_truth_recording

    recording, sorting = generate_ground_truth_recording(
        durations=[float(duration_s)],
        sampling_frequency=float(sampling_frequency_hz),
        num_channels=num_channels,
        num_units=num_units,
        noise_kwargs={"noise_levels": float(noise_level), "strategy": "on_the_fly"},
        seed=seed,
    )
    recording_uri = store_recording(recording, store, name, spike_sign=SPIKE_SIGN, scale_factor=1.0)
    sorting_true_uri = store_ground_truth(sorting, store, name)
    # Units without spikes cannot be written to MDA firings: do not count them.
    num_true_units = int(np.count_nonzero(list(sorting.count_num_spikes_per_unit().values())))
    num_samples = recording.get_num_samples(0)
    return {
        "name": name,
        "studyName": study_name,
        "studySetName": set_name,
        "sampleRateHz": float(sampling_frequency_hz),
        "numChannels": num_channels,
        "durationSec": num_samples / float(sampling_frequency_hz),
        "numTrueUnits": num_true_units,
        "spikeSign": SPIKE_SIGN,
        "recordingUri": recording_uri,
        "sortingTrueUri": sorting_true_uri,
    }


def _recording_seed(seed: int, set_index: int, study_index: int, rec_index: int) -> int:
    """An independent, reproducible generator seed for each recording."""
    return int(np.random.SeedSequence([seed, set_index, study_index, rec_index]).generate_state(1)[0])


def _letters(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, ... (spreadsheet column names)."""
    text = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        text = chr(ord("A") + rest) + text
    return text


def _description(set_name: str, seed: int, duration_s: float, fs: float, noise_level: float) -> str:
    return (
        f"# {set_name}\n\n"
        "Synthetic ground-truth recordings made by spikeinterface's `generate_ground_truth_recording`: "
        "generated templates injected into Gaussian noise at known spike times.\n\n"
        f"- seed: {seed}\n- duration: {duration_s:g} s at {fs:g} Hz\n- noise level: {noise_level:g} uV\n"
    )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and a rename: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name}: expected a positive number, got {value!r}")
