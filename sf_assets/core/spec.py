"""The sorter spec (``spec.yaml``): which sorters run, with which params, on which study sets.

The file has three keys::

    studysets: sha1://.../studysets.json    # the manifest, when none is given on the command line
    studyset-names: [PAIRED_KAMPFF, ...]    # the study sets this spec may use
    spike-sorters:
      - name: MountainSort4                 # a name (or alias) from the sorter catalog
        params: {}                          # over the sorter's defaults
        studysets: [PAIRED_KAMPFF]          # declared above

SpikeForest's own files spell the keys with underscores (``studyset_names``,
``spike_sorters``); both spellings are read, but one file may not use both
for the same key.  :func:`parse_spec` checks the file on its own;
:func:`validate_spec` checks it against a manifest and the sorter catalog.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from sf_assets.core.errors import SpecError, UnknownSorterError, UriError
from sf_assets.core.fields import (
    REQUIRED,
    Where,
    as_list,
    as_object,
    as_str,
    check_json_compatible,
    decode_utf8,
    read_list,
)
from sf_assets.core.manifest import Manifest, Recording
from sf_assets.core.sorter_catalog import check_param_values, merge_params, pinned_seeds, resolve_sorter
from sf_assets.core.uris import parse_uri

TOP_LEVEL_KEYS = ("studysets", "studyset-names", "spike-sorters")
"""The keys of a spec, in the spelling used in messages (``-`` may be written ``_``)."""

SORTER_KEYS = ("name", "params", "studysets")


@dataclass(frozen=True)
class SorterSpec:
    """One entry of ``spike-sorters``.

    Attributes
    ----------
    name : str
        The sorter name as the spec writes it (a catalog name or alias).
    params : dict
        The params the spec gives, over the seeds the project pins for this
        sorter (:func:`~sf_assets.core.sorter_catalog.pinned_seeds`), not yet
        merged over the defaults: what the sorter is asked for, what the
        records show and what the job cache hashes.
    studysets : tuple[str, ...]
        The study sets this sorter runs on.
    """

    name: str
    params: dict
    studysets: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    """A parsed spec.

    Attributes
    ----------
    source : str
        The file or URI it was read from, as the user named it.
    studysets_uri : str | None
        The manifest to use when none is given on the command line.
    studyset_names : tuple[str, ...]
        The declared study sets.
    sorters : tuple[SorterSpec, ...]
        In file order.
    """

    source: str
    studysets_uri: str | None
    studyset_names: tuple[str, ...]
    sorters: tuple[SorterSpec, ...]


class _SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags) that also refuses what a spec never needs.

    Plain PyYAML keeps the last of two equal keys silently and expands
    aliases, so ``*a`` chains can blow a few lines up into gigabytes when the
    params are written out as JSON; both are refused with their position.
    """

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in a spec", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise SpecError(f"{source}: invalid YAML{at}: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise SpecError(f"{source}: invalid YAML: nested too deeply") from None
    except ValueError as exc:
        # int() refuses numbers with thousands of digits; its advice is for programmers.
        raise SpecError(f"{source}: invalid YAML: {str(exc).split(';')[0]}") from None


def _top_level(document: dict, root: Where) -> dict[str, tuple[Any, Where]]:
    """The document's keys in their ``-`` spelling, each with its position as written."""
    found: dict[str, tuple[Any, Where]] = {}
    for key, value in document.items():
        canonical = key.replace("_", "-")
        if canonical not in TOP_LEVEL_KEYS:
            root.key(key).fail(f"unknown key; expected one of: {', '.join(TOP_LEVEL_KEYS)} ('-' may be written '_')")
        if canonical in found:
            root.fail(f"key {canonical!r} is given twice, as {found[canonical][1].path!r} and {key!r}; keep one")
        found[canonical] = (value, root.key(key))
    return found


def _names(value: Any, where: Where, what: str) -> tuple[str, ...]:
    """A non-empty list of distinct, non-empty strings."""
    items = as_list(value, where)
    if not items:
        where.fail(f"expected a non-empty list of {what}, got an empty list")
    names: list[str] = []
    for index, item in enumerate(items):
        name = as_str(item, where.item(index))
        if not name:
            where.item(index).expected(f"a {what[:-1]}", name)
        if name in names:
            where.item(index).fail(f"{name!r} is listed twice")
        names.append(name)
    return tuple(names)


