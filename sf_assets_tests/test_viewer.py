"""``sf-assets view``: labels, agreement, the analyzer cache, bad input, and the page in Chromium.

The viewer runs as people run it (``python -m sf_assets.cli view LABEL``, a
process of its own) against a real campaign on a file-backed instance
(:func:`benchmark_demo`); headless Chromium reads what it serves.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from sf_assets.cli import main
from sf_assets.core.workspace_plan import RECORDING, SORTING, WorkspaceEntry
from sf_assets.stores.kachery import KacheryStore
from sf_assets.stores.workspace import WorkspaceStore
from sf_assets.viewer.agreement import sorted_unit_agreement, true_unit_agreement
from sf_assets.viewer.analyzer import analyzer_folder_name
from sf_assets.stores.viewer_links import register_viewer, running_viewer_url, unregister_viewer, view_command
from sf_assets.viewer.resolve import resolve_target
from sf_assets.core.errors import ViewerError
from sf_assets.viewer.target import ERRORED_SORTING, GROUND_TRUTH_KIND, SORTING as SORTING_KIND
from harness.webserver import REPO_ROOT, chromium_context, free_loopback_port

ARTIFACTS = REPO_ROOT / "test-artifacts" / "viewer"
SORTED = "MountainSort5/synth_a1_K6_C4/001_synth"
ERRORED = "Simple/synth_a1_K6_C4/001_synth"
TRUTH = "Ground-Truth/synth_a1_K6_C4/001_synth"
SERVE_TIMEOUT_S = 300


# ------------------------------------------------------------------ pure parts


def test_running_viewers_are_found_by_label_and_forgotten_when_gone(tmp_path):
    assert running_viewer_url(tmp_path, SORTED) is None
    path = register_viewer(tmp_path, SORTED, "http://127.0.0.1:5000/")
    assert running_viewer_url(tmp_path, SORTED) == "http://127.0.0.1:5000/"
    assert running_viewer_url(tmp_path, ERRORED) is None
    unregister_viewer(path)
    assert running_viewer_url(tmp_path, SORTED) is None
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    register_viewer(tmp_path, SORTED, "http://127.0.0.1:5001/", pid=dead.pid)
    assert running_viewer_url(tmp_path, SORTED) is None, "a viewer whose process is gone has no URL"
    assert view_command("A b/c/d") == "sf-assets view 'A b/c/d'"


def test_metadata_carries_the_url_of_a_running_viewer_and_the_command_otherwise(tmp_path, monkeypatch):
    import dagster as dg

    from sf_assets.orchestration.assets.view_links import NO_VIEWER, labels_to_view, view_metadata

    monkeypatch.setenv("SF_ASSETS_HOME", str(tmp_path))
    assert view_metadata(SORTED)["viewer_url"] == dg.MetadataValue.text(NO_VIEWER)
    path = register_viewer(tmp_path / "viewers", SORTED, "http://127.0.0.1:5002/")  # this process: alive
    md = view_metadata(SORTED)
    assert md["view"] == dg.MetadataValue.text(f"sf-assets view {SORTED}")
    assert md["viewer_url"] == dg.MetadataValue.url("http://127.0.0.1:5002/")
    listed = labels_to_view([SORTED, TRUTH]).value
    assert "[http://127.0.0.1:5002/](http://127.0.0.1:5002/)" in listed and f"`sf-assets view {TRUTH}`" in listed
    unregister_viewer(path)
    assert view_metadata(SORTED)["viewer_url"] == dg.MetadataValue.text(NO_VIEWER)


def test_each_sorted_unit_gets_its_most_accurate_true_unit():
    rows = [
        {"true_unit_id": 1, "best_unit_id": 7, "accuracy": 0.4, "snr": 5.0},
        {"true_unit_id": 2, "best_unit_id": 7, "accuracy": 0.9, "snr": 20.0},
        {"true_unit_id": 3, "best_unit_id": None, "accuracy": 0.0, "snr": 3.0},
    ]
    columns = sorted_unit_agreement([7, 8], rows)
    assert columns["gt_unit"] == ["2", ""]
    assert columns["gt_accuracy"][0] == 0.9 and np.isnan(columns["gt_accuracy"][1])
    assert columns["gt_snr"][0] == 20.0
    truth = true_unit_agreement([1, 2, 3], {"1": 5.0, "2": None, "3": 3.0}, {"S": rows})
    assert truth["snr"][0] == 5.0 and np.isnan(truth["snr"][1])
    assert truth["accuracy_S"] == [0.4, 0.9, 0.0]


# ------------------------------------------------------------ labels -> targets


@pytest.fixture
def workspace(benchmark_demo):
    store = WorkspaceStore(benchmark_demo.env.options.workspace_db_url)
    yield store
    store.dispose()


def test_labels_resolve_to_their_sorting_ground_truth_or_console(benchmark_demo, workspace):
    instance = benchmark_demo.env.instance
    sorted_target = resolve_target(SORTED, workspace, instance)
    assert sorted_target.kind == SORTING_KIND
    sorting_md = benchmark_demo.env.latest("sorting")["synth_a1_K6_C4.001_synth|MountainSort5"]
    comparison_md = benchmark_demo.env.latest("sorting_comparison")["synth_a1_K6_C4.001_synth|MountainSort5"]
    assert sorted_target.sorting_uri == sorting_md["sorting_object_uri"]
    assert sorted_target.comparison_uri == comparison_md["comparison_uri"], "the stored comparison, reused"
    assert sorted_target.snrs_uri.startswith("sha1://")

    truth = resolve_target(TRUTH, workspace, instance)
    assert truth.kind == GROUND_TRUTH_KIND and list(truth.comparisons) == ["MountainSort5"]

    errored = resolve_target(ERRORED, workspace, instance)
    assert errored.kind == ERRORED_SORTING and errored.console_out_uri.startswith("sha1://")

    with pytest.raises(ViewerError, match="did you mean MountainSort5/synth_a1_K6_C4/001_synth"):
        resolve_target("MountainSort5/synth_a1_K6_C4/001_synht", workspace, instance)
    with pytest.raises(ViewerError, match="is a recording"):
        resolve_target("synth_a1_K6_C4/001_synth", workspace, instance)


def test_sorting_and_comparison_partitions_and_the_workspace_carry_the_view_command(benchmark_demo):
    key = "synth_a1_K6_C4.001_synth|MountainSort5"
    for asset in ("sorting", "sorting_comparison"):
        md = benchmark_demo.env.latest(asset)[key]
        assert md["view"] == f"sf-assets view {SORTED}"
        assert md["viewer_url"] == "none running (run the view command)"
    errored = benchmark_demo.env.latest("sorting", observations=True)["synth_a1_K6_C4.001_synth|Simple"]
    assert errored["view"] == f"sf-assets view {ERRORED}"
    listed = benchmark_demo.env.latest_unpartitioned("workspace_sync")["labels_to_view"]
    assert f"| `{SORTED}` | `sf-assets view {SORTED}` |" in listed
    assert f"| `{TRUTH}` | `sf-assets view {TRUTH}` |" in listed
    assert "`synth_a1_K6_C4/001_synth`" not in listed, "a recording alone is not a label the viewer opens"


# ------------------------------------------------------------------ bad input


@pytest.fixture
def viewer_env(benchmark_demo, monkeypatch):
    for name, value in benchmark_demo.environment.items():
        monkeypatch.setenv(name, value)
    # The command sets it when missing: set here, so the test leaves the environment as it found it.
    monkeypatch.setenv("SF_ASSETS_DAGSTER_DIR", str(benchmark_demo.dagster_home / "storage"))
    return benchmark_demo


def _cache_listing(store: KacheryStore) -> list[str]:
    return sorted(p.name for p in store.cache_dir("analyzers").iterdir())


def _broken_workspace(benchmark_demo, sorting_uri: str) -> str:
    """A workspace whose sorting ``SORTED`` names ``sorting_uri``; its recording is the real one."""
    store = WorkspaceStore(benchmark_demo.env.options.workspace_db_url)
    try:
        uri = store.create_workspace("broken")
        real = {e.label: e for e in store.list_entries(store.workspace_by_name("default"))}
        rec = real["synth_a1_K6_C4/001_synth"]
        store.sync(uri, [
            WorkspaceEntry(rec.label, RECORDING, rec.uri, rec.study_name, rec.recording_name),
            WorkspaceEntry(SORTED, SORTING, sorting_uri, rec.study_name, rec.recording_name,
                           sorter_name="MountainSort5", details={"recording_label": rec.label}),
        ])
        return uri
    finally:
        store.dispose()


def _view_fails(capsys, *argv) -> str:
    assert main(["view", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sf-assets: error: "), err
    return err


def test_bad_labels_give_one_line_and_exit_2(viewer_env, capsys):
    err = _view_fails(capsys, "NoSuchSorter/synth_a1_K6_C4/001_synth")
    assert "no sorting or ground truth labelled 'NoSuchSorter/synth_a1_K6_C4/001_synth'" in err
    assert "workspace.db" in err, "the message names the database it looked in"
    assert "is malformed" in _view_fails(capsys, "just-one-part")
    assert "does not exist" in _view_fails(capsys, SORTED, "-W", "workspace://" + "0" * 32)


def test_a_missing_or_corrupted_object_gives_one_line_and_writes_nothing(viewer_env, capsys):
    store = KacheryStore(viewer_env.env.options.kachery_dir)
    before = _cache_listing(store)
    missing = f"sha1://{'ab' * 20}/missing.sorting.json"
    err = _view_fails(capsys, SORTED, "-W", _broken_workspace(viewer_env, missing))
    assert missing in err and "is not in the local store" in err

    corrupt_uri = store.store_json({"firings": "sha1://" + "cd" * 20 + "/f.mda", "nonce": time.time()}, "c.json")
    path = store.load_file(corrupt_uri)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes().replace(b"firings", b"FIRINGS"))
    err = _view_fails(capsys, SORTED, "-W", _broken_workspace(viewer_env, corrupt_uri))
    assert "stored content is corrupt" in err and corrupt_uri in err
    assert _cache_listing(store) == before, "no analyzer folder, not even a temporary one, is left behind"
    assert not (Path(viewer_env.environment["SF_ASSETS_HOME"]) / "viewers").exists() or not list(
        (Path(viewer_env.environment["SF_ASSETS_HOME"]) / "viewers").glob("*.json")
    ), "nothing was served, so nothing was registered"


# ------------------------------------------------------------ in the browser


@contextmanager
def running_viewer(benchmark_demo, label: str, log_path: Path):
    """``sf-assets view LABEL`` as its own process group; yields (url, lines printed, seconds to serve)."""
    port = free_loopback_port()
    env = {**os.environ, **benchmark_demo.environment, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sf_assets.cli", "view", label, "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        while True:
            text = log_path.read_text(errors="replace")
            if re.search(r"^serving http://127\.0\.0\.1:\d+/", text, re.M):
                break
            if process.poll() is not None or time.monotonic() - started > SERVE_TIMEOUT_S:
                raise AssertionError(f"the viewer did not start serving {label}; its output:\n{text[-4000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/", text, time.monotonic() - started
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=20)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def _drawn_above(page, tab_title: str, width: int = 300, height: int = 260) -> float:
    """The share of non-white pixels in the plot area above a view's tab (0: nothing drawn)."""
    import matplotlib.image as mpimg

    tab = page.get_by_text(tab_title, exact=True).filter(visible=True).first
    tab.scroll_into_view_if_needed()
    box = tab.bounding_box()
    shot = mpimg.imread(io.BytesIO(page.screenshot()))[..., :3]
    top = max(0, int(box["y"]) - height)
    region = shot[top:int(box["y"]) - 10, int(box["x"]):int(box["x"]) + width]
    return float((region.sum(axis=2) < 2.9).mean())


