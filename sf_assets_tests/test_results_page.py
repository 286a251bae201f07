"""The static results page: its cells, its drill-down, and the page itself in headless Chromium.

The browser test opens ``outputs/results.html`` of a real campaign (4 good
sortings, 2 deliberately errored ones) from ``file://`` with every network
request refused, and reads each cell from the DOM.
"""
from __future__ import annotations

import re
import shutil

import pytest

from sf_assets.core.comparison import COMPARISON_SETTINGS
from sf_assets.report import results_page as page
from harness.instances import project_instance
from harness.webserver import REPO_ROOT, chromium_context

ARTIFACTS = REPO_ROOT / "test-artifacts" / "results"
CONTEXT = page.PageContext(dict(COMPARISON_SETTINGS), "0.105.3", {"A": "1.0", "B": "2.0"}, "2026-01-01T00:00:00+00:00")


def _pair(sorter, recording, status, accuracy=None, study="s1", study_set="SET"):
    summary = None
    if status == page.OK:
        summary = {"mean_accuracy": accuracy, "num_well_detected": 1, "num_true_units": 2}
    return page.PairResult(sorter, study_set, study, recording, status, summary=summary,
                           units=[{"true_unit_id": 1, "best_unit_id": 3, "accuracy": accuracy, "snr": 9.0}] if summary else [],
                           message="" if summary else "biological failure")


def test_a_cell_with_a_failed_recording_shows_the_failure_and_never_imputes_it():
    cell = page.aggregate([_pair("A", "r1", page.OK, 0.9), _pair("A", "r2", page.ERRORED)])
    assert cell.status == page.ERRORED
    assert cell.mean_accuracy == pytest.approx(0.9)  # over the sorted recording only, and said so
    assert (cell.num_ok, cell.num_pairs) == (1, 2)
    html = page.render_results_page([_pair("A", "r1", page.OK, 0.9), _pair("A", "r2", page.ERRORED)], CONTEXT, {})
    main = html.split('id="main-table"')[1].split("</table>")[0]
    assert 'data-status="errored"' in main and "over 1 of 2 recordings" in main


def test_the_worst_failure_names_the_cell_and_ok_cells_are_coloured_by_accuracy():
    statuses = [page.TIMED_OUT, page.CANNOT_RUN, page.NOT_RUN]
    assert page.aggregate([_pair("A", f"r{i}", s) for i, s in enumerate(statuses)]).status == page.TIMED_OUT
    assert page.aggregate([_pair("A", "r", page.CANNOT_RUN), _pair("A", "q", page.NOT_RUN)]).status == page.CANNOT_RUN
    low, high = page.score_colour(0.1)[0], page.score_colour(0.95)[0]
    assert low != high and sum(int(high[i:i + 2], 16) for i in (1, 3, 5)) < sum(int(low[i:i + 2], 16) for i in (1, 3, 5))


def test_the_page_is_self_contained_and_every_figure_states_its_settings_and_versions():
    pairs = [_pair("A", "r1", page.OK, 0.8), _pair("B", "r1", page.CANNOT_RUN)]
    html = page.render_results_page(pairs, CONTEXT, {"A": b"\x89PNG fake"})
    assert not re.search(r'(src|href)="(https?:)?//', html), "nothing may be fetched from the network"
    assert "default-src 'none'" in html
    assert "data:image/png;base64," in html
    # Under the main table, each study set's table and each scatter: settings and versions.
    assert html.count("spikes matched within 1.0 ms, match mode best") == 2 + 2
    assert html.count("spikeinterface 0.105.3") == 4 and "A 1.0" in html and "B 2.0" in html
    assert "No compared sorting to plot (1 cannot run)" in html


def test_the_summary_writes_the_page_and_links_it_from_its_metadata(benchmark_demo):
    md = benchmark_demo.env.latest_unpartitioned("sorter_summary")
    path = benchmark_demo.env.root / "outputs" / "results.html"
    assert md["results_page"] == path.resolve().as_uri()
    assert md["pairs_by_status"] == {**{t: 0 for t in page.STATUS_TEXT.values()}, "ok": 4, "errored": 2}
    assert not list(path.parent.glob(".results.html.*")), "the page is written under a temporary name, then renamed"


