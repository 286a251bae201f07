"""A real Dagster webserver and Debian's headless Chromium, for tests of the UI.

The webserver runs as its own process group against a persistent instance
folder (``DAGSTER_HOME``), listening on loopback only, and loads the code
location from ``workspace.yaml`` exactly as ``make ui`` does.  The browser is
the system's ``/usr/bin/chromium`` driven through Playwright's bundled
driver: nothing is downloaded.  ``scripts/screenshot_asset_graph.py`` uses
the same pieces to draw the README's picture of the asset graph.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.dagster_dev import console_script, free_loopback_port, start_dagster_process, stop_process_group

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_YAML = REPO_ROOT / "workspace.yaml"
CHROMIUM = "/usr/bin/chromium"
# Running as root needs --no-sandbox; the rest keep Chromium from reaching for the
# network (update checks, sync, field trials), which has no route here anyway.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# The UI's welcome dialog covers every page on localhost until dismissed; this is
# the browser-side record of "dismissed" (the instance side is `nux: enabled: false`).
_DISMISS_WELCOME_DIALOG = "window.localStorage.setItem('communityNux', JSON.stringify('1'));"

INSTANCE_YAML = """\
# A throwaway instance for a UI test: everything under one folder.
storage:
  sqlite:
    base_dir: {home}/storage
local_artifact_storage:
  module: dagster._core.storage.root
  class: LocalArtifactStorage
  config:
    base_dir: {home}
compute_logs:
  module: dagster._core.storage.local_compute_log_manager
  class: LocalComputeLogManager
  config:
    base_dir: {home}/logs
telemetry:
  enabled: false
nux:
  enabled: false
"""


def write_instance_config(home: Path) -> Path:
    """Write ``home/dagster.yaml``: SQLite storage, logs and artifacts under ``home``, and the
    project's run queue and run launcher (from the repository's ``dagster.yaml``).

    Unlike ``dg.instance_for_test`` the instance lives entirely in files, so a
    webserver started as another process sees the same runs and events.
    """
    import yaml

    from harness.instances import project_instance_overrides

    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(
        INSTANCE_YAML.format(home=home.resolve()) + yaml.safe_dump(project_instance_overrides(), sort_keys=False)
    )
    return path


def settings_environment(options) -> dict[str, str]:
    """``SF_ASSETS_*`` variables that point the code location's default resources
    (read by :func:`sf_assets.core.settings.load_settings` at import) at the stores in
    ``options`` (a :class:`sf_assets.cli.launch.RunOptions`)."""
    return {
        "SF_ASSETS_HOME": str(Path(options.work_root).parent),
        "SF_ASSETS_KACHERY_DIR": options.kachery_dir,
        "SF_ASSETS_SPEC": options.spec_source,
        "SF_ASSETS_STUDYSETS": options.manifest_source,
        "SF_ASSETS_WORKSPACE_DB": options.workspace_db_url,
        "SF_ASSETS_WORK_DIR": options.work_root,
        "SF_ASSETS_OUTPUTS": options.outputs_dir,
    }


@dataclass
class Webserver:
    """A started ``dagster-webserver``; ``url`` has no trailing slash."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, num_chars: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-num_chars:]

    def wait_until_serving(self, timeout_s: float = 120.0) -> float:
        """Poll ``/server_info`` until it answers; returns the seconds waited.

        Raises RuntimeError (with the server's log) if the process exits or
        the time runs out.
        """
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dagster-webserver exited with status {self.process.returncode} before serving "
                    f"{self.url}; its log {self.log_path} ends:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(
                    f"dagster-webserver did not answer {self.url}/server_info within {timeout_s:.0f} s; "
                    f"its log {self.log_path} ends:\n{self.log_tail()}"
                )
            time.sleep(0.5)