def _wait_for_drawing(page, tab_title: str, timeout_s: float = 120.0) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        share = _drawn_above(page, tab_title)
        if share > 0.3 or time.monotonic() > deadline:
            return share
        page.wait_for_timeout(1000)


def test_viewer_serves_a_sorting_with_its_units_waveforms_and_agreement(benchmark_demo):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    store = KacheryStore(benchmark_demo.env.options.kachery_dir)
    target = resolve_target(SORTED, WorkspaceStore(benchmark_demo.env.options.workspace_db_url),
                            benchmark_demo.env.instance)
    from sf_assets.core.uris import parse_uri

    folder = store.cache_dir("analyzers") / analyzer_folder_name(
        parse_uri(target.sorting_uri).sha1, parse_uri(target.recording_uri).sha1
    )
    assert not folder.exists()
    comparison = store.load_json(target.comparison_uri)["units"]
    with running_viewer(benchmark_demo, SORTED, ARTIFACTS / "viewer-first.log") as (url, first_log, first_s):
        assert "analyzer built in" in first_log and folder.is_dir()
        registry = Path(benchmark_demo.environment["SF_ASSETS_HOME"]) / "viewers"
        assert running_viewer_url(registry, SORTED) == url, "a running viewer registers its URL"
        with chromium_context(viewport=(1600, 1000)) as context:
            page = context.new_page()
            page.goto(url)
            page.get_by_text("Ground-truth agreement").wait_for(timeout=120_000)
            # The unit table: one row per sorted unit, with the agreement columns.
            rows = page.locator(".tabulator-row")
            rows.first.wait_for(timeout=120_000)
            num_units = int(re.match(r"(\d+) units", page.locator("p.unit-count").inner_text()).group(1))
            assert rows.count() == num_units > 0
            titles = page.locator(".tabulator-col-title").all_inner_texts()
            assert {"unit_id", "gt_unit", "gt_accuracy", "gt_snr"} <= set(titles)
            # The agreement table lists every true unit of the stored comparison.
            agreement = page.locator("table.agreement tbody tr")
            assert agreement.count() == len(comparison)
            best = max(comparison, key=lambda r: r["accuracy"])
            assert f"{best['accuracy']:.2f}" in page.locator("table.agreement").inner_text()
            # The waveform view drew its traces.
            assert _wait_for_drawing(page, "waveform") > 0.3, "the waveform view stayed blank"
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=ARTIFACTS / "viewer.png")
    assert running_viewer_url(registry, SORTED) is None, "a stopped viewer removes its registration"
    assert list(folder.parent.glob("glasbey-*.json")), "the unit palette is kept for the next open"

    with running_viewer(benchmark_demo, SORTED, ARTIFACTS / "viewer-second.log") as (_url, second_log, second_s):
        assert "analyzer loaded from the cache in" in second_log
        cached_s = float(re.search(r"loaded from the cache in ([\d.]+) s", second_log).group(1))
        built_s = float(re.search(r"analyzer built in ([\d.]+) s", first_log).group(1))
    assert cached_s < 5.0 and cached_s < built_s / 2
    (ARTIFACTS / "timings.json").write_text(json.dumps(
        {"analyzer_built_s": built_s, "analyzer_from_cache_s": cached_s,
         "first_open_to_serving_s": round(first_s, 2), "second_open_to_serving_s": round(second_s, 2)}, indent=2))
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no temporary folder left behind"


