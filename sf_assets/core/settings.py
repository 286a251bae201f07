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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sf_assets.core.errors import SfAssetsError


@dataclass(frozen=True)
class Settings:
    """Where sf-assets keeps its data and which studyset it serves, as :func:`load_settings` found them.

    Each field has its own variable (``SF_ASSETS_KACHERY_DIR``, ``SF_ASSETS_WORKSPACE_DB``,
    ``SF_ASSETS_WORK_DIR``, ``SF_ASSETS_STUDYSETS``, ``SF_ASSETS_SPEC``, ``SF_ASSETS_OUTPUTS``),
    with a default under ``home``.
    """

    home: Path
    kachery_dir: Path
    kachery_local_only: bool
    workspace_db_url: str
    work_root: Path
    manifest_source: str | None
    spec_source: str
    outputs_dir: Path
    viewers_dir: Path


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
EXPECTED_BOOL_WORDS = "one of 1, true, yes, on, 0, false, no, off"
"""What an error says a yes/no variable may hold."""


def bool_word(text: str) -> bool | None:
    """Read a yes/no word, as every sf-assets environment variable and setting spells it.

    Parameters
    ----------
    text : str
        The word, in any case, with spaces around it or not.

    Returns
    -------
    bool or None
        True for 1/true/yes/on, False for 0/false/no/off, None for anything
        else (the caller names the variable and :data:`EXPECTED_BOOL_WORDS`).
    """
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def env_flag(env: Mapping[str, str], name: str) -> bool | None:
    """Read the yes/no environment variable ``name``; an unknown word is an error, not a silent no.

    Parameters
    ----------
    env : Mapping[str, str]
        The environment.
    name : str
        The variable.

    Returns
    -------
    bool or None
        None when the variable is unset; False when it is empty.

    Raises
    ------
    SfAssetsError
        Naming the variable, its value and the words it may hold.
    """
    value = env.get(name)
    if value is None:
        return None
    if not value.strip():
        return False
    flag = bool_word(value)
    if flag is None:
        raise SfAssetsError(f"environment variable {name}={value!r}: expected {EXPECTED_BOOL_WORDS}")
    return flag


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """The settings the environment gives: the one place sf-assets reads its variables.

    Parameters
    ----------
    environ : dict[str, str] or None
        The environment (None: this process's).

    Returns
    -------
    Settings
        Absolute paths and URLs, defaults filled in.

    Raises
    ------
    SfAssetsError
        If a yes/no variable holds another word.
    """
    env = os.environ if environ is None else environ
    home = Path(env.get("SF_ASSETS_HOME") or Path.cwd() / ".data").resolve()
    return Settings(
        home=home,
        kachery_dir=Path(env.get("SF_ASSETS_KACHERY_DIR") or home / "kachery"),
        # kachery-cloud reaches the cloud only when its client keys exist.
        kachery_local_only=not env_flag(env, "SF_ASSETS_KACHERY_CLOUD"),
        workspace_db_url=env.get("SF_ASSETS_WORKSPACE_DB") or f"sqlite:///{home / 'workspace.db'}",
        work_root=Path(env.get("SF_ASSETS_WORK_DIR") or home / "sorts"),
        manifest_source=env.get("SF_ASSETS_STUDYSETS") or None,
        spec_source=env.get("SF_ASSETS_SPEC") or str(home / "studyset" / "spec.yaml"),
        outputs_dir=Path(env.get("SF_ASSETS_OUTPUTS") or home / "outputs"),
        # Running `sf-assets view` processes register their URLs here (sf_assets.stores.viewer_links).
        viewers_dir=home / "viewers",
    )
