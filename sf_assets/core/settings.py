"""Where sf-assets keeps its data, read from the environment in one place.

Everything the embedded default needs lives under one project data folder,
``SF_ASSETS_HOME`` (default ``./.data`` from the current directory): the
kachery store, the Dagster instance's SQLite files, the workspace database,
the sort work folders and the generated demo studyset.  Each piece can be
pointed elsewhere by its own variable, which is how deployments/ move them
to shared disks and PostgreSQL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    home: Path
    kachery_dir: Path
    kachery_local_only: bool
    workspace_db_url: str
    work_root: Path
    manifest_source: str | None
    spec_source: str
    outputs_dir: Path
    viewers_dir: Path


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    home = Path(env.get("SF_ASSETS_HOME") or Path.cwd() / ".data").resolve()
    return Settings(
        home=home,
        kachery_dir=Path(env.get("SF_ASSETS_KACHERY_DIR") or home / "kachery"),
        # kachery-cloud reaches the cloud only when its client keys exist.
        kachery_local_only=not _truthy(env.get("SF_ASSETS_KACHERY_CLOUD")),
        workspace_db_url=env.get("SF_ASSETS_WORKSPACE_DB") or f"sqlite:///{home / 'workspace.db'}",
        work_root=Path(env.get("SF_ASSETS_WORK_DIR") or home / "sorts"),
        manifest_source=env.get("SF_ASSETS_STUDYSETS") or None,
        spec_source=env.get("SF_ASSETS_SPEC") or str(home / "studyset" / "spec.yaml"),
        outputs_dir=Path(env.get("SF_ASSETS_OUTPUTS") or home / "outputs"),
        # Running `sf-assets view` processes register their URLs here (sf_assets.stores.viewer_links).
        viewers_dir=home / "viewers",
    )
