"""The Dagster UI in a real browser, on a real campaign.

One sorter sorts two of the synthetic recordings on a file-backed instance;
``dagster-webserver`` serves that instance on 127.0.0.1 and Debian's headless
Chromium reads the pages people use: the global asset lineage, the sorting
asset's partitions (sorter x recording) and its canary check.  Every claim is
read from the page's DOM; screenshots go to ``test-artifacts/ui/`` for people.
"""
from __future__ import annotations

from typing import NamedTuple

import dagster as dg
import pytest

from sf_assets.core.labels import sorting_label
from sf_assets.core.manifest import Recording
from sf_assets.definitions import defs
from sf_assets.orchestration.partitions import recording_key
from sf_assets_tests.graph_harness import GraphEnv, make_env, write_spec
from harness.webserver import (
    REPO_ROOT,
    Webserver,
    asset_group_names,
    asset_names,
    chromium_context,
    lineage_url,
    running_webserver,
    settings_environment,
    wait_for_graph_to_settle,
    write_instance_config,
)

SORTER = "MountainSort5"
SORTED_SET = "SYNTH_SET_A"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
WAIT_MS = 60_000
# The chain people follow from a recording to the results, edge by edge.
EDGES = {
    "recording": {"sorting"},
    "sorting": {"sorting_comparison", "workspace_sync"},
    "sorting_comparison": {"sorter_summary"},
}


class Demo(NamedTuple):
    env: GraphEnv
    server: Webserver
    sorted_recordings: list[Recording]
    unsorted_recordings: list[Recording]


@pytest.fixture(scope="module")
def demo(synthetic_studyset, tmp_path_factory):
    """MountainSort5 on SYNTH_SET_A's two recordings, served by a running webserver."""
    root = tmp_path_factory.mktemp("ui")
    home = root / "dagster-home"
    write_instance_config(home)
    spec = write_spec(root / "spec.yaml", synthetic_studyset.manifest_path, {SORTER: {"studysets": [SORTED_SET]}})
    with dg.DagsterInstance.from_config(str(home)) as instance:
        env = make_env(root, synthetic_studyset.store, instance, synthetic_studyset.manifest_path, spec, canary_first_n_s=3.0)
        # Start the server first: its start-up overlaps the sorts.
        with running_webserver(home, settings_environment(env.options), root / "webserver.log") as server:
            outcome = env.launch(workers=1)  # in this process: two workers would each import everything again
            assert [o.error for o in outcome.recordings + outcome.sortings + outcome.results if not o.success] == []
            assert len(outcome.sortings) == 2
            server.wait_until_serving(timeout_s=180)
            recordings = env.campaign.recordings()
            yield Demo(
                env,
                server,
                sorted_recordings=[r for r in recordings if r.study_set_name == SORTED_SET],
                unsorted_recordings=[r for r in recordings if r.study_set_name != SORTED_SET],
            )


@pytest.fixture(scope="module")
def browser_context():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_context() as context:
        context.set_default_timeout(WAIT_MS)
        yield context


@pytest.fixture
def page(browser_context):
    page = browser_context.new_page()
    yield page
    page.close()


def _graph_node(page, name: str):
    return page.locator("svg foreignObject").get_by_text(name, exact=True)


def _materialized_graph_node(page, name: str):
    """The node of an asset drawn as materialized (green) in the zoomed-out graph."""
    green = page.locator('svg foreignObject [style*="--minimal-bg: var(--color-background-green)"]')
    return green.filter(has=page.get_by_text(name, exact=True))


def _drawn_assets(page) -> set[str]:
    return {name for name in asset_names() if _graph_node(page, name).count() > 0}


def test_lineage_draws_every_asset_of_the_code_location(demo, page):
    page.goto(lineage_url(demo.server.url, asset_group_names()))
    # The fan-in results are unpartitioned and were materialized: the graph draws them green
    # once the live status has loaded.
    for name in ("sorter_summary", "workspace_sync"):
        _materialized_graph_node(page, name).first.wait_for()
    wait_for_graph_to_settle(page)
    page.screenshot(path=ARTIFACTS / "lineage.png")
    drawn = _drawn_assets(page)
    assert {"recording", "sorting", "sorting_comparison", "sorter_summary", "workspace_sync"} <= drawn
    assert drawn == set(asset_names())
    assert _materialized_graph_node(page, "sorting").count() == 0  # two of its four partitions only


