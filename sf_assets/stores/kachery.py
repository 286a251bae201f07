"""Content-addressed storage of recordings, sortings and console output.

Everything sf-assets stores or loads by ``sha1://`` URI goes through
:class:`KacheryStore`, a thin layer over kachery-cloud that adds the three
things the benchmark relies on:

* **A folder per store.**  kachery-cloud keeps its files under
  ``$KACHERY_CLOUD_DIR`` (``sha1/ab/cd/ef/<hash>``, the layout the successor
  package ``kachery`` 2.x also reads).  In kachery-cloud 0.4.10,
  ``get_kachery_cloud_dir()`` reads that variable again on *every* call (store,
  load, temporary folders, the sha1 cache), so a store sets it around each
  call, under one process-wide lock, and restores it afterwards: two stores
  with different roots then work side by side in one process.  The package is
  imported lazily inside that window too, because importing it creates the
  folder the variable names (``~/.kachery-cloud`` when it is unset) and
  records a sandbox path derived from it.  The lock serialises kachery calls
  between threads; the content check below runs outside it.
* **Verified loads.**  Every load recomputes the sha1 of the bytes it hands
  out and compares it with the URI: a missing or corrupt file is a
  :class:`~sf_assets.core.errors.UriError` naming the URI, never silently wrong
  data.
* **SpikeForest-shaped URIs.**  Stores return ``sha1://HASH/label`` (the form
  the SpikeForest manifests use); queries such as ``?manifest=...`` are hints
  and play no part in the lookup.

``local_only=True`` (the default) never touches the network: kachery-cloud's
``store_file_local`` and ``load_file(..., local_only=True)``.  With
``local_only=False`` and kachery-cloud client keys configured, stores are also
uploaded (``store_file``) and loads fall back to the cloud (``load_file``),
which is how the real SpikeForest data are reached.  Without keys those calls
fail at once with kachery-cloud's "Client keys not found", reported as a
UriError.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sf_assets.core.errors import UriError
from sf_assets.core.folder_names import bounded_name
from sf_assets.core.uris import KacheryUri, parse_uri

_ENV_LOCK = threading.RLock()
"""Guards KACHERY_CLOUD_DIR while a kachery-cloud call runs (see module docstring)."""

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=/-]+")
"""Characters a label may not carry into a URI path (anything else becomes '_')."""

_HASH_BLOCK_BYTES = 1 << 20


def sha1_of_file(path: str | Path) -> str:
    """The sha1 of a file's bytes, as 40 lowercase hex digits.

    Parameters
    ----------
    path : str or Path
        The file (read in chunks: recordings are large).

    Returns
    -------
    str
        The hash.
    """
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _kachery_cloud_in(root_dir: Path) -> Iterator[Any]:
    """The kachery_cloud module, with its storage folder pointed at ``root_dir``."""
    with _ENV_LOCK:
        saved = {name: os.environ.get(name) for name in ("KACHERY_CLOUD_DIR", "KACHERY_CLOUD_USE_SANDBOX")}
        os.environ["KACHERY_CLOUD_DIR"] = str(root_dir)
        # Sandbox mode would redirect every file to a throw-away folder.
        os.environ["KACHERY_CLOUD_USE_SANDBOX"] = "0"
        try:
            import kachery_cloud

            yield kachery_cloud
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class KacheryStore:
    """A kachery-cloud store rooted at a folder the project owns.

    Parameters
    ----------
    root_dir : str | Path
        The folder holding the content (kachery-cloud's ``KACHERY_CLOUD_DIR``
        for this store); created if missing.  Derived data that belong with
        the content (e.g. the MDA folders of loaded recordings) live under
        :meth:`cache_dir`.
    local_only : bool, default: True
        True: never use the network.  False: also upload on store and
        download on load (needs kachery-cloud client keys).
    """

    def __init__(self, root_dir: str | Path, local_only: bool = True) -> None:
        self.root_dir = Path(root_dir).expanduser().resolve()
        self.local_only = bool(local_only)
        self.root_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"KacheryStore({str(self.root_dir)!r}, local_only={self.local_only})"

    def cache_dir(self, name: str) -> Path:
        """A folder under the store root for data derived from stored content.

        Parameters
        ----------
        name : str
            The cache's name (``analyzers``).

        Returns
        -------
        Path
            ``ROOT/sf_assets_cache/NAME``, created if missing.
        """
        path = self.root_dir / "sf_assets_cache" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ----------------------------------------------------------------- store

    def store_file(self, path: str | Path, label: str) -> str:
        """Store a file's content; returns ``sha1://HASH/label``.

        Parameters
        ----------
        path : str | Path
            The file to store (copied into the store).
        label : str
            The file name shown in the URI, e.g. ``raw.mda`` (see :func:`uri_label`).

        Returns
        -------
        str
            The content's URI.
        """
        label = uri_label(label)
        path = Path(path).resolve()
        if not path.is_file():
            raise UriError(f"cannot store {path} as {label!r}: no such file")
        started_ns = time.time_ns()
        with _kachery_cloud_in(self.root_dir) as kc:
            try:
                try:
                    local_uri = kc.store_file_local(str(path))
                except FileExistsError:
                    # Another process stored the same content at the same moment and made the
                    # folder kachery-cloud was about to make (it does not allow for that): again.
                    local_uri = kc.store_file_local(str(path))
                if not self.local_only:
                    kc.store_file(str(path))
            except Exception as exc:
                where = "locally" if self.local_only else "in kachery cloud"
                raise UriError(f"cannot store {path} as {label!r} {where} under {self.root_dir}: {exc}") from exc
        sha1 = parse_uri(local_uri, "kachery-cloud store_file_local").sha1
        self._repair_if_corrupt(sha1, path, started_ns)
        return f"sha1://{sha1}/{label}"

    def _repair_if_corrupt(self, sha1: str, source: Path, started_ns: int) -> None:
        """Replace a stored copy of ``sha1`` that was there before this store and no longer matches.

        kachery-cloud skips the copy when a file of that hash exists, so a
        corrupted copy (a bad disk, a hand edit) would stay corrupt however
        often the same content is stored again: a sort repeated because its
        stored sorting failed to verify would repair nothing.  A copy made by
        this store call is trusted; an older one is checked.
        """
        stored = self.root_dir / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1
        try:
            if stored.stat().st_mtime_ns >= started_ns or sha1_of_file(stored) == sha1:
                return
        except FileNotFoundError:
            return
        fd, tmp_name = tempfile.mkstemp(dir=stored.parent, prefix=f".{sha1}-")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp_name)
            os.replace(tmp_name, stored)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def store_bytes(self, data: bytes, label: str) -> str:
        """Store bytes; returns ``sha1://HASH/label``.

        Parameters
        ----------
        data : bytes
            The content.
        label : str
            The file name shown in the URI.

        Returns
        -------
        str
            The content's URI.
        """
        tmp_dir = self.cache_dir("tmp")
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="store-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.store_file(tmp_name, label)
        finally:
            os.unlink(tmp_name)

    def store_json(self, obj: Any, label: str) -> str:
        """Store a JSON-serialisable object; returns ``sha1://HASH/label``.

        The text is indented like the SpikeForest object files, keeps the
        object's key order and refuses NaN, so the same object always gives
        the same bytes and the same URI.

        Parameters
        ----------
        obj : Any
            The object.
        label : str
            The file name shown in the URI.

        Returns
        -------
        str
            The content's URI.
        """
        try:
            text = json.dumps(obj, indent=4, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"cannot store {label!r} as JSON: {exc} (NaN and infinity have no JSON form: use None)"
            ) from exc
        return self.store_bytes(text.encode("utf-8"), label)

    # ------------------------------------------------------------------ load

    def load_file(self, uri: str) -> Path:
        """A local path to the content of ``uri``, after checking its sha1.

        Parameters
        ----------
        uri : str
            A ``sha1://`` URI.

        Returns
        -------
        Path
            The stored file (read only).

        Raises
        ------
        UriError
            ``uri`` is not a ``sha1://`` URI (``sha1dir://`` included), the
            content is in neither this store nor (when not local-only) the
            cloud, or its sha1 differs from the URI's.
        """
        parsed = self._parse(uri)
        with _kachery_cloud_in(self.root_dir) as kc:
            try:
                # Queries are hints only; a ``location=`` query in particular
                # must not send kachery-cloud to an arbitrary local file.
                found = kc.load_file(f"sha1://{parsed.sha1}", local_only=self.local_only)
            except Exception as exc:
                raise UriError(f"{uri}: kachery-cloud could not fetch sha1 {parsed.sha1}: {exc}") from exc
        if found is None:
            where = f"the local store {self.root_dir}"
            if not self.local_only:
                where += " nor in kachery cloud"
            raise UriError(f"{uri}: content with sha1 {parsed.sha1} is not in {where}")
        path = Path(found)
        actual = sha1_of_file(path)
        if actual != parsed.sha1:
            raise UriError(
                f"{uri}: stored content is corrupt: expected sha1 {parsed.sha1}, "
                f"found sha1 {actual} in {path}"
            )
        return path

    def load_bytes(self, uri: str) -> bytes:
        """The verified content of ``uri`` as bytes (small files only).

        Parameters
        ----------
        uri : str
            A ``sha1://`` URI.

        Returns
        -------
        bytes
            The content.

        Raises
        ------
        UriError
            As :meth:`load_file`.
        """
        parsed = self._parse(uri)
        data = self.load_file(uri).read_bytes()
        # The file could change between the check and the read: check again.
        actual = hashlib.sha1(data).hexdigest()
        if actual != parsed.sha1:
            raise UriError(f"{uri}: content changed while read: expected sha1 {parsed.sha1}, got {actual}")
        return data

    def load_json(self, uri: str) -> Any:
        """The verified content of ``uri`` parsed as JSON.

        Parameters
        ----------
        uri : str
            A ``sha1://`` URI.

        Returns
        -------
        Any
            The parsed content.

        Raises
        ------
        UriError
            As :meth:`load_file`, or when the content is not JSON.
        """
        data = self.load_bytes(uri)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UriError(f"{uri}: expected JSON content: {exc}") from exc

    def _parse(self, uri: str) -> KacheryUri:
        parsed = parse_uri(uri, "kachery URI")
        if not isinstance(parsed, KacheryUri):
            raise UriError(f"{uri!r}: expected a sha1:// URI, got a local path")
        if parsed.scheme == "sha1dir":
            raise UriError(
                f"{uri}: sha1dir:// directories come from the pre-2021 kachery and cannot be "
                "fetched by kachery-cloud; use a manifest in the current schema "
                "(recordingUri / sortingTrueUri as sha1:// URIs)"
            )
        return parsed


def uri_label(label: str) -> str:
    """``label`` made safe as the path of a URI.

    The label is only a hint for people (the hash alone finds the content),
    so instead of failing a store, perhaps after hours of sorting, characters
    other than letters, digits and ``_ . + = - /`` become ``_``, empty
    path parts are dropped, and a part longer than a file name may be is
    shortened (:func:`~sf_assets.core.folder_names.bounded_name`): tools
    that save a download under the URI's last part can always do so.

    Parameters
    ----------
    label : str
        A label, perhaps with spaces or characters a URI path cannot hold.

    Returns
    -------
    str
        The safe label.
    """
    parts = [bounded_name(_LABEL_UNSAFE.sub("_", part)) for part in str(label).split("/") if part]
    parts = [p for p in parts if p not in (".", "..")]
    return "/".join(parts) or "file"
