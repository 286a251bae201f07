"""The JIT cache: a new worker loads the sorter's numba-compiled code instead of compiling it again.

Real numba and a real sorter (spikeinterface's ``simple``, whose peak
detection is a numba function) in fresh worker processes; the counts come
from numba's own statistics, so these tests fail if nothing is cached or
nothing is loaded.
"""
from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from sf_assets.engines import jit_cache
from sf_assets.engines.engine import JIT_CACHE_FOLDER, EngineSettings, run_sort
from sf_assets.engines.job import SortJob, SortReport
from sf_assets_tests.sort_jobs import sort_job

REPO = Path(__file__).resolve().parents[1]


def _simple_job(synthetic_studyset, work_dir: Path, jit_cache_dir: str | None) -> SortJob:
    return sort_job(
        synthetic_studyset, work_dir, ("Simple", "simple"), canary_first_n_s=0.0, jit_cache_dir=jit_cache_dir
    )


def _sort_in_a_new_worker(job: SortJob, tmp_path: Path) -> SortReport:
    # reuse_workers off: a fresh worker process for this sort, as a new service's or allocation's first sort.
    events = list(run_sort(job, EngineSettings(work_root=str(tmp_path), reuse_workers=False)))
    report = events[-1]
    assert isinstance(report, SortReport) and not report.errored, report.error_message
    return report


