"""What a sort ran with: the thread count applied and recorded, versions, image digest."""
from __future__ import annotations

import numba
import numpy
import spikeinterface
from threadpoolctl import threadpool_info

from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.engines.job import SortJob
from sf_assets.engines.provenance import (
    applied_threads,
    image_digest,
    library_versions,
    sort_provenance,
    thread_count,
    threads_in_use,
)


def _job(**changes) -> SortJob:
    fields = dict(
        sorter_name="MountainSort5",
        si_sorter_name="mountainsort5",
        params={"whitening_seed": 0, "detect_threshold": 6},
        recording_uri="sha1://" + "1" * 40 + "/r.json",
        label="MountainSort5/s/r",
        kachery_dir="/nonexistent",
        work_dir="/nonexistent",
    )
    return SortJob(**{**fields, **changes})


def test_the_jobs_thread_count_wins_over_the_workers_environment():
    assert thread_count(_job(threads=3), {"NUMBA_NUM_THREADS": "1"}) == 3
    assert thread_count(_job(), {"NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "4"}) == 2
    assert thread_count(_job(), {"OMP_NUM_THREADS": "4"}) == 4
    assert thread_count(_job(), {"NUMBA_NUM_THREADS": "", "OMP_NUM_THREADS": "x"}) is None
    assert SortJob.from_json(_job(threads=2).to_json()).threads == 2


def test_the_applied_count_is_what_numba_and_every_native_pool_run_with():
    before = numba.get_num_threads()
    with applied_threads(1):
        used = threads_in_use(1)
        assert numba.get_num_threads() == 1
        assert {pool["num_threads"] for pool in threadpool_info()} == {1}
    assert (used["applied"], used["numba"]) == (1, 1)
    assert used["joblib"] == {"backend": "SequentialBackend", "n_jobs": 1}
    assert {pool["num_threads"] for pool in used["threadpools"]} == {1} and used["threadpools"]
    assert numba.get_num_threads() == before, "a warm worker's next sort starts from its own count"
    with applied_threads(None):
        assert numba.get_num_threads() == before


def test_provenance_holds_seeds_versions_and_image():
    entry = resolve_sorter("MountainSort5")
    provenance = sort_provenance(_job(), entry, None)
    assert provenance["seeds"] == {"whitening_seed": 0}
    assert provenance["unseeded_draws_seed"] == 0  # the worker seeds the sorter's unseeded draws with it
    versions = provenance["versions"]
    assert (versions["spikeinterface"], versions["numpy"], versions["numba"]) == (
        spikeinterface.__version__,
        numpy.__version__,
        numba.__version__,
    )
    assert versions["mountainsort5"] == versions["sorter"]  # spikeinterface reports the package's version
    assert (provenance["container_image"], provenance["container_image_digest"]) == (None, None)
    # a container-only sorter: its package is in the image, not here
    assert library_versions(resolve_sorter("MountainSort4"))["sorter"] is None
    assert library_versions(resolve_sorter("MountainSort4"))["mountainsort4"] is None


def test_an_image_digest_comes_from_the_reference_when_it_has_one():
    digest = "sha256:" + "ab" * 32
    assert image_digest(f"spikeinterface/mountainsort5-base@{digest}", "docker") == digest
    assert image_digest(None, "docker") is None
    assert image_digest("/images/ms5.sif", "singularity") is None


def test_the_job_cache_key_holds_the_installed_versions_of_the_code_that_sorts():
    import mountainsort5

    from sf_assets.engines.engine import cache_key
    from sf_assets.engines.provenance import code_versions

    entry = resolve_sorter("MountainSort5")
    here = dict(code_versions(entry.package, in_container=False))
    assert here == {
        "spikeinterface": spikeinterface.__version__,
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "mountainsort5": mountainsort5.__version__,
    }
    assert dict(code_versions(entry.package, in_container=True)) == {"spikeinterface": spikeinterface.__version__}, (
        "in a container the image stands for the sorter, numpy and numba"
    )

    def key(versions: dict) -> str:
        return cache_key(entry, {"detect_threshold": 6}, "sha1://" + "1" * 40, None, "default", tuple(versions.items()))

    assert key(here) == key(dict(reversed(list(here.items())))), "the order it is read in does not count"
    for name in here:
        assert key({**here, name: "0.0.1"}) != key(here), f"an upgraded {name} must sort again, not hit the cache"


def test_a_worker_reports_the_versions_it_imported_and_its_sorting_is_keyed_by_them(monkeypatch):
    """A warm worker started before ``pip install -U`` still runs the old release: what it reports,
    and the key its sorting is stored under, are the imported module's, not the installed one's."""
    from sf_assets.engines.provenance import code_versions, ran_with
    from sf_assets.orchestration.planning import expected_cache_key
    from sf_assets.core.manifest import Recording
    from sf_assets.core.spec import SorterSpec
    from sf_assets.engines.engine import EngineSettings

    entry = resolve_sorter("MountainSort5")
    installed_si = spikeinterface.__version__
    monkeypatch.setattr(spikeinterface, "__version__", installed_si + ".0")  # the same release, spelled otherwise
    assert library_versions(entry)["spikeinterface"] == installed_si, "the planner's spelling: keys must match"
    monkeypatch.setattr(spikeinterface, "__version__", "0.0.1")  # imported before an upgrade
    reported = library_versions(entry)
    assert reported["spikeinterface"] == "0.0.1"
    installed = dict(code_versions(entry.package, in_container=False))
    assert installed["spikeinterface"] != "0.0.1", "the planner reads what a new worker would import"
    ran = ran_with(reported, entry.package, in_container=False)
    assert dict(ran) == {**installed, "spikeinterface": "0.0.1"}
    sorter_spec = SorterSpec(name="MountainSort5", params={"detect_threshold": 6}, studysets=("S",))
    rec = Recording("r", "s", "S", 30000.0, 4, 10.0, 5, -1, "sha1://" + "1" * 40, "sha1://" + "2" * 40, False)
    settings = EngineSettings(work_root="/nonexistent")
    assert expected_cache_key(sorter_spec, rec, settings, versions=ran) != expected_cache_key(sorter_spec, rec, settings)
    in_image = ran_with(reported, entry.package, in_container=True)  # the host's spikeinterface drives the image
    assert in_image == (("spikeinterface", "0.0.1"),)


def test_the_sort_service_folder_changes_with_the_installed_libraries(monkeypatch):
    """A launch after an upgrade gets a service whose workers import the new releases."""
    from sf_assets.engines import provenance, service_address

    monkeypatch.setattr(provenance, "_installed", {})
    before = service_address.code_fingerprint()
    real = provenance._version
    monkeypatch.setattr(provenance, "_version", lambda name: "0.0.1" if name == "mountainsort5" else real(name))
    assert service_address.code_fingerprint() == before, "read again only after the versions' time to live"
    monkeypatch.setattr(provenance, "_installed", {})  # that time has passed
    assert service_address.code_fingerprint() != before


def test_with_one_thread_a_joblib_call_naming_its_own_workers_starts_no_process_pool():
    """hdbscan, inside spikeinterface's simple, asks joblib for 4 processes whatever the sort's limit."""
    import os

    from joblib import Parallel, delayed

    with applied_threads(1):
        pids = set(Parallel(n_jobs=4)(delayed(os.getpid)() for _ in range(8)))
    assert pids == {os.getpid()}
    with applied_threads(2):
        assert threads_in_use(2)["joblib"]["n_jobs"] == 2
