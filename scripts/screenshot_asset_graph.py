"""Draw docs/asset-graph.png: the global asset lineage as the Dagster UI shows it.

Starts ``dagster-webserver`` on 127.0.0.1 for an instance, opens the global
asset lineage in Debian's headless Chromium with every group expanded and the
side panels hidden, and saves the part of the page that holds the graph.

Regenerate the README picture after ``make demo`` (so the nodes show real
materializations):

    .venv/bin/python scripts/screenshot_asset_graph.py

By default it reads the project's own instance (``DAGSTER_HOME`` = the
repository, data under ``$SF_ASSETS_DAGSTER_DIR``, as ``make ui`` does);
``--dagster-home DIR`` reads another one.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from harness.webserver import (
    REPO_ROOT,
    asset_group_names,
    chromium_context,
    graph_clip,
    lineage_url,
    running_webserver,
    wait_for_graph_to_settle,
)

WAIT_MS = 60_000


def project_environment() -> dict[str, str]:
    """The variables ``make ui`` sets, where the caller has not set them."""
    home = os.environ.get("SF_ASSETS_HOME") or str(REPO_ROOT / ".data")
    return {
        "SF_ASSETS_HOME": home,
        "SF_ASSETS_DAGSTER_DIR": os.environ.get("SF_ASSETS_DAGSTER_DIR") or str(Path(home) / "dagster"),
    }


def screenshot_asset_graph(
    dagster_home: Path, out: Path, *, viewport: tuple[int, int] = (2400, 1300), scale: float = 1.0
) -> Path:
    """Save the lineage graph of the instance at ``dagster_home`` to ``out`` (PNG).

    The large ``viewport`` lets the UI draw full nodes (status, partitions,
    checks) rather than bare names; the saved PNG is cropped to the graph
    (about 1700 x 950 px, under 200 KB at ``scale`` 1.0).
    """
    env = project_environment()
    if dagster_home == REPO_ROOT:  # the project's dagster.yaml keeps its files there
        Path(env["SF_ASSETS_DAGSTER_DIR"]).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="asset-graph-") as scratch:
        log_path = Path(scratch) / "webserver.log"
        with running_webserver(dagster_home, env, log_path) as server:
            server.wait_until_serving(timeout_s=180)
            with chromium_context(viewport=viewport, device_scale_factor=scale) as context:
                context.set_default_timeout(WAIT_MS)
                page = context.new_page()
                page.goto(lineage_url(server.url, asset_group_names()))
                page.locator("svg foreignObject").get_by_text("workspace_sync", exact=True).first.wait_for()
                page.get_by_text("Hide navigation", exact=True).click()
                page.locator('button:has([aria-label="panel_show_right"])').click()
                # Each full node ends with its latest status once the live data is in.
                page.locator("svg foreignObject").get_by_text("Materialized", exact=False).first.wait_for()
                wait_for_graph_to_settle(page)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=out, clip=graph_clip(page))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dagster-home", type=Path, default=REPO_ROOT, help="instance folder (default: the repository's)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "asset-graph.png")
    args = parser.parse_args(argv)
    out = screenshot_asset_graph(args.dagster_home.resolve(), args.out)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