def test_a_second_worker_loads_what_the_first_compiled(synthetic_studyset, tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    cache = tmp_path / JIT_CACHE_FOLDER
    assert not jit_cache.holds_sorter(cache, "simple")
    first = _sort_in_a_new_worker(_simple_job(synthetic_studyset, tmp_path / "a", str(cache)), tmp_path)
    # The sort service reads this (without numba) to start the next simple sorts on new workers.
    assert jit_cache.holds_sorter(cache, "simple") and not jit_cache.holds_sorter(cache, "mountainsort5")
    second = _sort_in_a_new_worker(_simple_job(synthetic_studyset, tmp_path / "b", str(cache)), tmp_path)

    assert first.details["jit_cache"]["folder"] == str(cache)
    assert first.details["jit_cache"]["compiled"] > 0 and first.details["jit_cache"]["loaded"] == 0
    assert second.details["jit_cache"]["loaded"] == first.details["jit_cache"]["compiled"]
    assert second.details["jit_cache"]["compiled"] == 0
    assert any(cache.rglob("*.nbi")), "numba's index files are in the folder"
    assert "loaded from the JIT cache" in Path(second.console_path).read_text()


PEAKS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from sf_assets.engines import jit_cache

    jit_cache.enable(Path(sys.argv[1]))
    import spikeinterface.core as sc
    from spikeinterface.sortingcomponents.peak_detection import detect_peaks

    recording, _ = sc.generate_ground_truth_recording(durations=[5.0], num_channels=4, num_units=5, seed=0)
    # Fixed noise levels: spikeinterface estimates them from randomly chosen chunks otherwise.
    peaks = detect_peaks(
        recording,
        method="locally_exclusive",
        method_kwargs={"noise_levels": np.full(4, 10.0)},
        job_kwargs={"n_jobs": 1, "progress_bar": False},
    )
    np.save(sys.argv[2], peaks)
    print(json.dumps(dict(zip(("loaded", "compiled"), jit_cache.counts()))))
    """
)


def test_spikeinterfaces_peak_detection_loaded_from_the_cache_finds_the_same_peaks(tmp_path):
    """The cached code's output is compared on its numba step itself, spikeinterface's peak detection,
    compiled, then loaded: nothing else of a sort (its random draws, its storing) can hide a difference."""
    runs = []
    for name in ("compiled", "loaded"):
        done = subprocess.run(
            [sys.executable, "-c", PEAKS, str(tmp_path / "cache"), str(tmp_path / f"{name}.npy")],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert runs[0]["compiled"] > 0 and runs[0]["loaded"] == 0
    assert runs[1] == {"loaded": runs[0]["compiled"], "compiled": 0}
    compiled, loaded = (np.load(tmp_path / f"{name}.npy") for name in ("compiled", "loaded"))
    assert len(compiled) > 0 and compiled.dtype == loaded.dtype
    assert np.array_equal(compiled, loaded)


def test_a_sorter_mark_names_the_releases_and_machine_that_wrote_it(tmp_path, monkeypatch):
    jit_cache.mark_sorter(tmp_path, "simple", loaded=0, compiled=2)
    assert jit_cache.holds_sorter(tmp_path, "simple")
    [mark] = (tmp_path / jit_cache.SORTER_MARKS).iterdir()
    assert json.loads(mark.read_text())["compiled"] == 2
    real_version = jit_cache.importlib.metadata.version
    monkeypatch.setattr(
        jit_cache.importlib.metadata, "version", lambda p: "0.0.1" if p == "spikeinterface" else real_version(p)
    )
    # Read afresh, as a process of that other release would read it.
    monkeypatch.setattr(jit_cache, "_releases_key", functools.cache(jit_cache._releases_key.__wrapped__))
    assert not jit_cache.holds_sorter(tmp_path, "simple"), "another spikeinterface would compile: no mark for it"


def test_without_a_cache_folder_nothing_is_cached_or_reported(synthetic_studyset, tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    report = _sort_in_a_new_worker(_simple_job(synthetic_studyset, tmp_path / "a", None), tmp_path)
    assert "jit_cache" not in report.details
    assert "JIT cache" not in Path(report.console_path).read_text()


def test_the_engine_puts_the_cache_under_the_work_root_unless_turned_off(tmp_path):
    assert EngineSettings(work_root=str(tmp_path)).jit_cache_dir == str(tmp_path / JIT_CACHE_FOLDER)
    assert EngineSettings(work_root=str(tmp_path), jit_cache=False).jit_cache_dir is None


PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from sf_assets.engines import jit_cache

    jit_cache.PACKAGES = ("sfjitprobe",)
    folder = jit_cache.enable(Path(sys.argv[1]))
    import sfjitprobe.kernels as k          # imported after enable: the import gives its function a cache
    assert k.total(3) == 3 and k.made_inside()(2) == 4
    loaded, compiled = jit_cache.counts()
    print(json.dumps({"folder": str(folder), "loaded": loaded, "compiled": compiled}))
    """
)
KERNELS = textwrap.dedent(
    """
    import numba

    @numba.njit
    def total(n):
        s = 0
        for i in range(n):
            s += 1
        return s

    def made_inside():
        @numba.njit
        def double(x):
            return 2 * x
        return double
    """
)


def _probe(tmp_path: Path, folder: Path, env_extra: dict | None = None) -> dict:
    package = tmp_path / "pkgs" / "sfjitprobe"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text(KERNELS)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{tmp_path / 'pkgs'}", **(env_extra or {})}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(folder)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_functions_of_modules_imported_later_are_cached_once_and_loaded_after(tmp_path):
    folder = tmp_path / "cache"
    first = _probe(tmp_path, folder)
    second = _probe(tmp_path, folder)
    # Only the top-level function counts; the one made inside a function compiles each time, uncounted.
    assert first == {"folder": str(folder), "loaded": 0, "compiled": 1}
    assert second == {"folder": str(folder), "loaded": 1, "compiled": 0}


def test_numbas_own_cache_variable_wins_and_an_unwritable_folder_caches_nothing(tmp_path):
    theirs = tmp_path / "theirs"
    assert _probe(tmp_path, tmp_path / "ours", {"NUMBA_CACHE_DIR": str(theirs)})["folder"] == str(theirs)
    assert any(theirs.rglob("*.nbi")) and not (tmp_path / "ours").exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    result = _probe(tmp_path, blocked / "cache")
    assert result == {"folder": "None", "loaded": 0, "compiled": 0}