@contextlib.contextmanager
def running_webserver(
    dagster_home: Path,
    env: dict[str, str],
    log_path: Path,
    *,
    workspace: Path = WORKSPACE_YAML,
    port: int | None = None,
) -> Iterator[Webserver]:
    """Start ``dagster-webserver`` on 127.0.0.1 for ``dagster_home``; stop it on exit.

    ``env`` is laid over this process's environment (the code location reads
    its settings from it).  The server and the code server it spawns share a
    new process group, which is terminated (then killed) at exit.  The caller
    decides when to :meth:`Webserver.wait_until_serving`, so a slow start can
    overlap other work.
    """
    port = port or free_loopback_port()
    command = [console_script("dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    process = start_dagster_process(command, dagster_home, env, log_path, cwd=workspace.parent)
    try:
        yield Webserver(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def chromium_context(viewport: tuple[int, int] = (1600, 1000), device_scale_factor: float = 1.0):
    """A Playwright browser context in Debian's headless Chromium (no download).

    Yields a ``playwright.sync_api.BrowserContext`` whose pages start with the
    UI's welcome dialog already dismissed.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(CHROMIUM_ARGS))
        try:
            context = browser.new_context(
                viewport={"width": viewport[0], "height": viewport[1]}, device_scale_factor=device_scale_factor
            )
            context.add_init_script(_DISMISS_WELCOME_DIALOG)
            yield context
        finally:
            browser.close()


def asset_group_names() -> list[str]:
    """The code location's asset groups, sorted (read from its definitions)."""
    from sf_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    return sorted({graph.get(key).group_name for key in graph.get_all_asset_keys()})


def asset_names() -> list[str]:
    """Every asset key of the code location as the UI prints it, sorted."""
    from sf_assets.definitions import defs

    return sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())


def lineage_url(base_url: str, groups: list[str], selection: str = "") -> str:
    """The global asset lineage page with every group in ``groups`` expanded.

    The UI draws several groups collapsed to one box each; ``expanded`` lists
    the group ids to open (``global@global:NAME`` in Dagster 1.13).
    ``selection`` is an asset selection query (e.g. ``key:"sorting"+1``, the
    sorting asset and one layer downstream), carried in the path after ``~``.
    """
    path = "/asset-groups"
    if selection:
        path += "~" + urllib.parse.quote(selection, safe="") + "/"
    expanded = ",".join(f"global@global:{name}" for name in groups)
    return f"{base_url}{path}?expanded={expanded}"


# The page box around every drawn node and group of the asset graph (null: none drawn).
_GRAPH_BOX_JS = """() => {
    const rects = [...document.querySelectorAll('svg foreignObject')]
        .map(e => e.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0);
    if (!rects.length) return null;
    return {
        left: Math.min(...rects.map(r => r.left)), top: Math.min(...rects.map(r => r.top)),
        right: Math.max(...rects.map(r => r.right)), bottom: Math.max(...rects.map(r => r.bottom)),
    };
}"""


def wait_for_graph_to_settle(page, timeout_s: float = 60.0, poll_s: float = 0.5) -> None:
    """Wait until the drawn asset graph stops moving (the UI lays it out, then zooms to fit)."""
    deadline = time.monotonic() + timeout_s
    previous = None
    while time.monotonic() < deadline:
        box = page.evaluate(_GRAPH_BOX_JS)
        if box is not None and box == previous:
            return
        previous = box
        page.wait_for_timeout(poll_s * 1000)
    raise RuntimeError(f"the asset graph on {page.url} was still moving after {timeout_s:.0f} s")


def graph_clip(page, margin_px: int = 24) -> dict[str, float]:
    """The page region holding the drawn asset graph (nodes and group boxes), plus a margin."""
    box = page.evaluate(_GRAPH_BOX_JS)
    if box is None:
        raise RuntimeError(f"no asset graph is drawn on {page.url}")
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    left, top = max(0.0, box["left"] - margin_px), max(0.0, box["top"] - margin_px)
    right, bottom = min(float(width), box["right"] + margin_px), min(float(height), box["bottom"] + margin_px)
    return {"x": left, "y": top, "width": right - left, "height": bottom - top}