def parse_spec(raw: bytes | str, source: str) -> Spec:
    """Parse and check a spec on its own (see :func:`validate_spec` for the rest).

    Checks: YAML that ``yaml.safe_load`` accepts (no Python tags), a mapping
    with only the known keys, each key in one spelling only, study set
    names declared once, sorters with a name, a params mapping of JSON values
    and at least one declared study set, each sorter named once.

    Parameters
    ----------
    raw : bytes | str
        The file's content (bytes must be UTF-8).
    source : str
        The file or URI as the user named it: every message starts with it.

    Returns
    -------
    Spec
        The spec, not yet checked against a manifest.

    Raises
    ------
    SpecError
        Naming ``source``, the key path and what was expected.
    """
    document = _load_yaml(decode_utf8(raw, source, SpecError), source)
    root = Where(source, "", SpecError)
    if document is None:
        root.fail("expected a mapping with keys studysets, studyset-names, spike-sorters; the file is empty")
    as_object(document, root)
    found = _top_level(document, root)

    studysets_uri = None
    if "studysets" in found:
        value, where = found["studysets"]
        studysets_uri = as_str(value, where)
        try:
            parse_uri(studysets_uri)
        except UriError as exc:
            where.fail(str(exc))

    if "studyset-names" not in found:
        root.key("studyset-names").fail("missing key; expected the list of study sets this spec uses")
    declared = _names(*found["studyset-names"], "study set names")

    if "spike-sorters" not in found:
        root.key("spike-sorters").fail("missing key; expected a list of {name, params, studysets}")
    value, sorters_where = found["spike-sorters"]
    entries = as_list(value, sorters_where)
    if not entries:
        sorters_where.fail("expected at least one sorter, got an empty list")
    sorters: list[SorterSpec] = []
    for index, entry in enumerate(entries):
        sorter = _sorter(entry, sorters_where.item(index), declared)
        for other_index, other in enumerate(sorters):
            if other.name == sorter.name:
                sorters_where.item(index).key("name").fail(
                    f"sorter {sorter.name!r} is listed twice (also at {sorters_where.item(other_index).path}); "
                    "expected each sorter once"
                )
        sorters.append(sorter)
    return Spec(source, studysets_uri, declared, tuple(sorters))


def _sorter(value: Any, where: Where, declared: tuple[str, ...]) -> SorterSpec:
    obj = as_object(value, where)
    for key in obj:
        if key not in SORTER_KEYS:
            where.key(key).fail(f"unknown key; expected one of: {', '.join(SORTER_KEYS)}")
    if "name" not in obj:
        where.key("name").fail("missing key; expected the sorter's name")
    name = as_str(obj["name"], where.key("name"))
    if not name:
        where.key("name").expected("a sorter name", name)
    params = obj.get("params")
    params_where = where.key("params")
    if params is None:
        params = {}  # `params:` with nothing after it, as in SpikeForest's files
    as_object(params, params_where)
    check_json_compatible(params, params_where)
    studysets, studysets_where = read_list(obj, "studysets", where, REQUIRED)
    if not studysets:
        studysets_where.fail("expected at least one study set for this sorter, got an empty list")
    names = _names(studysets, studysets_where, "study set names")
    for index, name_of_set in enumerate(names):
        if name_of_set not in declared:
            studysets_where.item(index).fail(
                f"study set {name_of_set!r} is not declared in studyset-names ({', '.join(declared)})"
            )
    return SorterSpec(name, {**pinned_seeds(name), **params}, names)


def validate_spec(spec: Spec, manifest: Manifest, *, strict: bool = False) -> None:
    """Check ``spec`` against ``manifest`` and the sorter catalog.

    Every declared study set must be in the manifest; every sorter must be
    in the catalog (by name or alias), at most once after aliases are
    resolved, and its params must be ones the sorter knows.  A sorter that
    cannot run here passes (its pairs end as errored records) unless
    ``strict``.

    Parameters
    ----------
    spec : Spec
        The parsed spec.
    manifest : Manifest
        The manifest its study sets must be in.
    strict : bool
        Refuse a sorter that cannot run here.

    Raises
    ------
    SpecError
        (``UnknownSorterError`` for an unknown sorter) naming the spec, the
        key path and what was expected.
    """
    root = Where(spec.source, "", SpecError)
    in_manifest = {study_set.name for study_set in manifest.study_sets}
    for index, name in enumerate(spec.studyset_names):
        if name not in in_manifest:
            root.key("studyset-names").item(index).fail(
                f"study set {name!r} is not in the manifest {manifest.source} "
                f"(it has: {', '.join(s.name for s in manifest.study_sets) or 'none'})"
            )
    resolved: dict[str, str] = {}
    for index, sorter in enumerate(spec.sorters):
        here = root.key("spike-sorters").item(index)
        try:
            entry = resolve_sorter(sorter.name)
        except UnknownSorterError as exc:
            raise UnknownSorterError(f"{spec.source}: {here.key('name').path}: {exc}") from None
        if entry.name in resolved:
            here.key("name").fail(
                f"{sorter.name!r} is the sorter {entry.name!r}, already listed as {resolved[entry.name]!r}; "
                "expected each sorter once"
            )
        resolved[entry.name] = sorter.name
        merge_params(entry, sorter.params, f"{spec.source}: {here.key('params').path}", strict=strict)
        check_param_values(entry, sorter.params, f"{spec.source}: {here.key('params').path}")


def sorting_jobs(spec: Spec, manifest: Manifest) -> list[tuple[SorterSpec, Recording]]:
    """The (sorter, recording) pairs the spec assigns, and no others.

    Order: sorters in spec order; for each, its study sets' recordings in
    manifest order.  The same files always give the same list.

    Parameters
    ----------
    spec : Spec
        The validated spec.
    manifest : Manifest
        The manifest.

    Returns
    -------
    list[tuple[SorterSpec, Recording]]
        The pairs.
    """
    return [
        (sorter, recording)
        for sorter in spec.sorters
        for recording in manifest.recordings()
        if recording.study_set_name in sorter.studysets
    ]

