"""Recording and sorting objects in the SpikeForest formats, through kachery."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import spikeinterface.core as si
from spikeinterface.core import NumpySorting

from sf_assets.core.errors import RecordingError, UriError
from sf_assets.core.uris import parse_uri
from sf_assets.stores.data import (
    load_recording,
    load_sorting_object,
    read_mda_header,
    store_ground_truth,
    store_recording,
    store_sorting,
)

FS = 30000.0


@pytest.fixture(scope="module")
def generated():
    """A 2 s, 4-channel ground-truth recording (in memory) and its sorting."""
    return si.generate_ground_truth_recording(
        durations=[2.0], sampling_frequency=FS, num_channels=4, num_units=4, seed=7
    )


@pytest.fixture
def stored(generated, kachery_store):
    recording, sorting = generated
    recording_uri = store_recording(recording, kachery_store, "rec_a")
    ground_truth_uri = store_ground_truth(sorting, kachery_store, "rec_a")
    return kachery_store, recording_uri, ground_truth_uri


def _with_object(store, obj_uri, **changes):
    """Store a modified copy of a stored object; ``None`` removes a key."""
    obj = store.load_json(obj_uri)
    for key, value in changes.items():
        if value is None:
            obj.pop(key)
        else:
            obj[key] = value
    return store.store_json(obj, "modified.json")


# ------------------------------------------------------------------ recordings


def test_recording_round_trip(generated, stored):
    recording, _ = generated
    store, recording_uri, _ = stored
    loaded = load_recording(recording_uri, store)
    assert loaded.get_sampling_frequency() == FS
    assert loaded.get_num_channels() == 4
    np.testing.assert_array_equal(loaded.get_traces(), recording.get_traces())
    np.testing.assert_array_equal(loaded.get_channel_locations(), recording.get_channel_locations())
    assert loaded.get_probe().get_contact_count() == 4


def test_recording_object_has_the_spikeforest_shape(stored):
    store, recording_uri, ground_truth_uri = stored
    obj = store.load_json(recording_uri)
    assert list(obj) == ["raw", "params", "geom"]
    assert parse_uri(obj["raw"]).path == "raw.mda"
    assert obj["params"] == {"samplerate": 30000, "spike_sign": -1, "scale_factor": 1}
    assert len(obj["geom"]) == 4 and all(len(p) == 2 for p in obj["geom"])
    gt = store.load_json(ground_truth_uri)
    assert list(gt) == ["firings"] and parse_uri(gt["firings"]).path == "firings_true.mda"
    header = read_mda_header(store.load_file(obj["raw"]), obj["raw"])
    assert header.dims == (4, int(2.0 * FS)) and header.dtype == np.float32


def test_loaded_recording_survives_a_json_dump(generated, stored, tmp_path):
    """run_sorter dumps the recording to JSON for its child process."""
    recording, _ = generated
    store, recording_uri, _ = stored
    loaded = load_recording(recording_uri, store)
    assert loaded.check_serializability("json")
    loaded.dump(tmp_path / "recording.json")
    reloaded = si.load(tmp_path / "recording.json")
    window = dict(start_frame=100, end_frame=200)
    np.testing.assert_array_equal(reloaded.get_traces(**window), recording.get_traces(**window))
    np.testing.assert_array_equal(reloaded.get_channel_locations(), recording.get_channel_locations())
    np.testing.assert_array_equal(reloaded.get_channel_gains(), loaded.get_channel_gains())


def test_real_spikeforest_object_with_scale_factor_and_queries(stored):
    """An object shaped like recordings/HYBRID_JANELIA/.../rec_4c_600s_11.json."""
    store, recording_uri, _ = stored
    raw = store.load_json(recording_uri)["raw"]
    obj = {
        "raw": f"{raw}?manifest=e563dc8a6f5a32796c86bd63674cca23a9265abd",
        "params": {"samplerate": 30000, "spike_sign": -1, "scale_factor": 0.195, "juxta_channel": 3},
        "geom": [[43.0, 160.0], [11.0, 160.0], [57.0, 180.0], [27.0, 180.0]],
        "self_reference": "sha1://fd72f0fbb4c1c1cccc0ea9e03ef4f7c609e1cd89/rec_4c_600s_11.json",
    }
    loaded = load_recording(store.store_json(obj, "rec_4c_600s_11.json"), store)
    np.testing.assert_allclose(loaded.get_channel_gains(), 0.195)
    np.testing.assert_array_equal(loaded.get_channel_locations(), np.array(obj["geom"]))
    raw_units = loaded.get_traces(start_frame=0, end_frame=10)
    in_uv = loaded.get_traces(start_frame=0, end_frame=10, return_in_uV=True)
    np.testing.assert_allclose(in_uv, raw_units * 0.195, rtol=1e-6)


def test_loading_twice_reuses_the_mda_folder(stored):
    store, recording_uri, _ = stored
    first = load_recording(recording_uri, store)
    second = load_recording(recording_uri, store)
    assert first._kwargs["folder_path"] == second._kwargs["folder_path"]
    folder = store.root_dir / "sf_assets_cache" / "mda_recordings"
    assert [p.name for p in folder.iterdir()] == [parse_uri(recording_uri).sha1]


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"raw": None}, "'raw'"),
        ({"params": None}, "'params'"),
        ({"geom": None}, "'geom'"),
        ({"raw": 12}, "raw: expected a string"),
        ({"raw": "/local/raw.mda"}, "raw: expected a sha1:// URI"),
        ({"raw": "sha1dir://0123456789abcdef0123456789abcdef01234567.x/raw.mda"}, "pre-2021"),
        ({"params": {"spike_sign": -1}}, "params.samplerate"),
        ({"params": {"samplerate": 0}}, "params.samplerate"),
        ({"params": {"samplerate": "30000"}}, "params.samplerate"),
        ({"params": {"samplerate": 30000, "spike_sign": 0}}, "params.spike_sign"),
        ({"params": {"samplerate": 30000, "scale_factor": -1}}, "params.scale_factor"),
        ({"geom": [[0, 0], [0, 20], [20, 0]]}, "geom: 3 channel positions, but raw"),
        ({"geom": [[0, 0], [0, 20], [20, 0], [20]]}, "geom[3]"),
        ({"geom": []}, "geom"),
    ],
)
def test_malformed_recording_objects_name_uri_and_key(stored, changes, key):
    store, recording_uri, _ = stored
    bad_uri = _with_object(store, recording_uri, **changes)
    with pytest.raises(RecordingError) as info:
        load_recording(bad_uri, store)
    assert bad_uri in str(info.value)
    assert key in str(info.value)


def test_recording_object_must_be_a_json_object(kachery_store):
    uri = kachery_store.store_json([1, 2], "list.json")
    with pytest.raises(RecordingError, match="expected a recording object"):
        load_recording(uri, kachery_store)


def test_truncated_raw_mda_is_a_clear_error(stored):
    store, recording_uri, _ = stored
    raw_uri = store.load_json(recording_uri)["raw"]
    truncated = store.load_bytes(raw_uri)[:-1000]
    cut_uri = store.store_bytes(truncated, "raw.mda")
    bad_uri = _with_object(store, recording_uri, raw=cut_uri)
    with pytest.raises(RecordingError) as info:
        load_recording(bad_uri, store)
    assert "truncated" in str(info.value) and cut_uri in str(info.value)


def test_not_an_mda_file(stored):
    store, recording_uri, _ = stored
    junk_uri = store.store_bytes(struct.pack("<iii", 99, 4, 2) + b"\0" * 64, "raw.mda")
    with pytest.raises(RecordingError, match="not an MDA file"):
        load_recording(_with_object(store, recording_uri, raw=junk_uri), store)
    short_uri = store.store_bytes(b"\x01\x02", "raw.mda")
    with pytest.raises(RecordingError, match="shorter than an MDA header"):
        load_recording(_with_object(store, recording_uri, raw=short_uri), store)


def test_raw_with_wrong_hash_is_a_uri_error(stored):
    store, recording_uri, _ = stored
    raw_uri = store.load_json(recording_uri)["raw"]
    path = store.load_file(raw_uri)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(200)
        f.write(b"\x7f\x7f\x7f\x7f")
    with pytest.raises(UriError) as info:
        load_recording(recording_uri, store)
    assert raw_uri in str(info.value) and "expected sha1" in str(info.value)


def test_missing_raw_is_a_uri_error(stored):
    store, recording_uri, _ = stored
    absent = "sha1://0123456789abcdef0123456789abcdef01234567/raw.mda"
    with pytest.raises(UriError, match=absent):
        load_recording(_with_object(store, recording_uri, raw=absent), store)


# -------------------------------------------------------------------- sortings


def _trains(sorting):
    return {u: sorting.get_unit_spike_train(u).tolist() for u in sorting.unit_ids}


def test_ground_truth_round_trip(generated, stored):
    _, sorting = generated
    store, _, ground_truth_uri = stored
    loaded = load_sorting_object(ground_truth_uri, store, FS)
    # SpikeForest ground truth: labels 1..N in the sorting's unit order.
    assert list(loaded.unit_ids) == [1, 2, 3, 4]
    for label, unit_id in zip(loaded.unit_ids, sorting.unit_ids):
        np.testing.assert_array_equal(loaded.get_unit_spike_train(label), sorting.get_unit_spike_train(unit_id))
    assert loaded.check_serializability("json")


@pytest.mark.parametrize(
    "unit_ids, mda_labels",
    [
        (["a", "b", "c"], [1, 2, 3]),
        ([3, 7, 12], [3, 7, 12]),
        ([0, 1, 2], [1, 2, 3]),
    ],
)
def test_stored_sorting_round_trip_keeps_unit_ids(kachery_store, unit_ids, mda_labels):
    samples = np.array([10, 500, 900, 1500, 1501, 2500, 7000, 9000])
    labels = np.array([unit_ids[i % 3] for i in range(len(samples))])
    sorting = NumpySorting.from_samples_and_labels([samples], [labels], FS, unit_ids=unit_ids)
    uri = store_sorting(sorting, kachery_store, "MountainSort5/synth_a1_K6_C4/001_synth")
    obj = kachery_store.load_json(uri)
    assert obj["samplerate"] == 30000 and obj["unit_ids"] == unit_ids
    assert parse_uri(uri).path == "MountainSort5/synth_a1_K6_C4/001_synth.sorting.json"
    firings_path = kachery_store.load_file(obj["firings"])
    header = read_mda_header(firings_path, obj["firings"])
    firings = np.fromfile(firings_path, dtype=header.dtype, offset=header.header_size).reshape(header.dims, order="F")
    assert sorted(set(firings[2].astype(int))) == mda_labels
    assert list(firings[1]) == sorted(firings[1])
    loaded = load_sorting_object(uri, kachery_store, FS)
    assert list(loaded.unit_ids) == unit_ids
    assert _trains(loaded) == _trains(sorting)
    assert loaded.check_serializability("json")


def test_units_without_spikes_are_dropped(kachery_store):
    sorting = NumpySorting.from_samples_and_labels(
        [np.array([5, 50])], [np.array(["x", "z"])], FS, unit_ids=["x", "y", "z"]
    )
    loaded = load_sorting_object(store_sorting(sorting, kachery_store, "s"), kachery_store, FS)
    assert list(loaded.unit_ids) == ["x", "z"]
    assert _trains(loaded) == {"x": [5], "z": [50]}


def test_empty_sorting_round_trips(kachery_store):
    sorting = NumpySorting.from_samples_and_labels([np.array([], dtype=int)], [np.array([], dtype=int)], FS)
    loaded = load_sorting_object(store_sorting(sorting, kachery_store, "empty"), kachery_store, FS)
    assert loaded.get_num_units() == 0


def test_sampling_frequency_mismatch(kachery_store):
    sorting = NumpySorting.from_samples_and_labels([np.array([5])], [np.array([1])], FS)
    uri = store_sorting(sorting, kachery_store, "s")
    with pytest.raises(RecordingError, match="samplerate"):
        load_sorting_object(uri, kachery_store, 20000.0)


def test_truncated_firings_is_a_clear_error(stored):
    store, _, ground_truth_uri = stored
    firings_uri = store.load_json(ground_truth_uri)["firings"]
    cut_uri = store.store_bytes(store.load_bytes(firings_uri)[:-8], "firings_true.mda")
    bad_uri = store.store_json({"firings": cut_uri}, "bad.firings_true.json")
    with pytest.raises(RecordingError) as info:
        load_sorting_object(bad_uri, store, FS)
    assert "truncated" in str(info.value) and cut_uri in str(info.value)


def test_firings_with_too_few_rows(kachery_store):
    data = np.zeros((2, 3))
    raw = struct.pack("<iiiii", -7, 8, 2, 2, 3) + data.tobytes(order="F")
    firings_uri = kachery_store.store_bytes(raw, "firings.mda")
    uri = kachery_store.store_json({"firings": firings_uri}, "x.json")
    with pytest.raises(RecordingError, match="at least 3 rows"):
        load_sorting_object(uri, kachery_store, FS)


@pytest.mark.parametrize(
    "obj, key",
    [
        ({}, "'firings'"),
        ({"firings": 3}, "firings: expected a string"),
        ({"firings": "firings.mda"}, "firings: expected a sha1:// URI"),
        ({"firings": "FIRINGS", "unit_ids": "abc"}, "unit_ids"),
    ],
)
def test_malformed_sorting_objects(stored, obj, key):
    store, _, ground_truth_uri = stored
    obj = {k: (store.load_json(ground_truth_uri)["firings"] if v == "FIRINGS" else v) for k, v in obj.items()}
    uri = store.store_json(obj, "bad.json")
    with pytest.raises(RecordingError) as info:
        load_sorting_object(uri, store, FS)
    assert uri in str(info.value) and key in str(info.value)


def test_unit_ids_must_cover_the_labels(stored):
    store, _, ground_truth_uri = stored
    firings = store.load_json(ground_truth_uri)["firings"]
    uri = store.store_json({"firings": firings, "unit_ids": ["a", "b"]}, "bad.json")
    with pytest.raises(RecordingError, match=r"outside 1\.\.2"):
        load_sorting_object(uri, store, FS)


def test_ground_truth_from_a_manifest_recording(synthetic_studyset):
    store, manifest_path, _, _ = synthetic_studyset
    entry = json.loads(manifest_path.read_text())["StudySets"][0]["studies"][0]["recordings"][0]
    recording = load_recording(entry["recordingUri"], store)
    sorting = load_sorting_object(entry["sortingTrueUri"], store, recording.get_sampling_frequency())
    assert sorting.get_num_units() == entry["numTrueUnits"]
    assert recording.get_num_channels() == entry["numChannels"]
