"""Where the command line's Dagster instance and files live, found the same way by every subcommand."""
from __future__ import annotations

from sf_assets.core.errors import SfAssetsError


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


def storage_locations() -> list:
    """Where the command writes, Dagster's storage first: named when a database error names no file."""
    import os
    from pathlib import Path

    from sf_assets.core.settings import load_settings

    settings = load_settings()
    paths = [Path(os.environ.get("SF_ASSETS_DAGSTER_DIR") or settings.home / "dagster")]
    if settings.workspace_db_url.startswith("sqlite:///"):
        paths.append(Path(settings.workspace_db_url[len("sqlite:///") :]))
    return [*paths, settings.work_root, settings.outputs_dir, settings.kachery_dir]
