"""Where the command line's Dagster instance and files live, found the same way by every subcommand."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from sf_assets.core.errors import SfAssetsError

RUN_LAUNCHER = ("sf_assets.orchestration.run_launcher", "SortServiceRunLauncher")
"""The project's run launcher as ``dagster.yaml`` names it (module, class)."""


def ensure_dagster_home() -> None:
    """Use the project's dagster.yaml (SQLite under the data folder) unless DAGSTER_HOME is set."""
    import os
    from pathlib import Path

    from sf_assets.core.settings import load_settings

    settings = load_settings()
    os.environ.setdefault("SF_ASSETS_DAGSTER_DIR", str(settings.home / "dagster"))
    Path(os.environ["SF_ASSETS_DAGSTER_DIR"]).mkdir(parents=True, exist_ok=True)
    if not os.environ.get("DAGSTER_HOME"):
        if not Path("dagster.yaml").exists():
            raise SfAssetsError(
                "DAGSTER_HOME is not set and there is no dagster.yaml in the current folder: run from the "
                "sf-assets checkout or set DAGSTER_HOME to a folder holding a dagster.yaml"
            )
        os.environ["DAGSTER_HOME"] = str(Path.cwd())


def launcher_config(dagster_yaml) -> dict | None:
    """The project's run launcher's config in ``dagster_yaml``, or None when it names another launcher.

    Read without Dagster, for :func:`start_sort_service_early`.  The launcher's
    fields are plain numbers and strings in Dagster's config schema, so a value
    that is not one (an ``env:`` mapping, which that schema refuses) also gives
    None: the instance then reports the error itself.

    Parameters
    ----------
    dagster_yaml : Path
        An instance's ``dagster.yaml``.

    Returns
    -------
    dict or None
        The launcher's config fields.
    """
    import yaml

    try:
        document = yaml.safe_load(dagster_yaml.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    launcher = document.get("run_launcher") if isinstance(document, dict) else None
    if not isinstance(launcher, dict) or (launcher.get("module"), launcher.get("class")) != RUN_LAUNCHER:
        return None
    config = launcher.get("config") or {}
    if not isinstance(config, dict) or not all(isinstance(v, (int, float, str)) for v in config.values()):
        return None
    return config


def start_sort_service_early() -> None:
    """Find the instance (:func:`ensure_dagster_home`) and start its sort service in the background, if its runs use one.

    Before a launch's first run can start, the service's run host imports
    Dagster, the code location and spikeinterface (about 4 s on two busy
    cores).  The launch starts the service too, once the instance is open; begun
    here, after the inputs are validated, that wait overlaps the command's own
    imports and the instance's opening.  A launcher that is not the project's,
    or a failed start, does nothing here: the launch reports it.
    """
    import os
    from pathlib import Path

    ensure_dagster_home()
    config = launcher_config(Path(os.environ["DAGSTER_HOME"]) / "dagster.yaml")
    if config is None:
        return

    from sf_assets.engines.engine import launcher_service
    from sf_assets.engines.service_client import connect

    start_in_background(lambda: connect(launcher_service(config)).close())


def start_in_background(start: Callable[[], None]) -> None:
    """Run ``start`` in a daemon thread; an error is left for the first run's launch to report, with its context.

    Parameters
    ----------
    start : callable
        Starts the host's sort service.
    """

    def run() -> None:
        with contextlib.suppress(Exception):
            start()

    threading.Thread(target=run, name="sort-service-start", daemon=True).start()


def storage_locations() -> list:
    """Where the command writes, Dagster's storage first: named when a database error names no file.

    Returns
    -------
    list[Path]
        The Dagster storage folder, the workspace database file (SQLite), the sort work root, the
        outputs folder and the kachery store.
    """
    import os
    from pathlib import Path

    from sf_assets.core.settings import load_settings

    settings = load_settings()
    paths = [Path(os.environ.get("SF_ASSETS_DAGSTER_DIR") or settings.home / "dagster")]
    if settings.workspace_db_url.startswith("sqlite:///"):
        paths.append(Path(settings.workspace_db_url[len("sqlite:///") :]))
    return [*paths, settings.work_root, settings.outputs_dir, settings.kachery_dir]