def test_an_errored_sorting_opens_its_console(benchmark_demo):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_viewer(benchmark_demo, ERRORED, ARTIFACTS / "viewer-errored.log") as (url, log, _):
        assert "console output" in log
        with chromium_context(viewport=(1300, 800)) as context:
            page = context.new_page()
            page.goto(url)
            page.get_by_text("the sort errored").wait_for(timeout=60_000)
            console = page.locator("pre.console")
            assert "unknown clustering method no_such_clusterer" in console.inner_text()
            page.screenshot(path=ARTIFACTS / "viewer-errored.png")


def test_analyzer_cache_key_is_the_content():
    assert analyzer_folder_name("a" * 40, "b" * 40) != analyzer_folder_name("a" * 40, "c" * 40)
    assert analyzer_folder_name("a" * 40, "b" * 40).startswith("a" * 40 + "-" + "b" * 40)


def test_a_ground_truth_opens_with_snr_and_each_sorters_accuracy_and_a_broken_cache_is_rebuilt(
    benchmark_demo, workspace, tmp_path
):
    import shutil

    from sf_assets.viewer.app import load_view

    store = KacheryStore(benchmark_demo.env.options.kachery_dir)
    target = resolve_target(TRUTH, workspace, benchmark_demo.env.instance)
    view = load_view(target, store, tmp_path / "analyzers")
    true_units = list(view.analyzer.unit_ids)
    assert set(view.unit_properties) == {"snr", "accuracy_MountainSort5"}
    stored = {str(r["true_unit_id"]): r["accuracy"] for r in store.load_json(target.comparisons["MountainSort5"])["units"]}
    assert view.unit_properties["accuracy_MountainSort5"] == [stored[str(u)] for u in true_units]
    assert "accuracy_MountainSort5" in view.header_html and "analyzer built in" in view.timing
    [folder] = [p for p in (tmp_path / "analyzers").iterdir()]
    shutil.rmtree(folder / "extensions" / "templates")  # a damaged cache entry
    again = load_view(target, store, tmp_path / "analyzers")
    assert "analyzer built in" in again.timing, "a cache entry that no longer loads is built again"
    assert (folder / "extensions" / "templates").is_dir()
    assert [p.name for p in (tmp_path / "analyzers").iterdir()] == [folder.name]
