"""The sorter catalog against spikeinterface 0.105.3 itself, and runs_here's real test sorts."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from spikeinterface.sorters import available_sorters, archived_sorters, get_default_sorter_params
from spikeinterface.sorters.runsorter import SORTER_DOCKER_MAP
from spikeinterface.sorters.sorterlist import sorter_dict

from sf_assets.core.errors import EnvironmentSortFailure, SpecError, UnknownSorterError
from sf_assets.core.sorter_catalog import (
    CANNOT_RUN,
    CATALOG,
    Availability,
    CONTAINER_ONLY,
    LOCAL,
    PROJECT_SEED,
    availability,
    cell_reproducible,
    default_params,
    known_sorter_names,
    merge_params,
    pinned_seeds,
    require_runnable,
    resolve_sorter,
    runs_here,
)

SPIKEFOREST_NAMES = {
    "HerdingSpikes2": "herdingspikes",
    "IronClust": "ironclust",
    "JRClust": "jrclust",
    "KiloSort": "kilosort",
    "Kilosort2": "kilosort2",
    "Kilosort3": "kilosort3",
    "Klusta": "klusta",
    "MountainSort4": "mountainsort4",
    "SpykingCircus": "spykingcircus",
    "Tridesclous": "tridesclous",
    "Waveclus": "waveclus",
    "HDSort": "hdsort",
    "YASS": "yass",
    "MountainSort5": "mountainsort5",
    "Kilosort4": "kilosort4",
    "SpykingCircus2": "spykingcircus2",
    "Tridesclous2": "tridesclous2",
    "Simple": "simple",
}
HISTORICAL_SPELLINGS = {
    "KiloSort2": "Kilosort2",
    "Kilosort": "KiloSort",
    "KiloSort3": "Kilosort3",
    "WaveClus": "Waveclus",
    "simple": "Simple",
}
GPU_CAPABILITY = {"not-supported": "none", "nvidia-optional": "optional", "nvidia-required": "required"}


def test_every_spikeforest_name_resolves_to_its_spikeinterface_sorter():
    for name, si_name in SPIKEFOREST_NAMES.items():
        entry = resolve_sorter(name)
        assert (entry.name, entry.si_name) == (name, si_name)


def test_historical_spellings_are_aliases_of_one_entry():
    for alias, canonical in HISTORICAL_SPELLINGS.items():
        assert resolve_sorter(alias) is resolve_sorter(canonical)
        assert resolve_sorter(alias).name == canonical
    assert set(known_sorter_names()) == {n for e in CATALOG for n in e.names}
    assert len(known_sorter_names()) == len(set(known_sorter_names()))


def test_names_are_case_sensitive_and_the_error_lists_the_known_names():
    with pytest.raises(UnknownSorterError) as info:
        resolve_sorter("kilosort2", where="spec.yaml: spike-sorters[0].name")
    message = str(info.value)
    assert message.startswith("spec.yaml: spike-sorters[0].name: unknown sorter 'kilosort2' ")
    assert "did you mean 'Kilosort2'?" in message
    for name in known_sorter_names():
        assert name in message
    with pytest.raises(UnknownSorterError, match="unknown sorter 'NoSuchSorter'; expected one of: HDSort, "):
        resolve_sorter("NoSuchSorter")


def test_catalog_agrees_with_spikeinterface():
    available, archived = set(available_sorters()), set(archived_sorters())
    for entry in CATALOG:
        runnable_in_si = entry.si_name in available and entry.si_name not in archived
        assert entry.has_wrapper == runnable_in_si, entry.name
        if not entry.has_wrapper:
            assert entry.container_image is None and not entry.runs_locally, entry.name
            continue
        assert entry.container_image == SORTER_DOCKER_MAP.get(entry.si_name), entry.name
        assert entry.gpu == GPU_CAPABILITY[sorter_dict[entry.si_name].gpu_capability], entry.name
        assert entry.note, entry.name


def test_local_sorters_without_an_extra_are_installed_by_the_project():
    local = {e.si_name for e in CATALOG if e.runs_locally and e.pip_extra is None}
    assert local == {"simple", "mountainsort5", "spykingcircus2", "tridesclous2"}
    for si_name in local:
        assert sorter_dict[si_name].is_installed(), si_name
    assert {e.si_name for e in CATALOG if e.pip_extra == "kilosort4"} == {"kilosort4", "lupin"}


def test_importing_the_catalog_leaves_spikeinterface_unimported():
    code = (
        "import sys, sf_assets.core.sorter_catalog as c\n"
        "[c.resolve_sorter(n) for n in c.known_sorter_names() * 1000]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('spikeinterface', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_default_params_are_spikeinterface_defaults_and_a_fresh_copy():
    for entry in CATALOG:
        if entry.has_wrapper and entry.si_name != "kilosort4":
            assert default_params(entry) == get_default_sorter_params(entry.si_name), entry.name
    entry = resolve_sorter("SpykingCircus2")
    params = default_params(entry)
    params["general"]["radius_um"] = -1.0
    assert default_params(entry)["general"]["radius_um"] != -1.0
    with pytest.raises(EnvironmentSortFailure, match="sorter 'JRClust' cannot run: spikeinterface 0.105.3 cannot"):
        default_params(resolve_sorter("JRClust"))


def test_merge_params_puts_spec_values_over_the_defaults():
    entry = resolve_sorter("MountainSort5")
    merged = merge_params(entry, {"scheme": "1", "detect_threshold": 6.5}, "s.yaml: spike-sorters[0].params")
    assert merged == {**get_default_sorter_params("mountainsort5"), "scheme": "1", "detect_threshold": 6.5}
    # shallow, as run_sorter merges: a nested dict replaces the default one
    assert merge_params(resolve_sorter("SpykingCircus2"), {"general": {"ms_before": 1}}, "w")["general"] == {
        "ms_before": 1
    }


def test_merge_params_rejects_unknown_names_with_where_and_the_valid_ones():
    entry = resolve_sorter("MountainSort4")
    with pytest.raises(SpecError) as info:
        merge_params(entry, {"detect_sign": -1, "nope": 1, "also_nope": 2}, "s.yaml: spike-sorters[1].params")
    assert str(info.value) == (
        "s.yaml: spike-sorters[1].params: unknown parameter(s) also_nope, nope for sorter 'MountainSort4' "
        "(mountainsort4); expected some of: adjacency_radius, clip_size, detect_interval, detect_sign, "
        "detect_threshold, filter, freq_max, freq_min, num_workers, tempdir, whiten"
    )
    with pytest.raises(SpecError, match=r"^s.yaml: p: expected a mapping of parameter names to values, got list$"):
        merge_params(entry, [1], "s.yaml: p")
    # A sorter without a wrapper has no defaults to check against: its params pass as given,
    # unless --strict refuses the sorter itself.
    assert merge_params(resolve_sorter("Klusta"), {"x": 1}, "s.yaml: p") == {"x": 1}
    with pytest.raises(SpecError, match=r"^s.yaml: p: sorter 'Klusta' cannot run here: .*archived.*remove it from"):
        merge_params(resolve_sorter("Klusta"), {}, "s.yaml: p", strict=True)
    with pytest.raises(SpecError, match=r"^s.yaml: p: expected a mapping"):
        merge_params(resolve_sorter("Klusta"), [1], "s.yaml: p")
    # strict refuses only what cannot run here: a container-only sorter passes
    assert merge_params(resolve_sorter("MountainSort4"), {}, "s.yaml: p", strict=True)["detect_sign"] == -1


def test_seed_parameters_are_spikeinterfaces_own_and_pinned():
    seeded = {entry.name: entry.seed_params for entry in CATALOG if entry.seed_params}
    assert seeded == {
        "Lupin": ("seed",),
        "MountainSort5": ("whitening_seed",),
        "Simple": ("seed",),
        "SpykingCircus2": ("seed",),
        "Tridesclous2": ("seed",),
    }
    for entry in CATALOG:
        if not entry.has_wrapper or entry.si_name == "kilosort4":
            continue
        defaults = get_default_sorter_params(entry.si_name)
        # every seed-like top-level parameter of spikeinterface 0.105.3 is pinned, and nothing else
        assert {k for k in defaults if "seed" in k and not isinstance(defaults[k], bool)} == set(entry.seed_params)
    assert pinned_seeds("MountainSort5") == {"whitening_seed": PROJECT_SEED} == {"whitening_seed": 0}
    assert pinned_seeds("simple") == {"seed": 0}  # aliases too
    assert pinned_seeds("Kilosort2") == {} and pinned_seeds("NoSuchSorter") == {}


def test_availability_says_local_container_only_or_cannot_run_here_and_why():
    assert availability(resolve_sorter("MountainSort5")).status == LOCAL
    assert availability(resolve_sorter("SpykingCircus2")).status == LOCAL
    ms4 = availability(resolve_sorter("MountainSort4"))
    assert ms4.status == CONTAINER_ONLY and ms4.reason.startswith("runs in spikeinterface/mountainsort4-base: ")
    for name in ("JRClust", "Klusta", "YASS"):
        assert availability(resolve_sorter(name)) == Availability(CANNOT_RUN, resolve_sorter(name).note)
    kilosort4 = resolve_sorter("Kilosort4")
    if not sorter_dict["kilosort4"].is_installed():  # the package is missing, its image is not
        assert availability(kilosort4).status == CONTAINER_ONLY
        with pytest.raises(EnvironmentSortFailure, match="^sorter 'Kilosort4' runs only in a container here: its"):
            require_runnable(kilosort4, in_container=False)
        require_runnable(kilosort4, in_container=True)
    lupin = availability(resolve_sorter("Lupin"))
    if sorter_dict["lupin"].is_installed():
        assert lupin.status == LOCAL
    else:  # no torch: no package and no image
        assert lupin.status == CANNOT_RUN and "'kilosort4' extra" in lupin.reason and "no image" in lupin.reason
        with pytest.raises(EnvironmentSortFailure, match="^sorter 'Lupin' cannot run here: its packages"):
            require_runnable(resolve_sorter("Lupin"), in_container=False)


def test_kilosort4_params_are_checked_only_where_kilosort_is_installed():
    entry = resolve_sorter("Kilosort4")
    if sorter_dict["kilosort4"].is_installed():
        with pytest.raises(SpecError, match="unknown parameter"):
            merge_params(entry, {"no_such_param": 1}, "w")
    else:
        with pytest.warns(UserWarning, match=r"^w: cannot check parameter\(s\) Th_universal .*'kilosort4'"):
            merged = merge_params(entry, {"Th_universal": 9}, "w")
        assert merged["Th_universal"] == 9


def test_require_runnable_says_why_not():
    with pytest.raises(EnvironmentSortFailure, match="^sorter 'JRClust' cannot run: .*dropped its JRClust wrapper"):
        require_runnable(resolve_sorter("JRClust"), in_container=True)
    container_only = r"^sorter 'MountainSort4' runs only in a container \(spikeinterface/mountainsort4-base\): .*location"
    with pytest.raises(EnvironmentSortFailure, match=container_only):
        require_runnable(resolve_sorter("MountainSort4"), in_container=False)
    with pytest.raises(EnvironmentSortFailure, match="^sorter 'Simple' has no container image"):
        require_runnable(resolve_sorter("Simple"), in_container=True)
    require_runnable(resolve_sorter("MountainSort4"), in_container=True)
    require_runnable(resolve_sorter("MountainSort5"), in_container=False)


def test_runs_here_refuses_container_only_and_unwrapped_sorters_without_trying_docker(monkeypatch):
    # any docker call would now try an unreachable address instead of failing at once
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.1:2375")
    started = time.monotonic()
    ok, reason = runs_here(resolve_sorter("Kilosort2"))
    assert not ok
    assert reason.startswith("Kilosort2 runs only in a container (spikeinterface/kilosort2-compiled-base): ")
    ok, reason = runs_here(resolve_sorter("HerdingSpikes2"))
    assert not ok and "location" in reason
    ok, reason = runs_here(resolve_sorter("YASS"))
    assert (ok, reason) == (False, f"sorter 'YASS' cannot run: {resolve_sorter('YASS').note}")
    assert time.monotonic() - started < 0.5


def test_runs_here_times_out_and_says_so():
    ok, reason = runs_here(resolve_sorter("Simple"), timeout_s=0.5)
    assert (ok, reason) == (False, "Simple: the 3 s test sort did not finish in 0.5 s")


def test_runs_here_sorts_for_real_with_simple():
    ok, reason = runs_here(resolve_sorter("simple"), timeout_s=240)
    assert ok, reason
    assert reason.startswith("Simple: sorted a 3 s generated recording into ")


def test_a_cell_is_reproducible_only_where_the_seeding_it_needs_reached_every_sort():
    """A SpykingCircus2 sort in a container (no seeded draws) makes its cell ``no``; MountainSort5 needs none."""
    sc2, ms5 = resolve_sorter("SpykingCircus2"), resolve_sorter("MountainSort5")
    assert sc2.needs_seeded_draws and not ms5.needs_seeded_draws
    assert cell_reproducible(sc2, [True, True]) == "yes"
    assert cell_reproducible(sc2, [True, False]) == "no"
    assert cell_reproducible(ms5, [False]) == "yes"
    assert cell_reproducible(resolve_sorter("Kilosort4"), [True]) == "unknown"
    assert cell_reproducible(sc2, []) == cell_reproducible(resolve_sorter("Kilosort4"), []) == ""  # no scores
    assert {e.name for e in CATALOG if e.needs_seeded_draws} == {"Simple", "SpykingCircus2", "Tridesclous2"}
    assert all(e.deterministic for e in CATALOG if e.needs_seeded_draws)
