"""The studysets manifest: which recordings exist and where their data live.

A manifest (``studysets.json``) is ``{"StudySets": [study set, ...]}``; a study
set holds studies, a study holds recordings, and each recording names its
recording object and its ground truth by kachery URI.  Manifests written
before 2021 are one study set object without the wrapper, and their
recordings give a ``directory`` (``sha1dir://``) and ``firingsTrue`` instead of
the two URIs; they parse too, with ``legacy=True`` on each recording.

Everything downstream (partition keys, labels, sorting jobs) trusts these
objects, so parsing checks what would otherwise break later: types (a
boolean is not a count), parents and children agreeing on names, names that
are unique where labels need them to be and that can be label parts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sf_assets.core.errors import ManifestError, UriError
from sf_assets.core.fields import (
    REQUIRED,
    Where,
    as_object,
    decode_utf8,
    describe,
    read_float,
    read_int,
    read_list,
    read_object,
    read_str,
)
from sf_assets.core.labels import name_problem, recording_label
from sf_assets.core.uris import parse_uri

MAX_SAMPLE_RATE_HZ = 1e7
MAX_NUM_CHANNELS = 100_000
MAX_DURATION_SEC = 1e7
MAX_NUM_TRUE_UNITS = 1_000_000
SPIKE_SIGNS = (-1, 1)
LEGACY_SPIKE_SIGN = -1
"""Spike sign of a legacy recording that does not say: extracellular spikes are negative."""


@dataclass(frozen=True)
class Recording:
    """One ground-truth recording of the manifest.

    Attributes
    ----------
    name, study_name, study_set_name : str
        The recording and its parents' names.
    sample_rate_hz : float
        Sampling frequency (0 when a legacy manifest does not say).
    num_channels : int
        Channel count (0 when a legacy manifest does not say).
    duration_sec : float
        Length in seconds (0 when a legacy manifest does not say).
    num_true_units : int
        Units in the ground truth (0 when a legacy manifest does not say).
    spike_sign : int
        -1 or 1: the polarity of the spikes.
    recording_uri : str
        ``sha1://`` URI of the recording object (legacy: its ``sha1dir://`` directory).
    sorting_true_uri : str
        ``sha1://`` URI of the ground-truth object (legacy: the ``firings_true.mda`` URI).
    legacy : bool
        True for recordings of a pre-2021 manifest.
    """

    name: str
    study_name: str
    study_set_name: str
    sample_rate_hz: float
    num_channels: int
    duration_sec: float
    num_true_units: int
    spike_sign: int
    recording_uri: str
    sorting_true_uri: str
    legacy: bool

    @property
    def label(self) -> str:
        """``STUDY/RECORDING``."""
        return recording_label(self.study_name, self.name)


@dataclass(frozen=True)
class Study:
    """A study: recordings made the same way, within one study set."""

    name: str
    study_set_name: str
    recordings: tuple[Recording, ...]


@dataclass(frozen=True)
class StudySet:
    """A study set: studies from one contributor, with its description."""

    name: str
    info: dict
    description: str
    studies: tuple[Study, ...]
    self_reference: str | None


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.

    Attributes
    ----------
    source : str
        The file or URI it was read from, as the user named it.
    study_sets : tuple[StudySet, ...]
        In manifest order.
    """

    source: str
    study_sets: tuple[StudySet, ...]

    def studies(self) -> tuple[Study, ...]:
        """All studies, in manifest order.

        Returns
        -------
        tuple[Study, ...]
            Every study of every study set.
        """
        return tuple(study for study_set in self.study_sets for study in study_set.studies)

    def recordings(self) -> tuple[Recording, ...]:
        """All recordings, in manifest order.

        Returns
        -------
        tuple[Recording, ...]
            Every recording of every study.
        """
        return tuple(rec for study in self.studies() for rec in study.recordings)

    def study_set(self, name: str) -> StudySet:
        """The study set called ``name``.

        Parameters
        ----------
        name : str
            The study set's name.

        Returns
        -------
        StudySet
            The study set.

        Raises
        ------
        ManifestError
            Naming the manifest and the study sets it has.
        """
        for study_set in self.study_sets:
            if study_set.name == name:
                return study_set
        known = ", ".join(s.name for s in self.study_sets)
        raise ManifestError(f"{self.source}: no study set {name!r}; it has: {known}")

    @cached_property
    def _recordings_by_label(self) -> dict[str, Recording]:
        return {rec.label: rec for rec in self.recordings()}

    def recording_by_label(self, label: str) -> Recording:
        """The recording labelled ``STUDY/RECORDING``.

        Parameters
        ----------
        label : str
            ``STUDY/RECORDING``.

        Returns
        -------
        Recording
            The recording.

        Raises
        ------
        ManifestError
            When the manifest has no such recording.
        """
        try:
            return self._recordings_by_label[label]
        except KeyError:
            raise ManifestError(f"{self.source}: no recording labelled {label!r}") from None