def test_results_page_opens_from_file_with_every_cell_of_the_demo(benchmark_demo):
    path = benchmark_demo.env.root / "outputs" / "results.html"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requested = []
    with chromium_context(viewport=(1300, 900)) as context:
        context.route(re.compile(r"^(?!file:|data:).*"), lambda route: (requested.append(route.request.url), route.abort()))
        browser_page = context.new_page()
        browser_page.goto(path.resolve().as_uri())
        main = browser_page.locator("#main-table td.cell")
        cells = {(c.get_attribute("data-sorter"), c.get_attribute("data-study-set")): c for c in main.all()}
        assert set(cells) == {(s, ss) for s in ("MountainSort5", "Simple") for ss in ("SYNTH_SET_A", "SYNTH_SET_B")}
        assert cells["Simple", "SYNTH_SET_A"].get_attribute("data-status") == "errored"
        assert cells["Simple", "SYNTH_SET_A"].inner_text().strip().upper().startswith("ERRORED")
        assert cells["Simple", "SYNTH_SET_B"].get_attribute("data-status") == "unassigned"
        for study_set in ("SYNTH_SET_A", "SYNTH_SET_B"):
            ok = cells["MountainSort5", study_set]
            assert ok.get_attribute("data-status") == "ok"
            assert re.fullmatch(r"\d\.\d\d\s+\d+/12", ok.inner_text().strip()), ok.inner_text()
            assert "background" in (ok.get_attribute("style") or "")
        # Every sorter x study cell of the drill-down.
        study_cells = browser_page.locator("td.cell[data-study]").all()
        by_study = {(c.get_attribute("data-sorter"), c.get_attribute("data-study")): c.get_attribute("data-status")
                    for c in study_cells}
        assert by_study == {
            ("MountainSort5", "synth_a1_K6_C4"): "ok",
            ("MountainSort5", "synth_b1_K6_C4"): "ok",
            ("Simple", "synth_a1_K6_C4"): "errored",
            ("Simple", "synth_b1_K6_C4"): "unassigned",
        }
        # Down to one recording's pair: the failure, and the command that opens it.
        browser_page.get_by_text("synth_a1_K6_C4", exact=True).last.click()
        pair = browser_page.locator('details.pair[data-pair="Simple/synth_a1_K6_C4/001_synth"]')
        pair.locator("summary").click()
        assert "errored" in pair.inner_text() and "sf-assets view Simple/synth_a1_K6_C4/001_synth" in pair.inner_text()
        assert browser_page.locator('figure.scatter[data-sorter="MountainSort5"] img').evaluate("i => i.naturalWidth") > 0
        browser_page.screenshot(path=ARTIFACTS / "results-page.png", full_page=False)
        browser_page.screenshot(path=ARTIFACTS / "results-page-full.png", full_page=True)
    assert requested == [], f"the page asked the network for {requested}"
    shutil.copyfile(path, ARTIFACTS / "results.html")


def test_each_pair_takes_its_status_from_what_the_event_log_recorded(synthetic_studyset, tmp_path):
    """A timeout and an environment failure are told apart from other errors; a container sort refused
    for lack of a Docker daemon cannot run here, and says why; a pair never run is not run yet."""
    import dagster as dg

    from sf_assets.orchestration.assets.results_page import collect_pair_results
    from sf_assets.orchestration.partitions import pair_key
    from sf_assets_tests.graph_harness import make_env, write_spec

    spec = write_spec(tmp_path / "spec.yaml", synthetic_studyset.manifest_path,
                      {"MountainSort5": {"studysets": ["SYNTH_SET_A", "SYNTH_SET_B"]}})
    (tmp_path / "dagster").mkdir()
    with project_instance(temp_dir=str(tmp_path / "dagster")) as instance:
        env = make_env(tmp_path, synthetic_studyset.store, instance, synthetic_studyset.manifest_path, spec)
        jobs = {(r.study_name, r.name): (s, r) for s, r in env.campaign.jobs}
        console = synthetic_studyset.store.store_json({"text": "x\nTimeoutError: sort took too long\n"}, "c.json")
        for study_recording, failure in ((("synth_a1_K6_C4", "001_synth"), "timeout"),
                                         (("synth_b1_K6_C4", "001_synth"), "environment")):
            sorter_spec, rec = jobs[study_recording]
            instance.report_runless_asset_event(dg.AssetObservation(
                asset_key="sorting", partition=str(pair_key(sorter_spec.name, rec)),
                metadata={"errored": True, "failure_class": failure, "console_out_uri": console},
            ))
        refused = env.with_options(use_container=True).launch(pairs=[jobs["synth_a1_K6_C4", "002_synth"]],
                                                              run_results=False)
        assert "Docker daemon" in refused.sortings[0].error
        assigned = {str(pair_key(s.name, r)): (s, r) for s, r in env.campaign.jobs}
        pairs = collect_pair_results(instance, assigned, synthetic_studyset.store)
    status = {(p.study, p.recording): p.status for p in pairs}
    assert status == {
        ("synth_a1_K6_C4", "001_synth"): page.TIMED_OUT,
        # Refused before sorting (no Docker daemon): an errored record of the environment class.
        ("synth_a1_K6_C4", "002_synth"): page.CANNOT_RUN,
        ("synth_b1_K6_C4", "001_synth"): page.CANNOT_RUN,
        ("synth_b1_K6_C4", "002_synth"): page.NOT_RUN,
    }
    messages = {(p.study, p.recording): p.message for p in pairs}
    timed_out = messages["synth_a1_K6_C4", "001_synth"]
    assert "TimeoutError: sort took too long" in timed_out and console in timed_out
    refused_message = messages["synth_a1_K6_C4", "002_synth"]
    assert "environment failure" in refused_message
    refused_console = refused_message.split("(console output ")[1].rstrip(")")
    assert "Docker daemon" in synthetic_studyset.store.load_json(refused_console)["text"]
