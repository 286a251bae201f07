"""Recordings and sortings in the SpikeForest formats, read from and written to kachery.

SpikeForest describes each piece of data by a small JSON object in kachery:

* a **recording object** ``{"raw": "sha1://.../raw.mda", "params": {"samplerate",
  "spike_sign", "scale_factor", ...}, "geom": [[x, y], ...]}``;
* a **sorting object** ``{"firings": "sha1://.../firings.mda"}``, the format of
  ground truth (``firings_true.mda``) and of the sortings sf-assets stores,
  which add ``"samplerate"`` and ``"unit_ids"``.

Only these formats are read, through spikeinterface's MDA extractors: nothing a
manifest names is ever imported or unpickled.  Every object is validated
before use, and every error names the URI and the key at fault.

A loaded recording is an ``MdaRecordingExtractor`` over a folder under the
store root (``raw.mda`` linked to the verified kachery file, ``params.json``,
``geom.csv``), so it is JSON-serialisable: ``run_sorter`` in a child process
can dump and reload it.  Its probe comes from ``geom``, and its channel
gains from ``params.scale_factor`` (microvolts per raw unit); both survive the
JSON dump.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
from spikeinterface.core import BaseRecording, BaseSorting
from spikeinterface.extractors.mdaextractors import (
    MdaRecordingExtractor,
    MdaSortingExtractor,
    writemda64,
)

from sf_assets.core.errors import RecordingError, UriError
from sf_assets.core.uris import is_kachery_uri, parse_uri
from sf_assets.stores.kachery import KacheryStore

RAW_LABEL = "raw.mda"
FIRINGS_TRUE_LABEL = "firings_true.mda"
FIRINGS_LABEL = "firings.mda"

_MDA_DTYPES = {
    -2: np.dtype("uint8"),
    -3: np.dtype("float32"),
    -4: np.dtype("int16"),
    -5: np.dtype("int32"),
    -6: np.dtype("uint16"),
    -7: np.dtype("float64"),
    -8: np.dtype("uint32"),
}
"""MDA data-type codes (the header's first int32) and their little-endian dtypes."""


# --------------------------------------------------------------------- MDA


@dataclass(frozen=True)
class MdaHeader:
    """The header of an MDA file: element type, dimensions, and header size in bytes."""

    dtype: np.dtype
    dims: tuple[int, ...]
    header_size: int


def read_mda_header(path: Path, uri: str) -> MdaHeader:
    """Read and check an MDA header, including that the file holds all its data.

    Parameters
    ----------
    path : Path
        The local file.
    uri : str
        The URI the file was loaded from, for error messages.

    Raises
    ------
    RecordingError
        A short or malformed header, an unknown type code, or a file shorter
        or longer than the header promises (a truncated download).
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            raise RecordingError(f"{uri}: not an MDA file: {size} bytes, shorter than an MDA header")
        dt_code, bytes_per_entry, num_dims = struct.unpack("<iii", head)
        wide = num_dims < 0
        num_dims = abs(num_dims)
        dtype = _MDA_DTYPES.get(dt_code)
        if dtype is None or bytes_per_entry != dtype.itemsize or not 1 <= num_dims <= 6:
            raise RecordingError(
                f"{uri}: not an MDA file: header (type code {dt_code}, {bytes_per_entry} bytes per "
                f"entry, {num_dims} dimensions) is not a valid MDA header"
            )
        dim_format = "<q" if wide else "<i"
        dim_bytes = struct.calcsize(dim_format)
        raw_dims = f.read(num_dims * dim_bytes)
    if len(raw_dims) < num_dims * dim_bytes:
        raise RecordingError(f"{uri}: MDA header is truncated ({size} bytes in all)")
    dims = tuple(struct.unpack(dim_format, raw_dims[i * dim_bytes : (i + 1) * dim_bytes])[0] for i in range(num_dims))
    if any(d < 0 for d in dims):
        raise RecordingError(f"{uri}: MDA header has negative dimensions {dims}")
    header_size = 12 + num_dims * dim_bytes
    expected = header_size + math.prod(dims) * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise RecordingError(
            f"{uri}: MDA file is {state}: dimensions {dims} of {dtype.name} need {expected} bytes, "
            f"the file has {size}"
        )
    return MdaHeader(dtype=dtype, dims=dims, header_size=header_size)


# --------------------------------------------------------------- recordings


def load_recording(recording_uri: str, store: KacheryStore) -> BaseRecording:
    """Load a SpikeForest recording object as a spikeinterface recording.

    Parameters
    ----------
    recording_uri : str
        ``sha1://`` URI of the recording object JSON.
    store : KacheryStore
        Where the object and its ``raw`` MDA file are.

    Returns
    -------
    BaseRecording
        An ``MdaRecordingExtractor`` (one segment, channel ids 0..M-1) with the
        probe built from ``geom``; JSON-serialisable.

    Raises
    ------
    RecordingError
        The object or its MDA file is malformed; the message names the URI and key.
    UriError
        The object or its MDA file is missing from the store or corrupt.
    """
    obj = _load_object(recording_uri, store, "recording object")
    raw_uri = _required(obj, "raw", str, recording_uri)
    params = _required(obj, "params", dict, recording_uri)
    geom = _geom(obj, recording_uri)
    samplerate = _required(params, "samplerate", Real, recording_uri, "params.samplerate")
    if not (math.isfinite(samplerate) and samplerate > 0):
        raise RecordingError(f"{recording_uri}: params.samplerate: expected a positive number of Hz, got {samplerate}")
    if "spike_sign" in params and params["spike_sign"] not in (-1, 1):
        raise RecordingError(f"{recording_uri}: params.spike_sign: expected -1 or 1, got {params['spike_sign']!r}")
    if "scale_factor" in params:
        scale = params["scale_factor"]
        if isinstance(scale, bool) or not isinstance(scale, Real) or not scale > 0:
            raise RecordingError(f"{recording_uri}: params.scale_factor: expected a positive number, got {scale!r}")
    _check_kachery_uri(raw_uri, recording_uri, "raw")

    raw_path = store.load_file(raw_uri)
    header = read_mda_header(raw_path, raw_uri)
    if len(header.dims) != 2:
        raise RecordingError(
            f"{recording_uri}: raw: expected a 2-D MDA (channels x samples), {raw_uri} has dimensions {header.dims}"
        )
    num_channels, num_samples = header.dims
    if len(geom) != num_channels:
        raise RecordingError(
            f"{recording_uri}: geom: {len(geom)} channel positions, but raw {raw_uri} has {num_channels} channels"
        )
    if num_samples == 0:
        raise RecordingError(f"{recording_uri}: raw: {raw_uri} holds no samples")

    folder = _mda_folder(store, parse_uri(recording_uri).sha1, raw_path, params, geom)
    try:
        recording = MdaRecordingExtractor(folder)
    except Exception as exc:
        raise RecordingError(f"{recording_uri}: spikeinterface cannot read the MDA folder {folder}: {exc}") from exc
    recording.set_channel_gains(float(params.get("scale_factor", 1.0)))
    recording.set_channel_offsets(0.0)
    return recording


def store_recording(
    recording: BaseRecording,
    store: KacheryStore,
    name: str,
    *,
    spike_sign: int = -1,
    scale_factor: float = 1.0,
) -> str:
    """Store a recording as ``raw.mda`` plus a SpikeForest recording object.

    Parameters
    ----------
    recording : BaseRecording
        One segment; its channel locations become ``geom``.
    store : KacheryStore
    name : str
        The object's file name hint: the object is stored as ``{name}.json``.
    spike_sign : int, default: -1
        The sign of the spikes' peaks, recorded in ``params``.
    scale_factor : float, default: 1.0
        Microvolts per raw unit, recorded in ``params``.

    Returns
    -------
    str
        The URI of the recording object, to use as a manifest's ``recordingUri``.
    """
    if recording.get_num_segments() != 1:
        raise RecordingError(f"recording {name!r}: expected one segment, got {recording.get_num_segments()}")
    with tempfile.TemporaryDirectory(dir=store.cache_dir("tmp")) as tmp:
        raw_path = Path(tmp) / RAW_LABEL
        _write_raw_mda(recording, raw_path)
        raw_uri = store.store_file(raw_path, RAW_LABEL)
    geom = [[float(v) for v in location[:2]] for location in recording.get_channel_locations()]
    obj = {
        "raw": raw_uri,
        "params": {
            "samplerate": _json_number(recording.get_sampling_frequency()),
            "spike_sign": int(spike_sign),
            "scale_factor": _json_number(scale_factor),
        },
        "geom": geom,
    }
    return store.store_json(obj, f"{name}.json")


def _write_raw_mda(recording: BaseRecording, path: Path, chunk_s: float = 10.0) -> None:
    """Write traces as an MDA of channels x samples, in the recording's dtype, chunk by chunk.

    MDA is column-major, so an (M channels x N samples) array is, byte for
    byte, the row-major (N x M) trace array spikeinterface returns.
    """
    dtype = np.dtype(recording.get_dtype())
    code = {v: k for k, v in _MDA_DTYPES.items()}.get(dtype)
    if code is None:
        supported = sorted(d.name for d in _MDA_DTYPES.values())
        raise RecordingError(f"cannot write {dtype} traces to MDA {path}; supported: {supported}")
    num_channels, num_samples = recording.get_num_channels(), recording.get_num_samples(0)
    chunk = max(1, int(chunk_s * recording.get_sampling_frequency()))
    with open(path, "wb") as f:
        f.write(struct.pack("<iiiii", code, dtype.itemsize, 2, num_channels, num_samples))
        for start in range(0, num_samples, chunk):
            traces = recording.get_traces(segment_index=0, start_frame=start, end_frame=min(start + chunk, num_samples))
            f.write(np.ascontiguousarray(traces, dtype=dtype.newbyteorder("<")).tobytes())


def _mda_folder(store: KacheryStore, object_sha1: str, raw_path: Path, params: dict, geom: list) -> Path:
    """The MDA folder the extractor reads, built once per recording object.

    Keyed by the object's sha1, so an existing folder always has the right
    content; built in a temporary folder and renamed, so a crash or a
    concurrent loader never leaves a half-built one.
    """
    parent = store.cache_dir("mda_recordings")
    folder = parent / object_sha1
    if (folder / RAW_LABEL).resolve() == raw_path.resolve() and (folder / "geom.csv").is_file():
        return folder
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{object_sha1}-"))
    try:
        os.symlink(raw_path, tmp / RAW_LABEL)
        (tmp / "params.json").write_text(json.dumps(params, indent=4) + "\n")
        np.savetxt(tmp / "geom.csv", np.asarray(geom, dtype=float), delimiter=",")
        if folder.exists():
            # A folder from an older store layout or a moved store: replace it.
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "geom.csv").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _geom(obj: dict, uri: str) -> list[list[float]]:
    geom = _required(obj, "geom", list, uri)
    if not geom:
        raise RecordingError(f"{uri}: geom: expected one [x, y] per channel, got an empty list")
    for i, position in enumerate(geom):
        if (
            not isinstance(position, list)
            or len(position) != 2
            or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in position)
        ):
            raise RecordingError(f"{uri}: geom[{i}]: expected [x, y] as two finite numbers, got {position!r}")
    return geom


# ----------------------------------------------------------------- sortings


def load_sorting_object(sorting_object_uri: str, store: KacheryStore, sampling_frequency: float) -> BaseSorting:
    """Load a sorting object (ground truth or a stored sorting) as a spikeinterface sorting.

    Parameters
    ----------
    sorting_object_uri : str
        ``sha1://`` URI of ``{"firings": uri}``, optionally with ``"samplerate"``
        (Hz, must agree with ``sampling_frequency``) and ``"unit_ids"``
        (see :func:`store_sorting`).
    store : KacheryStore
    sampling_frequency : float
        Of the recording the sorting belongs to, in Hz (the MDA firings hold
        sample indices only).

    Returns
    -------
    BaseSorting
        One segment; unit ids are the MDA labels, or the stored ``unit_ids``.
        Units without spikes are absent (MDA firings cannot hold them).
    """
    uri = sorting_object_uri
    obj = _load_object(uri, store, "sorting object")
    firings_uri = _required(obj, "firings", str, uri)
    _check_kachery_uri(firings_uri, uri, "firings")
    if "samplerate" in obj:
        stored_rate = _required(obj, "samplerate", Real, uri)
        if not math.isclose(stored_rate, sampling_frequency, rel_tol=1e-9):
            raise RecordingError(
                f"{uri}: samplerate: the sorting was stored at {stored_rate} Hz, "
                f"but the recording is sampled at {sampling_frequency} Hz"
            )
    firings_path = store.load_file(firings_uri)
    header = read_mda_header(firings_path, firings_uri)
    if len(header.dims) != 2 or header.dims[0] < 3:
        raise RecordingError(
            f"{uri}: firings: expected a 2-D MDA with at least 3 rows (channel, time, label), "
            f"{firings_uri} has dimensions {header.dims}"
        )
    firings = np.fromfile(firings_path, dtype=header.dtype, offset=header.header_size).reshape(header.dims, order="F")
    labels = firings[2]
    if labels.size and not np.array_equal(labels, np.round(labels)):
        raise RecordingError(f"{uri}: firings: unit labels (row 3 of {firings_uri}) must be integers")
    if labels.size and np.any(firings[1] < 0):
        raise RecordingError(f"{uri}: firings: spike times (row 2 of {firings_uri}) must not be negative")
    sorting = MdaSortingExtractor(firings_path, sampling_frequency=float(sampling_frequency))
    if "unit_ids" not in obj:
        return sorting
    unit_ids = _required(obj, "unit_ids", list, uri)
    return _restore_unit_ids(sorting, unit_ids, uri)


def store_sorting(sorting: BaseSorting, store: KacheryStore, label: str) -> str:
    """Store a sorting as MDA firings plus a sorting object; returns the object's URI.

    The object is ``{"firings": uri, "samplerate": Hz, "unit_ids": [...]}``.
    MDA labels are positive integers: when every unit id already is one, the
    labels are the ids; otherwise unit ``unit_ids[i]`` gets label ``i + 1``.
    :func:`load_sorting_object` undoes the mapping.  Units without spikes
    cannot be written to MDA firings and are lost.

    Parameters
    ----------
    sorting : BaseSorting
        One segment.
    store : KacheryStore
    label : str
        A name for the sorting, e.g. ``SORTER/STUDY/RECORDING``: the object is
        stored as ``{label}.sorting.json``.
    """
    unit_ids = [_json_unit_id(u) for u in sorting.unit_ids]
    firings_uri = _store_firings(sorting, store, FIRINGS_LABEL, identity=_labels_are_ids(unit_ids), what=label)
    obj = {
        "firings": firings_uri,
        "samplerate": _json_number(sorting.get_sampling_frequency()),
        "unit_ids": unit_ids,
    }
    return store.store_json(obj, f"{label}.sorting.json")


def store_ground_truth(sorting: BaseSorting, store: KacheryStore, name: str) -> str:
    """Store a ground-truth sorting exactly as SpikeForest does: ``{"firings": uri}``.

    Units get labels ``1..N`` in the sorting's unit order; the object is
    stored as ``{name}.firings_true.json``.  Returns its URI (a manifest's
    ``sortingTrueUri``).
    """
    firings_uri = _store_firings(sorting, store, FIRINGS_TRUE_LABEL, identity=False, what=name)
    return store.store_json({"firings": firings_uri}, f"{name}.firings_true.json")


def _store_firings(sorting: BaseSorting, store: KacheryStore, file_label: str, *, identity: bool, what: str) -> str:
    """Write a sorting's spikes as a 3 x L float64 MDA (channel 0, time, label) and store it."""
    if sorting.get_num_segments() != 1:
        raise RecordingError(f"sorting {what!r}: expected one segment, got {sorting.get_num_segments()}")
    # The spike vector avoids the per-unit path, which compiles numba code on first use.
    spikes = sorting.to_spike_vector()
    if identity:
        label_of_unit = np.asarray([int(u) for u in sorting.unit_ids], dtype=np.int64)
    else:
        label_of_unit = np.arange(1, sorting.get_num_units() + 1, dtype=np.int64)
    all_times = spikes["sample_index"].astype(np.int64)
    all_labels = label_of_unit[spikes["unit_index"]] if spikes.size else np.zeros(0, dtype=np.int64)
    order = np.lexsort((all_labels, all_times))
    firings = np.zeros((3, all_times.size), dtype=np.float64)
    firings[1] = all_times[order]
    firings[2] = all_labels[order]
    with tempfile.TemporaryDirectory(dir=store.cache_dir("tmp")) as tmp:
        path = Path(tmp) / file_label
        if not writemda64(firings, str(path)):
            raise RecordingError(f"sorting {what!r}: could not write MDA firings to {path}")
        return store.store_file(path, file_label)


def _labels_are_ids(unit_ids: list) -> bool:
    return bool(unit_ids) and all(isinstance(u, int) and u > 0 for u in unit_ids)


def _restore_unit_ids(sorting: BaseSorting, unit_ids: list, uri: str) -> BaseSorting:
    for i, unit_id in enumerate(unit_ids):
        if isinstance(unit_id, bool) or not isinstance(unit_id, (int, str)):
            raise RecordingError(f"{uri}: unit_ids[{i}]: expected an integer or a string, got {unit_id!r}")
    if len(set(unit_ids)) != len(unit_ids):
        raise RecordingError(f"{uri}: unit_ids: expected distinct ids, got {unit_ids!r}")
    if _labels_are_ids(unit_ids):
        allowed = set(unit_ids)
        extra = [int(u) for u in sorting.unit_ids if int(u) not in allowed]
        if extra:
            raise RecordingError(f"{uri}: firings hold labels {extra} missing from unit_ids {unit_ids}")
        return sorting
    labels = [int(u) for u in sorting.unit_ids]
    bad = [label for label in labels if not 1 <= label <= len(unit_ids)]
    if bad:
        raise RecordingError(f"{uri}: firings hold labels {bad} outside 1..{len(unit_ids)} (the unit_ids list)")
    return sorting.select_units(sorting.unit_ids, renamed_unit_ids=[unit_ids[label - 1] for label in labels])


# ------------------------------------------------------------------ helpers


def _load_object(uri: str, store: KacheryStore, what: str) -> dict:
    _check_kachery_uri(uri, uri, what)
    obj = store.load_json(uri)
    if not isinstance(obj, dict):
        raise RecordingError(f"{uri}: expected a {what} (a JSON object), got {type(obj).__name__}")
    return obj


def _check_kachery_uri(text: str, uri: str, key: str) -> None:
    if not is_kachery_uri(text):
        raise RecordingError(f"{uri}: {key}: expected a sha1:// URI, got {text!r}")
    try:
        parse_uri(text, f"{uri}: {key}")
    except UriError as exc:
        raise RecordingError(str(exc)) from exc
    if text.startswith("sha1dir://"):
        raise RecordingError(
            f"{uri}: {key}: {text} is a sha1dir:// directory from the pre-2021 kachery, "
            "which kachery-cloud cannot fetch; use a manifest in the current schema"
        )


def _required(obj: dict, key: str, kind: type, uri: str, path: str | None = None) -> Any:
    path = path or key
    if key not in obj:
        raise RecordingError(f"{uri}: missing key {path!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = {str: "a string", dict: "an object", list: "a list", Real: "a number"}.get(kind, kind.__name__)
        raise RecordingError(f"{uri}: {path}: expected {expected}, got {value!r:.80}")
    return value


def _json_number(value: float) -> int | float:
    """Whole numbers as JSON integers (``30000``, as SpikeForest writes them)."""
    value = float(value)
    return int(value) if value.is_integer() else value


def _json_unit_id(unit_id: Any) -> int | str:
    if isinstance(unit_id, (Integral, np.integer)) and not isinstance(unit_id, bool):
        return int(unit_id)
    return str(unit_id)