def parse_manifest(raw: bytes | str, source: str) -> Manifest:
    """Parse and check a manifest.

    Parameters
    ----------
    raw : bytes | str
        The file's content (bytes must be UTF-8).
    source : str
        The file or URI, as the user named it: every message starts with it.

    Returns
    -------
    Manifest
        A document with the ``StudySets`` wrapper is read in the current
        schema; a single study set object is read as a pre-2021 manifest.

    Raises
    ------
    ManifestError
        Naming ``source``, the JSON path and what was expected.
    """
    document = _load_json(decode_utf8(raw, source, ManifestError), source)
    root = Where(source, "", ManifestError)
    _object(document, root)
    parser = _Parser()
    if "StudySets" in document:
        entries, where = read_list(document, "StudySets", root)
        study_sets = tuple(parser.study_set(entry, where.item(i)) for i, entry in enumerate(entries))
    elif "studies" in document:
        parser.legacy = True
        study_sets = (parser.study_set(document, root),)
    else:
        root.fail("expected an object with key 'StudySets' (or, in a pre-2021 manifest, 'name' and 'studies')")
    return Manifest(source, study_sets)


class _DuplicateKeys(dict):
    """A JSON object that named some key twice; reported where it is read."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = _DuplicateKeys(obj)
    marked.duplicates = tuple(k for k, _ in pairs if k in seen or seen.add(k))
    return marked


def _load_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_object_pairs)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ManifestError(f"{source}: invalid JSON: nested too deeply") from None
    except ValueError as exc:
        # int() refuses numbers with thousands of digits; its advice is for programmers.
        raise ManifestError(f"{source}: invalid JSON: {str(exc).split(';')[0]}") from None


def _object(value: Any, where: Where) -> dict:
    obj = as_object(value, where)
    if isinstance(obj, _DuplicateKeys):
        where.fail(f"key {obj.duplicates[0]!r} appears more than once")
    return obj


def _name(obj: dict, key: str, where: Where) -> str:
    """A name that can be part of a label (see :func:`sf_assets.core.labels.name_problem`)."""
    name = read_str(obj, key, where)
    problem = name_problem(name)
    if problem is not None:
        where.key(key).fail(
            f"expected a non-empty name without '/' or control characters, other than '.' and '..', "
            f"got {describe(name)}, which {problem}"
        )
    return name


def _uri(obj: dict, key: str, where: Where, schemes: tuple[str, ...]) -> str:
    """A kachery URI with one of ``schemes``: manifests never point at local files."""
    text = read_str(obj, key, where)
    here = where.key(key)
    if not text.startswith(tuple(f"{scheme}://" for scheme in schemes)):
        here.expected(" or ".join(f"a {scheme}:// URI" for scheme in schemes), text)
    try:
        parse_uri(text)
    except UriError as exc:
        here.fail(str(exc))
    return text


class _Parser:
    """Walks one manifest, remembering names that must be unique across it."""

    def __init__(self) -> None:
        self.legacy = False
        self.study_set_paths: dict[str, str] = {}
        self.study_paths: dict[str, str] = {}

    def _unique(self, seen: dict[str, str], name: str, where: Where, what: str) -> None:
        if name in seen:
            where.fail(f"duplicate {what} name {name!r} (first at {seen[name]}); expected unique names")
        seen[name] = where.path

    def _parent_name(
        self, obj: dict, key: str, where: Where, expected: str, parent: str, legacy_may_omit: bool = True
    ) -> None:
        """A child's copy of its parent's name (``studyName``, ``studySetName``) must agree.

        A legacy manifest may leave ``studySetName`` out: the parent's name is used.
        """
        name = read_str(obj, key, where, expected if self.legacy and legacy_may_omit else REQUIRED)
        if name != expected:
            where.key(key).fail(f"expected {expected!r} (the name of the enclosing {parent}), got {describe(name)}")

    def study_set(self, value: Any, where: Where) -> StudySet:
        obj = _object(value, where)
        name = _name(obj, "name", where)
        self._unique(self.study_set_paths, name, where.key("name"), "study set")
        has_reference = obj.get("self_reference") is not None
        self_reference = _uri(obj, "self_reference", where, ("sha1",)) if has_reference else None
        info = read_object(obj, "info", where, {})
        description = read_str(obj, "description", where, "")
        entries, studies_where = read_list(obj, "studies", where)
        studies = tuple(self.study(entry, studies_where.item(i), name) for i, entry in enumerate(entries))
        return StudySet(name, info, description, studies, self_reference)

    def study(self, value: Any, where: Where, study_set_name: str) -> Study:
        obj = _object(value, where)
        name = _name(obj, "name", where)
        self._unique(self.study_paths, name, where.key("name"), "study")
        self._parent_name(obj, "studySetName", where, study_set_name, "study set")
        entries, recordings_where = read_list(obj, "recordings", where)
        recording_paths: dict[str, str] = {}
        recordings = []
        for i, entry in enumerate(entries):
            recording = self.recording(entry, recordings_where.item(i), name, study_set_name)
            self._unique(recording_paths, recording.name, recordings_where.item(i).key("name"), "recording")
            recordings.append(recording)
        return Study(name, study_set_name, tuple(recordings))

    def recording(self, value: Any, where: Where, study_name: str, study_set_name: str) -> Recording:
        obj = _object(value, where)
        name = _name(obj, "name", where)
        self._parent_name(obj, "studyName", where, study_name, "study", legacy_may_omit=False)
        self._parent_name(obj, "studySetName", where, study_set_name, "study set")
        if self.legacy:
            # Counts a legacy manifest leaves out read as 0 ("unknown").
            count, number, sign = 0, 0.0, LEGACY_SPIKE_SIGN
            uri_keys, schemes = ("directory", "firingsTrue"), ("sha1dir", "sha1")
        else:
            count = number = sign = REQUIRED
            uri_keys, schemes = ("recordingUri", "sortingTrueUri"), ("sha1",)
        spike_sign = read_int(obj, "spikeSign", where, -1, 1, sign)
        if spike_sign not in SPIKE_SIGNS:
            where.key("spikeSign").expected("-1 or 1", spike_sign)
        return Recording(
            name=name,
            study_name=study_name,
            study_set_name=study_set_name,
            sample_rate_hz=read_float(obj, "sampleRateHz", where, 0, MAX_SAMPLE_RATE_HZ, number, above_minimum=True),
            num_channels=read_int(obj, "numChannels", where, 1, MAX_NUM_CHANNELS, count),
            duration_sec=read_float(obj, "durationSec", where, 0, MAX_DURATION_SEC, number, above_minimum=True),
            num_true_units=read_int(obj, "numTrueUnits", where, 0, MAX_NUM_TRUE_UNITS, count),
            spike_sign=spike_sign,
            recording_uri=_uri(obj, uri_keys[0], where, schemes),
            sorting_true_uri=_uri(obj, uri_keys[1], where, schemes),
            legacy=self.legacy,
        )
