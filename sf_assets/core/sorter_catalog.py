"""The sorter catalog: every sorter sf-assets knows, in one table.

A spec names sorters the SpikeForest way (``MountainSort4``, ``Kilosort2``);
spikeinterface runs them under its own names (``mountainsort4``,
``kilosort2``).  This module is the one place that maps the first to the
second and says, for each sorter, whether it runs from pip packages on this
kind of machine, which container image spikeinterface would use, and which
parameters it accepts.

Importing this module is cheap on purpose: checking a large spec resolves
hundreds of names, and ``spikeinterface.sorters`` costs 1-2 s to import, so it
is imported only when parameters are asked for or validated.

Facts measured with spikeinterface[full] 0.105.3 (see docs/sorters.md):

* ``simple``, ``spykingcircus2``, ``tridesclous2`` and ``mountainsort5`` sort
  locally from the project's own dependencies.
* ``kilosort4`` and ``lupin`` need torch: the optional extra ``kilosort4``.
* mountainsort4 1.0.7 and herdingspikes 0.4.6 install, import, and then crash
  under spikeinterface 0.105 (both read the ``location`` channel property,
  which spikeinterface no longer sets), so they run only in their containers.
* JRClust, Klusta and YASS have no runnable spikeinterface wrapper any more.

``spikeinterface.sorters.installed_sorters()`` only says a package imports;
:func:`runs_here` says whether a sorter really sorts here, and
:func:`availability` says, without sorting, whether it runs locally, only in
its container, or cannot run here at all (a spec may still name it: its pairs
end as errored records).

Seeds: every sorter that takes a random seed gets :data:`PROJECT_SEED` unless
the spec sets one (:func:`pinned_seeds`), so identical inputs give identical
sortings where the sorter allows it, and the seed shows in the records.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sf_assets.core.canary import classify_sort_error, error_summary
from sf_assets.core.errors import EnvironmentSortFailure, SpecError, UnknownSorterError
from sf_assets.core.fields import describe

#: What a sorter needs from the GPU, as spikeinterface's ``gpu_capability`` says.
GPU_NONE, GPU_OPTIONAL, GPU_REQUIRED = "none", "optional", "required"


@dataclass(frozen=True)
class SorterEntry:
    """One sorter.

    Attributes
    ----------
    name : str
        the canonical SpikeForest-style name; labels and partition keys use it.
    si_name : str
        the spikeinterface sorter name passed to ``run_sorter``.
    aliases : tuple[str, ...]
        other spellings accepted in specs (historical SpikeForest files).
    runs_locally : bool
        True when pip packages alone let it sort on a CPU machine (possibly after installing ``pip_extra``);
        False: container only.
    container_image : str | None
        the image spikeinterface 0.105.3 pulls for it (``SORTER_DOCKER_MAP``), None where spikeinterface has
        none.
    note : str
        why it runs where it runs, in one or two sentences.
    has_wrapper : bool
        False when spikeinterface can no longer run it at all.
    pip_extra : str | None
        the sf-assets optional extra that installs its packages.
    gpu : str
        ``"none"``, ``"optional"`` or ``"required"`` (an NVIDIA GPU).
    seed_params : tuple[str, ...]
        the names of its random-seed parameters in spikeinterface 0.105.3's defaults
        (``get_default_sorter_params``); each is pinned to :data:`PROJECT_SEED` unless the spec sets it.
    package : str | None
        the Python distribution that holds the sorter's code, whose version each record carries (None: a
        compiled MATLAB sorter in its image).
    deterministic : bool | None
        measured (docs/sorters.md): True when two sorts of the same recording in fresh workers, with the
        pinned seeds and the worker's seeding of unseeded draws (:mod:`sf_assets.engines.seeded_draws`),
        give identical spike trains; False when they do not; None when not measured here.
    needs_seeded_draws : bool
        True when ``deterministic`` holds only with the worker's seeding of unseeded draws (the sorter draws
        random numbers without a seed on its path): a sort the seeding did not reach (in a container) is not
        reproducible, see :func:`cell_reproducible`.
    """

    name: str
    si_name: str
    aliases: tuple[str, ...]
    runs_locally: bool
    container_image: str | None
    note: str
    has_wrapper: bool = True
    pip_extra: str | None = None
    gpu: str = GPU_NONE
    seed_params: tuple[str, ...] = ()
    package: str | None = None
    deterministic: bool | None = None
    needs_seeded_draws: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """The canonical name followed by its aliases."""
        return (self.name, *self.aliases)


def _image(repository: str) -> str:
    # spikeinterface 0.105.3 names every image "spikeinterface/<x>-base" (latest tag)
    return f"spikeinterface/{repository}-base"


_MATLAB = "MATLAB sorter: spikeinterface runs its compiled build in the container."
_NO_WRAPPER = "spikeinterface 0.105.3 cannot run it"

CATALOG: tuple[SorterEntry, ...] = (
    SorterEntry(
        "HerdingSpikes2", "herdingspikes", (), False, _image("herdingspikes"),
        "herdingspikes 0.4.6 crashes under spikeinterface 0.105 (reads the removed 'location' channel "
        "property; uses np.Inf, gone in numpy 2): container only.",
        package="herdingspikes",
    ),
    SorterEntry("IronClust", "ironclust", (), False, _image("ironclust-compiled"), _MATLAB, gpu=GPU_OPTIONAL),
    SorterEntry(
        "JRClust", "jrclust", (), False, None,
        f"{_NO_WRAPPER}: spikeinterface dropped its JRClust wrapper; use an older SpikeForest stack.",
        has_wrapper=False,
    ),
    SorterEntry(
        "KiloSort", "kilosort", ("Kilosort",), False, _image("kilosort-compiled"),
        f"{_MATLAB} Needs an NVIDIA GPU.", gpu=GPU_REQUIRED,
    ),
    SorterEntry(
        "Kilosort2", "kilosort2", ("KiloSort2",), False, _image("kilosort2-compiled"),
        f"{_MATLAB} Needs an NVIDIA GPU.", gpu=GPU_REQUIRED,
    ),
    SorterEntry(
        "Kilosort2_5", "kilosort2_5", (), False, _image("kilosort2_5-compiled"),
        f"{_MATLAB} Needs an NVIDIA GPU.", gpu=GPU_REQUIRED,
    ),
    SorterEntry(
        "Kilosort3", "kilosort3", ("KiloSort3",), False, _image("kilosort3-compiled"),
        f"{_MATLAB} Needs an NVIDIA GPU.", gpu=GPU_REQUIRED,
    ),
    SorterEntry(
        "Kilosort4", "kilosort4", (), True, _image("kilosort4"),
        "Python (kilosort + torch): install the 'kilosort4' extra; a GPU helps, the CPU works.",
        pip_extra="kilosort4", gpu=GPU_OPTIONAL, package="kilosort",
    ),
    SorterEntry(
        "Klusta", "klusta", (), False, None,
        f"{_NO_WRAPPER}: spikeinterface archived its Klusta wrapper (run_sorter refuses it).",
        has_wrapper=False,
    ),
    SorterEntry(
        "Lupin", "lupin", (), True, None,
        "spikeinterface's own sorter; needs torch: install the 'kilosort4' extra.",
        pip_extra="kilosort4", seed_params=("seed",), package="spikeinterface",
    ),
    SorterEntry(
        "MountainSort4", "mountainsort4", (), False, _image("mountainsort4"),
        "mountainsort4 1.0.7 crashes under spikeinterface 0.105 (reads the removed 'location' channel "
        "property): container only.",
        package="mountainsort4",
    ),
    SorterEntry(
        "MountainSort5", "mountainsort5", (), True, _image("mountainsort5"),
        "Python (mountainsort5, a project dependency).",
        seed_params=("whitening_seed",), package="mountainsort5", deterministic=True,
    ),
    SorterEntry(
        "Simple", "simple", ("simple",), True, None,
        "spikeinterface's built-in reference sorter; no image (it runs wherever spikeinterface does).",
        seed_params=("seed",), package="spikeinterface", deterministic=True, needs_seeded_draws=True,
    ),
    SorterEntry(
        "SpykingCircus", "spykingcircus", (), False, _image("spyking-circus"),
        "spyking-circus 1.x needs MPI and an old numpy: container only.",
        package="spyking-circus",
    ),
    SorterEntry(
        "SpykingCircus2", "spykingcircus2", (), True, _image("spyking-circus2"),
        "spikeinterface's own sorter; about 20 s of numba compilation per fresh process.",
        seed_params=("seed",), package="spikeinterface", deterministic=True, needs_seeded_draws=True,
    ),
    SorterEntry(
        "Tridesclous", "tridesclous", (), False, _image("tridesclous"),
        "tridesclous 1.x is not a project dependency and is untested with numpy 2: container only.",
        package="tridesclous",
    ),
    SorterEntry(
        "Tridesclous2", "tridesclous2", (), True, _image("tridesclous2"),
        "spikeinterface's own sorter; 15-35 s of numba compilation per fresh process.",
        seed_params=("seed",), package="spikeinterface", deterministic=True, needs_seeded_draws=True,
    ),
    SorterEntry("Waveclus", "waveclus", ("WaveClus",), False, _image("waveclus-compiled"), _MATLAB),
    SorterEntry("HDSort", "hdsort", (), False, _image("hdsort-compiled"), _MATLAB),
    SorterEntry(
        "YASS", "yass", (), False, None,
        f"{_NO_WRAPPER}: spikeinterface archived its YASS wrapper (run_sorter refuses it).",
        has_wrapper=False,
    ),
)


def _build_index(entries: tuple[SorterEntry, ...]) -> dict[str, SorterEntry]:
    index: dict[str, SorterEntry] = {}
    for entry in entries:
        for name in entry.names:
            if name in index:
                raise ValueError(f"sorter catalog: {name!r} names both {index[name].name} and {entry.name}")
            index[name] = entry
    return index


_INDEX = _build_index(CATALOG)


def known_sorter_names() -> list[str]:
    """Every name a spec may use: canonical names and aliases, sorted.

    Returns
    -------
    list[str]
        The names, for error messages and ``check-config``.
    """
    return sorted(_INDEX)


def resolve_sorter(name: str, where: str = "") -> SorterEntry:
    """The catalog entry for a sorter name or alias (case-sensitive).

    Parameters
    ----------
    name : str
        A sorter name or alias, as a spec writes it.
    where : str
        Where the name came from, the start of the error message.

    Returns
    -------
    SorterEntry
        The entry.

    Raises
    ------
    UnknownSorterError
        the name is not in the catalog; the message lists the known names and points out a name that differs
        only in case.
    """
    entry = _INDEX.get(name) if isinstance(name, str) else None
    if entry is not None:
        return entry
    prefix = f"{where}: " if where else ""
    hint = ""
    if isinstance(name, str):
        same_letters = [known for known in _INDEX if known.lower() == name.lower()]
        if same_letters:
            hint = f" (names are case-sensitive: did you mean {same_letters[0]!r}?)"
    raise UnknownSorterError(
        f"{prefix}unknown sorter {name!r}{hint}; expected one of: {', '.join(known_sorter_names())}"
    )


def cell_reproducible(entry: SorterEntry, draws_seeded: Iterable[bool]) -> str:
    """The summary's ``reproducible`` for one cell: would its sorts give the same scores again?

    Parameters
    ----------
    entry : SorterEntry
        The cell's sorter.
    draws_seeded : Iterable[bool]
        One per scored sorting of the cell: whether the worker seeded its unseeded draws (its
        provenance's ``unseeded_draws_seed`` is set; not for a sort in a container).

    Returns
    -------
    str
        Empty when the cell has no scored sorting (its sorts errored: no scores to reproduce),
        ``unknown`` when the sorter was not measured here, ``no`` when it is not deterministic or
        needs the seeding that one of the cell's sorts did not get, else ``yes``.
    """
    draws_seeded = list(draws_seeded)
    if not draws_seeded:
        return ""
    if entry.deterministic is None:
        return "unknown"
    if not entry.deterministic or (entry.needs_seeded_draws and not all(draws_seeded)):
        return "no"
    return "yes"


def _no_wrapper_message(entry: SorterEntry) -> str:
    return f"sorter {entry.name!r} cannot run: {entry.note}"


PROJECT_SEED = 0
"""The seed every seeded sorter gets unless the spec sets its own."""


def pinned_seeds(name: str) -> dict[str, int]:
    """The seed parameters the project pins for the sorter called ``name``.

    ``{}`` for an unknown name (validation reports it) and for sorters that
    take no seed.  Cheap: no spikeinterface import.

    Parameters
    ----------
    name : str
        A sorter name or alias.

    Returns
    -------
    dict[str, int]
        Seed parameter -> :data:`PROJECT_SEED`.
    """
    entry = _INDEX.get(name) if isinstance(name, str) else None
    return {} if entry is None else {param: PROJECT_SEED for param in entry.seed_params}


LOCAL, CONTAINER_ONLY, CANNOT_RUN = "local", "container only", "cannot run here"


@dataclass(frozen=True)
class Availability:
    """Where a sorter can run from this environment, and why.

    Attributes
    ----------
    status : str
        :data:`LOCAL` (its packages are installed here), :data:`CONTAINER_ONLY` (it runs in its spikeinterface
        image, given a container runtime) or :data:`CANNOT_RUN` (no wrapper, or no package here and no image).
    reason : str
        one sentence for people.
    """

    status: str
    reason: str


def availability(entry: SorterEntry) -> Availability:
    """Whether ``entry`` runs here, only in its container, or not at all; decided without sorting.

    A sorter whose packages come from an optional extra (kilosort4, lupin)
    counts as local only when spikeinterface finds them installed.  Imports
    ``spikeinterface.sorters`` only for those sorters.

    Parameters
    ----------
    entry : SorterEntry
        The sorter.

    Returns
    -------
    Availability
        The status and the reason in one sentence.
    """
    if not entry.has_wrapper:
        return Availability(CANNOT_RUN, entry.note)
    if not entry.runs_locally:
        return Availability(CONTAINER_ONLY, f"runs in {entry.container_image}: {entry.note}")
    if entry.pip_extra is not None and not _sorter_class(entry).is_installed():
        missing = f"its packages are not installed here (install the {entry.pip_extra!r} extra)"
        if entry.container_image is None:
            return Availability(CANNOT_RUN, f"{missing}, and spikeinterface has no image for it")
        return Availability(CONTAINER_ONLY, f"{missing}; runs in {entry.container_image}")
    return Availability(LOCAL, entry.note)


def require_runnable(entry: SorterEntry, *, in_container: bool) -> None:
    """Refuse, before any work starts, a sort that cannot run the way asked.

    Parameters
    ----------
    entry : SorterEntry
        the sorter.
    in_container : bool
        True for a docker/singularity run, False for a local one.

    Raises
    ------
    EnvironmentSortFailure
        the sorter has no spikeinterface wrapper, or has no image (container run), or runs only in a container
        (local run).
    """
    if not entry.has_wrapper:
        raise EnvironmentSortFailure(_no_wrapper_message(entry))
    if in_container and entry.container_image is None:
        raise EnvironmentSortFailure(
            f"sorter {entry.name!r} has no container image in spikeinterface 0.105.3; run it locally ({entry.note})"
        )
    if not in_container and not entry.runs_locally:
        raise EnvironmentSortFailure(
            f"sorter {entry.name!r} runs only in a container ({entry.container_image}): {entry.note}"
        )
    where = None if in_container else availability(entry)
    if where is not None and where.status != LOCAL:
        how = "runs only in a container here" if where.status == CONTAINER_ONLY else "cannot run here"
        raise EnvironmentSortFailure(f"sorter {entry.name!r} {how}: {where.reason}")


def _sorter_class(entry: SorterEntry):
    from spikeinterface.sorters.sorterlist import sorter_dict

    return sorter_dict[entry.si_name]


def default_params(entry: SorterEntry) -> dict:
    """spikeinterface's default parameters for the sorter (a fresh copy).

    Imports ``spikeinterface.sorters`` on first use.  Kilosort4's defaults come
    from the kilosort package itself: without it spikeinterface returns only its
    job parameters (and warns).

    Parameters
    ----------
    entry : SorterEntry
        The sorter.

    Returns
    -------
    dict
        Parameter -> default value.

    Raises
    ------
    EnvironmentSortFailure
        the sorter has no spikeinterface wrapper.
    """
    if not entry.has_wrapper:
        raise EnvironmentSortFailure(_no_wrapper_message(entry))
    return _sorter_class(entry).default_params()


def _defaults_are_complete(entry: SorterEntry) -> bool:
    """False when the defaults depend on a package missing here (kilosort4 without kilosort)."""
    from spikeinterface.sorters.basesorter import BaseSorter

    sorter_class = _sorter_class(entry)
    dynamic = sorter_class._dynamic_params.__func__ is not BaseSorter._dynamic_params.__func__
    return not dynamic or sorter_class.is_installed()


def merge_params(entry: SorterEntry, params: dict, where: str, *, strict: bool = False) -> dict:
    """The parameters a sort runs with: ``params`` over the sorter's defaults.

    The merge is shallow, like ``run_sorter``'s own: a nested dict in
    ``params`` replaces the default one whole, so what the record says is what
    the sorter got.  When the defaults are incomplete here (kilosort4 without
    its package), names that cannot be checked pass with a warning, since the
    sort may run in a container that has the package.  A sorter without a
    wrapper has no defaults: its params are returned as given (its pairs end as
    errored records), unless ``strict``.

    Parameters
    ----------
    entry : SorterEntry
        the sorter.
    params : dict
        the spec's parameters for it.
    where : str
        the file and key path of ``params``, for error messages.
    strict : bool
        refuse a sorter that cannot run here (:func:`availability`).

    Returns
    -------
    dict
        The merged parameters, seeds pinned unless ``params`` sets them.

    Raises
    ------
    SpecError
        ``params`` is not a mapping, names parameters the sorter does not have, or (``strict``) the sorter
        cannot run here.
    """
    if strict and (here := availability(entry)).status == CANNOT_RUN:
        raise SpecError(
            f"{where}: sorter {entry.name!r} cannot run here: {here.reason.rstrip('.')}; "
            "remove it from the spec (or leave out --strict to record its pairs as errored)"
        )
    if not isinstance(params, dict):
        raise SpecError(f"{where}: expected a mapping of parameter names to values, got {type(params).__name__}")
    if not entry.has_wrapper:
        return dict(params)
    defaults = default_params(entry)
    unknown = sorted(str(name) for name in params if name not in defaults)
    if unknown and _defaults_are_complete(entry):
        raise SpecError(
            f"{where}: unknown parameter(s) {', '.join(unknown)} for sorter {entry.name!r} "
            f"({entry.si_name}); expected some of: {', '.join(sorted(defaults))}"
        )
    if unknown:
        warnings.warn(
            f"{where}: cannot check parameter(s) {', '.join(unknown)} for sorter {entry.name!r}: "
            f"its package is not installed here (extra {entry.pip_extra!r})",
            stacklevel=2,
        )
    return {**defaults, **params}


MAX_PARAM_VALUE_BYTES = 64 * 1024
"""Largest sorter parameter value, as JSON (the longest real one, a channel map, is a few KB)."""

MAX_PARAMS_BYTES = 256 * 1024
"""Largest params mapping of one sorter, as JSON: params are copied into every run's config,
record and metadata, so a 10 MB value had grown into about 0.5 GB of Dagster storage."""


def _json_size(value) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _expected_kind(default) -> str | None:
    """What a value must be, judged from the default's type; None: anything goes."""
    if default is None:
        return None
    if isinstance(default, bool):
        return "a boolean"
    if isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a list"
    if isinstance(default, dict):
        return "a mapping"
    return None


def _is_kind(value, kind: str) -> bool:
    if kind == "a boolean":
        return isinstance(value, bool)
    if kind == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "a string":
        return isinstance(value, str)
    if kind == "a list":
        return isinstance(value, (list, tuple))
    return isinstance(value, dict)


def _shown(default) -> str:
    """A default as a message shows it: containers as (shortened) JSON, other values via describe."""
    if isinstance(default, (list, tuple, dict)):
        text = json.dumps(list(default) if isinstance(default, tuple) else default)
        return text if len(text) <= 60 else text[:57] + "..."
    return describe(default)


def _check_value(value, default, where: str) -> None:
    """Check one value against its default's type, then its list items or known nested keys."""
    kind = _expected_kind(default)
    if kind is None:
        return
    if not _is_kind(value, kind):
        raise SpecError(f"{where}: expected {kind} (the default is {_shown(default)}), got {describe(value)}")
    if kind == "a list" and default:
        kinds = {_expected_kind(item) for item in default}
        if len(kinds) == 1 and None not in kinds:
            (item_kind,) = kinds
            for index, item in enumerate(value):
                if not _is_kind(item, item_kind):
                    raise SpecError(
                        f"{where}[{index}]: expected {item_kind} like the default's items "
                        f"({_shown(default)}), got {describe(item)}"
                    )
    if kind == "a mapping":
        for key, item in value.items():
            if key in default:
                _check_value(item, default[key], f"{where}.{key}")


def check_param_values(entry: SorterEntry, params: dict, where: str) -> None:
    """Bound a spec's sorter parameters by the sorter's own defaults: their types, and a size cap.

    Each value must have the type of spikeinterface's default for it
    (``get_default_sorter_params``): a boolean for a boolean; a number for
    an int or a float (spikeinterface writes whole-number defaults for
    parameters that take fractions, e.g. ``detect_threshold: 5``,
    ``n_jobs: 1`` for ``0.5``); a string for a string; a list for a list or
    tuple (with items of the default's item type when those are all of one
    type); a mapping for a dict, whose keys that the default has are checked
    the same way (other keys pass: a different ``method`` takes other
    ``method_kwargs``).  Where the default is None, any JSON value passes, as
    does a parameter whose default cannot be read here (kilosort4 without its
    package, a sorter without a wrapper).  Every value is at most :data:`MAX_PARAM_VALUE_BYTES` as JSON,
    the whole mapping at most :data:`MAX_PARAMS_BYTES`.

    Parameters
    ----------
    entry : SorterEntry
        the sorter.
    params : dict
        the spec's parameters for it (already known to be JSON values).
    where : str
        the file and key path of ``params``, e.g. ``spec.yaml: spike-sorters[0].params``.

    Raises
    ------
    SpecError
        naming ``where``, the parameter, what was given and what was expected.
    """
    for name, value in params.items():
        size = _json_size(value)
        if size > MAX_PARAM_VALUE_BYTES:
            raise SpecError(
                f"{where}.{name}: a value of {size} bytes as JSON; expected at most {MAX_PARAM_VALUE_BYTES}"
            )
    total = _json_size(params)
    if total > MAX_PARAMS_BYTES:
        raise SpecError(f"{where}: {total} bytes as JSON; expected at most {MAX_PARAMS_BYTES} for one sorter's params")
    # A sorter without a wrapper has no defaults (its pairs end as errored records): sizes only.
    defaults = default_params(entry) if params and entry.has_wrapper else {}
    for name, value in params.items():
        if name in defaults:
            _check_value(value, defaults[name], f"{where}.{name}")


# --- runs_here: a real test sort in a child process -------------------------------------

_TEST_SORT_DURATION_S = 3.0
_RESULT_MARKER = "sf-assets test sort result: "


def _test_sort_in_this_process(si_name: str, work_dir: str) -> None:
    """The child's side of :func:`runs_here`: sort 3 s of generated data and report.

    A generated recording is not serializable and ``run_sorter`` refuses it,
    so it is saved to binary first.
    """
    from spikeinterface.core import generate_ground_truth_recording
    from spikeinterface.sorters import run_sorter

    work = Path(work_dir)
    recording, _ = generate_ground_truth_recording(
        durations=[_TEST_SORT_DURATION_S], num_channels=4, num_units=5, seed=0
    )
    recording = recording.save(folder=work / "recording", format="binary", verbose=False)
    started = time.perf_counter()
    sorting = run_sorter(si_name, recording, folder=work / "sorting", remove_existing_folder=True, verbose=False)
    elapsed_s = time.perf_counter() - started
    print(_RESULT_MARKER + json.dumps({"num_units": len(sorting.unit_ids), "sort_s": elapsed_s}), flush=True)


def _kill_process_group(child: subprocess.Popen) -> None:
    os.killpg(child.pid, signal.SIGKILL)
    child.communicate()


def runs_here(entry: SorterEntry, timeout_s: float = 300.0) -> tuple[bool, str]:
    """Whether the sorter really sorts on this machine, decided by a test sort.

    ``installed_sorters()`` only checks that a package imports (mountainsort4
    imports, then crashes).  This sorts a 3 s generated recording in a fresh
    child process, so nothing is cached across processes and a hang is bounded
    by ``timeout_s``.  Container-only sorters and sorters without a wrapper get
    False at once, without touching docker.  Budget: 5-12 s for simple and
    mountainsort5, 20-50 s for spykingcircus2 and tridesclous2 (numba
    compilation in every fresh process).

    Parameters
    ----------
    entry : SorterEntry
        the sorter.
    timeout_s : float
        wall-clock limit for the child process, seconds.

    Returns
    -------
    tuple[bool, str]
        (True, what the test sort found) or (False, why not).
    """
    if not entry.has_wrapper:
        return False, _no_wrapper_message(entry)
    if not entry.runs_locally:
        return False, f"{entry.name} runs only in a container ({entry.container_image}): {entry.note}"
    with tempfile.TemporaryDirectory(prefix=f"sf-assets-test-sort-{entry.si_name}-") as work_dir:
        code = (
            "from sf_assets.core.sorter_catalog import _test_sort_in_this_process as run; "
            f"run({entry.si_name!r}, {work_dir!r})"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=work_dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a timeout kills any workers too
        )
        try:
            output, _ = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_process_group(child)
            return False, f"{entry.name}: the {_TEST_SORT_DURATION_S:g} s test sort did not finish in {timeout_s:g} s"
        except BaseException:  # an interrupt must not leave the test sort running
            _kill_process_group(child)
            raise
    results = [line[len(_RESULT_MARKER):] for line in output.splitlines() if line.startswith(_RESULT_MARKER)]
    if child.returncode != 0 or not results:
        failure = classify_sort_error(entry.si_name, output)
        kind = f" ({failure.failure_class})" if failure is not None else ""
        return False, f"{entry.name}: the test sort failed{kind}, exit code {child.returncode}: {error_summary(output)}"
    result = json.loads(results[-1])
    return True, (
        f"{entry.name}: sorted a {_TEST_SORT_DURATION_S:g} s generated recording into "
        f"{result['num_units']} units in {result['sort_s']:.1f} s"
    )