@pytest.mark.parametrize("upstream", sorted(EDGES))
def test_lineage_links_each_asset_to_its_direct_downstream_assets(demo, page, upstream):
    """The UI's one-layer-downstream selection draws exactly the asset's children."""
    page.goto(lineage_url(demo.server.url, asset_group_names(), selection=f'key:"{upstream}"+1'))
    for name in {upstream} | EDGES[upstream]:
        _graph_node(page, name).first.wait_for()
    wait_for_graph_to_settle(page)
    page.screenshot(path=ARTIFACTS / f"lineage-{upstream}-downstream.png")
    drawn = _drawn_assets(page)
    children = {key.to_user_string() for key in defs.resolve_asset_graph().get(dg.AssetKey(upstream)).child_keys}
    assert EDGES[upstream] <= children
    assert drawn == {upstream} | children
    assert "studysets" not in drawn  # upstream of all three: the selection really is one layer down


def _status_colours(page, partition_key: str) -> str:
    """The colour(s) of the status dot(s) beside a key in a partitions column."""
    row = page.locator(f'[data-tooltip="{partition_key}"]').first
    row.wait_for()
    return row.evaluate(
        """el => [...el.parentElement.children]
            .filter(c => c.style.borderRadius === '100%')
            .map(d => d.style.background).join(' ')"""
    )


def test_sorting_partitions_show_the_sorter_by_recording_grid(demo, page):
    page.goto(f"{demo.server.url}/assets/sorting?view=partitions")
    page.locator(f'[data-tooltip="{SORTER}"]').first.wait_for()
    page.get_by_text("Materialized (2)").first.wait_for()
    assert page.get_by_text("Missing (2)").count() == 1
    for rec in demo.sorted_recordings:
        assert "green" in _status_colours(page, recording_key(rec)), f"{rec.label} should show as sorted"
    for rec in demo.unsorted_recordings:
        colours = _status_colours(page, recording_key(rec))
        assert "green" not in colours and "gray" in colours, f"{rec.label} should show as missing, not {colours}"
    page.screenshot(path=ARTIFACTS / "sorting-partitions.png")

    # One cell of the grid: a sorted recording, then the sorter.
    rec = demo.sorted_recordings[0]
    page.locator(f'[data-tooltip="{recording_key(rec)}"]').first.click()
    page.locator(f'[data-tooltip="{SORTER}"]').first.click()
    page.get_by_text("num_units", exact=True).wait_for()
    page.get_by_text(sorting_label(SORTER, rec.study_name, rec.name), exact=True).wait_for()
    # The partition's metadata says how to open it in the viewer.
    page.get_by_text(f"sf-assets view {sorting_label(SORTER, rec.study_name, rec.name)}", exact=True).wait_for()
    assert f"{recording_key(rec)}|{SORTER}" in page.inner_text("body")
    page.screenshot(path=ARTIFACTS / "sorting-partition-cell.png")


def test_canary_check_shows_a_passed_result_for_each_sort(demo, page):
    page.goto(f"{demo.server.url}/assets/sorting?view=checks")
    page.get_by_text("canary passed").first.wait_for()
    body = page.inner_text("body")
    assert "canary" in body and "Succeeded" in body and "Passed" in body
    assert "canary passed" in body
    page.screenshot(path=ARTIFACTS / "sorting-canary-check.png")

    page.get_by_text("Execution history", exact=True).click()
    rows = page.locator("tr").filter(has_text="canary passed")
    rows.nth(len(demo.sorted_recordings) - 1).wait_for()
    assert rows.count() == len(demo.sorted_recordings)  # one canary before each sort
    assert all(text.startswith("Passed") for text in rows.all_inner_texts())
    page.screenshot(path=ARTIFACTS / "sorting-canary-history.png")
