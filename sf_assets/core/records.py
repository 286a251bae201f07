"""Sorting records: the JSON list ``run_sortings.py`` wrote, one entry per sort.

Old SpikeForest tools (``prepare_workspace.py`` and the website scripts) read
this file, so its twelve camelCase keys and their meaning are kept exactly:

====================  =======================================================
``recordingName``     the recording's name within its study
``studyName``         the study's name
``sorterName``        the sorter, as the spec names it
``sortingParameters`` the params given to the sorter
``consoleOutUri``     kachery URI of the sorter's console output, or null
``cpuTimeSec``        seconds the sort took, or null
``errored``           whether the sort failed
``startTime``         when the sort started (epoch seconds), or null
``endTime``           when it finished (epoch seconds), or null
``sortingOutput``     ``{"sorting_format": ..., "data": {...}}``, or null
``recordingUri``      kachery URI of the recording object
``groundTruthUri``    kachery URI of the ground-truth object
====================  =======================================================

sf-assets adds a thirteenth key, after those twelve, which old tools ignore:

====================  =======================================================
``provenance``        what the sort ran with, or null (a sort that never
                      started, or a record written before sf-assets kept it):
                      ``seeds`` (each seed parameter and its value),
                      ``unseeded_draws_seed`` (what the worker seeded the
                      sorter's unseeded random draws with; null in a
                      container),
                      ``threads`` (the thread count applied, what numba and
                      each native thread pool actually ran with, and the
                      thread variables), ``versions`` (spikeinterface, numpy,
                      numba, the sorter's package and spikeinterface's version
                      of the sorter, python), ``container_image`` and
                      ``container_image_digest`` (null when none or unknown)
====================  =======================================================

A file without ``provenance`` (one ``run_sortings.py`` wrote) reads as null.

The schema lives only here: :class:`SortingRecord` is the typed form,
:meth:`SortingRecord.to_json_dict` / :meth:`SortingRecord.from_json_dict` the
two directions, :func:`write_records` / :func:`read_records` the file.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sf_assets.core.errors import RecordError
from sf_assets.core.fields import Where, as_list, as_object, decode_utf8, read_bool, read_float, read_object, read_str

_MAX_EPOCH_S = 1e11
"""Year 5138: larger times are a unit mistake (milliseconds), not a date."""
_MAX_CPU_TIME_S = 1e9


@dataclass(frozen=True)
class SortingRecord:
    """One sort's outcome, in the shape of a ``run_sortings.py`` record.

    Attributes
    ----------
    recording_name, study_name, sorter_name : str
        Which sort this is.
    sorting_parameters : dict
        The params given to the sorter.
    console_out_uri : str | None
        Kachery URI of the console output.
    cpu_time_sec : float | None
        Seconds the sort took.
    errored : bool
        Whether the sort failed.
    start_time, end_time : float | None
        Epoch seconds.
    sorting_output : dict | None
        ``{"sorting_format": "mda", "data": {"sorting_object_uri": ...}}``.
    recording_uri, ground_truth_uri : str
        Kachery URIs of the recording object and the ground-truth object.
    provenance : dict | None
        Seeds, threads, library versions and container image of the sort
        (see the module's table), or None.
    """

    recording_name: str
    study_name: str
    sorter_name: str
    sorting_parameters: dict
    console_out_uri: str | None
    cpu_time_sec: float | None
    errored: bool
    start_time: float | None
    end_time: float | None
    sorting_output: dict | None
    recording_uri: str
    ground_truth_uri: str
    provenance: dict | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The record's twelve camelCase keys, in the order the old tools wrote them, then ``provenance``.

        Returns
        -------
        dict[str, Any]
            What ``run_sortings.py`` wrote, so that old tools read it.
        """
        return {
            "recordingName": self.recording_name,
            "studyName": self.study_name,
            "sorterName": self.sorter_name,
            "sortingParameters": self.sorting_parameters,
            "consoleOutUri": self.console_out_uri,
            "cpuTimeSec": self.cpu_time_sec,
            "errored": self.errored,
            "startTime": self.start_time,
            "endTime": self.end_time,
            "sortingOutput": self.sorting_output,
            "recordingUri": self.recording_uri,
            "groundTruthUri": self.ground_truth_uri,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json_dict(cls, d: Any, where: str) -> SortingRecord:
        """Read one record, checking every key's type.

        Parameters
        ----------
        d : Any
            A parsed JSON object.
        where : str
            Where it came from (``"records.json[3]"``), the start of any message.

        Returns
        -------
        SortingRecord
            The record.

        Raises
        ------
        RecordError
            For a missing key or a value of the wrong type.
        """
        return _record(d, Where(where, "", RecordError))


def _record(value: Any, where: Where) -> SortingRecord:
    obj = as_object(value, where)
    sorting_output = read_object(obj, "sortingOutput", where, nullable=True)
    if sorting_output is not None:
        read_str(sorting_output, "sorting_format", where.key("sortingOutput"))
        read_object(sorting_output, "data", where.key("sortingOutput"))
    return SortingRecord(
        recording_name=read_str(obj, "recordingName", where),
        study_name=read_str(obj, "studyName", where),
        sorter_name=read_str(obj, "sorterName", where),
        sorting_parameters=read_object(obj, "sortingParameters", where),
        console_out_uri=read_str(obj, "consoleOutUri", where, nullable=True),
        cpu_time_sec=read_float(obj, "cpuTimeSec", where, 0, _MAX_CPU_TIME_S, nullable=True),
        errored=read_bool(obj, "errored", where),
        start_time=read_float(obj, "startTime", where, 0, _MAX_EPOCH_S, nullable=True),
        end_time=read_float(obj, "endTime", where, 0, _MAX_EPOCH_S, nullable=True),
        sorting_output=sorting_output,
        recording_uri=read_str(obj, "recordingUri", where),
        ground_truth_uri=read_str(obj, "groundTruthUri", where),
        provenance=read_object(obj, "provenance", where, None, nullable=True),
    )


def read_records(raw: bytes | str, source: str) -> list[SortingRecord]:
    """Parse a sorting-records file: a JSON list of records.

    Parameters
    ----------
    raw : bytes or str
        The file's content (bytes must be UTF-8).
    source : str
        The file or URI as the user named it.

    Returns
    -------
    list[SortingRecord]
        The records, in the file's order.

    Raises
    ------
    RecordError
        Naming ``source``, the record's index and key, and what was expected.
    """
    text = decode_utf8(raw, source, RecordError)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"{source}: invalid JSON: {str(exc).split(';')[0]}") from None
    root = Where(source, "", RecordError)
    return [_record(item, root.item(index)) for index, item in enumerate(as_list(document, root))]


def write_records(path: str | Path, records: Iterable[SortingRecord]) -> None:
    """Write records as a JSON list; never overwrite a file.

    The text is written to a temporary file beside ``path`` and then linked
    to ``path``: a link fails if ``path`` exists, even if it appeared a moment
    ago, and a reader never sees half a file.  ``/dev/null`` is accepted (as
    ``run_sortings.py -o /dev/null`` was, to run without keeping records).

    Parameters
    ----------
    path : str or Path
        The file to create.
    records : Iterable[SortingRecord]
        The records, in the order to write them.

    Raises
    ------
    RecordError
        ``path`` exists, its folder does not, or a record holds a value JSON
        cannot write (NaN, a non-string key).
    """
    path = Path(path)
    try:
        text = json.dumps([record.to_json_dict() for record in records], indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise RecordError(f"{path}: cannot write the records as JSON: {exc}") from None
    if path == Path(os.devnull):
        with open(os.devnull, "w", encoding="utf-8") as sink:
            sink.write(text)
        return
    if path.exists() or path.is_symlink():
        raise RecordError(f"{path}: already exists; expected a new file name (records are never overwritten)")
    if not path.parent.is_dir():
        raise RecordError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the records from other users
        with os.fdopen(fd, "w", encoding="utf-8") as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.link(tmp_name, path)
    except FileExistsError:
        raise RecordError(f"{path}: already exists; expected a new file name (records are never overwritten)") from None
    except OSError as exc:
        raise RecordError(f"{path}: cannot write: {exc.strerror or exc}") from None
    finally:
        os.unlink(tmp_name)
