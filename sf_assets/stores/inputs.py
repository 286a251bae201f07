"""Read the manifest and the spec from wherever the user points: a path or a kachery URI.

The command line, the Dagster resources and the tests all start here, so a
source is read, named and checked the same way everywhere: a missing file, an
unknown scheme or content missing from the store is one
:class:`~sf_assets.core.errors.SfAssetsError` naming the source, and the
manifest and spec are validated against each other before anyone uses them.
"""
from __future__ import annotations

from pathlib import Path

from sf_assets.core.errors import SpecError, UriError
from sf_assets.core.manifest import Manifest, parse_manifest
from sf_assets.core.spec import Spec, parse_spec, validate_spec
from sf_assets.core.uris import KacheryUri, parse_uri
from sf_assets.core.settings import load_settings
from sf_assets.stores.kachery import KacheryStore

KACHERY_DIR_ENV = "SF_ASSETS_KACHERY_DIR"
"""Environment variable naming the default store's folder."""

MAX_SOURCE_BYTES = 64 * 1024 * 1024
"""Largest manifest or spec read (the real 888-recording manifest is far smaller)."""


def default_store_dir() -> Path:
    """The project's kachery folder (:mod:`sf_assets.core.settings`: ``$SF_ASSETS_KACHERY_DIR``,
    else ``$SF_ASSETS_HOME/kachery``)."""
    return load_settings().kachery_dir


def default_store() -> KacheryStore:
    """The project's store in :func:`default_store_dir` (created if missing)."""
    settings = load_settings()
    return KacheryStore(settings.kachery_dir, local_only=settings.kachery_local_only)


def _store_for_reading(source: str, store: KacheryStore | None) -> KacheryStore:
    """``store``, else the default store, without creating it just to find it empty.

    Checking a configuration must write nothing: a default store that does
    not exist yet cannot hold the content, so that is reported instead.
    """
    if store is not None:
        return store
    root_dir = default_store_dir()
    if not root_dir.is_dir():
        raise UriError(
            f"{source}: not in the local kachery store {root_dir}, which does not exist yet "
            f"(set {KACHERY_DIR_ENV} to the store's folder)"
        )
    return default_store()


def read_source(source: str, store: KacheryStore | None) -> tuple[bytes, str]:
    """The bytes of a file or kachery URI, and the name to show for it.

    Parameters
    ----------
    source : str
        A local path or a ``sha1://`` URI.
    store : KacheryStore | None
        Where ``sha1://`` content is looked up; ``None``: the default store
        (:func:`default_store_dir`), used only if it exists.

    Returns
    -------
    tuple[bytes, str]
        The content and ``source`` as given (the name every message uses).

    Raises
    ------
    UriError
        An unparseable source, a missing or unreadable file, a file over
        :data:`MAX_SOURCE_BYTES`, or content the store does not have.
    """
    location = parse_uri(source, source or "''")
    if isinstance(location, KacheryUri):
        return _store_for_reading(source, store).load_bytes(source), source
    try:
        size = location.stat().st_size
        if not location.is_file():
            raise UriError(f"{source}: expected a file, found a folder or device")
        if size > MAX_SOURCE_BYTES:
            raise UriError(f"{source}: file is {size} bytes; expected at most {MAX_SOURCE_BYTES}")
        return location.read_bytes(), source
    except FileNotFoundError:
        raise UriError(f"{source}: no such file") from None
    except OSError as exc:
        raise UriError(f"{source}: cannot read: {exc.strerror or exc}") from None


def load_manifest(source: str, store: KacheryStore | None) -> Manifest:
    """The manifest at ``source`` (path or ``sha1://`` URI), parsed and checked."""
    raw, name = read_source(source, store)
    return parse_manifest(raw, name)


def load_spec(source: str, store: KacheryStore | None = None) -> Spec:
    """The spec at ``source`` (path or ``sha1://`` URI), parsed and checked on its own."""
    raw, name = read_source(source, store)
    return parse_spec(raw, name)


def manifest_source_of(spec: Spec) -> str:
    """Where the spec's ``studysets`` points, a relative path taken from the spec's folder.

    Raises
    ------
    SpecError
        When the spec has no ``studysets`` key.
    UriError
        When ``studysets`` is neither a path nor a ``sha1://`` URI.
    """
    if spec.studysets_uri is None:
        raise SpecError(
            f"{spec.source}: studysets: missing key; expected the manifest's URI here, "
            "or a manifest given with -s/--study-source-file"
        )
    location = parse_uri(spec.studysets_uri, f"{spec.source}: studysets")
    if isinstance(location, KacheryUri) or location.is_absolute():
        return spec.studysets_uri
    spec_location = parse_uri(spec.source)
    if isinstance(spec_location, KacheryUri):
        return spec.studysets_uri
    return str(spec_location.parent / location)


def load_config(
    manifest_source: str | None, spec_source: str, store: KacheryStore | None, *, strict: bool = False
) -> tuple[Manifest, Spec]:
    """The manifest and spec of a run, checked against each other.

    Parameters
    ----------
    manifest_source : str | None
        The manifest (path or ``sha1://`` URI); ``None`` uses the spec's
        ``studysets`` (see :func:`manifest_source_of`).
    spec_source : str
        The spec (path or ``sha1://`` URI).
    store : KacheryStore | None
        For ``sha1://`` sources; ``None``: :func:`default_store`, when needed.
    strict : bool
        Refuse a spec naming a sorter that cannot run here (``--strict``).

    Raises
    ------
    SfAssetsError
        The first problem found, naming its file.
    """
    spec = load_spec(spec_source, store)
    manifest = load_manifest(manifest_source if manifest_source is not None else manifest_source_of(spec), store)
    validate_spec(spec, manifest, strict=strict)
    return manifest, spec
