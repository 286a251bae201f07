"""Parse the addresses SpikeForest files use: kachery URIs and plain paths.

Content in kachery is addressed by the sha1 of its bytes:
``sha1://HASH/name.ext?manifest=...`` names one file (the name and the query
are hints; only the hash identifies the content).  Manifests written before
2021 also use ``sha1dir://HASH.dirname/path/in/dir``, a file inside a stored
directory index.  Anything without a scheme is a local path.  Every other
scheme (``http://``, a typo like ``sha1:/``) is refused here, so a wrong
address fails when the configuration is checked rather than deep inside a run.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from sf_assets.core.errors import UriError

MAX_URI_CHARS = 4096
"""Longer addresses are refused: no real URI or path comes near this."""

_HASH = re.compile(r"[0-9a-f]{40}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):/")
_SCHEMES = ("sha1", "sha1dir")


@dataclass(frozen=True)
class KacheryUri:
    """A parsed ``sha1://`` or ``sha1dir://`` URI.

    Attributes
    ----------
    scheme : {"sha1", "sha1dir"}
        ``sha1`` addresses a file; ``sha1dir`` a file inside a stored directory.
    hash : str
        40 lowercase hex digits: the sha1 of the file (or of the directory index).
    path : str
        For ``sha1``, the file name after the hash (a hint, may be ``""``);
        for ``sha1dir``, the path inside the directory (may be ``""``).
    query : dict[str, str]
        The query parameters, e.g. ``{"manifest": "<sha1>"}``.
    dir_name : str
        For ``sha1dir`` only: the directory's name after ``HASH.`` (may be ``""``).
    """

    scheme: Literal["sha1", "sha1dir"]
    hash: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    dir_name: str = ""

    @property
    def sha1(self) -> str:
        """The content hash."""
        return self.hash

    def __str__(self) -> str:
        head = f"{self.hash}.{self.dir_name}" if self.dir_name else self.hash
        text = f"{self.scheme}://{head}"
        if self.path:
            text += f"/{self.path}"
        if self.query:
            text += "?" + urlencode(self.query)
        return text


def is_kachery_uri(text: str) -> bool:
    """Whether ``text`` starts like a kachery URI (``sha1://`` or ``sha1dir://``).

    It says nothing about whether the rest is valid: :func:`parse_uri` does.

    Parameters
    ----------
    text : str
        A source as the user gave it.

    Returns
    -------
    bool
        True for a kachery URI's scheme.
    """
    return text.startswith(("sha1://", "sha1dir://"))


def parse_uri(text: str, where: str = "") -> KacheryUri | Path:
    """Parse a kachery URI or a local path.

    Parameters
    ----------
    text : str
        ``sha1://HASH[/name][?query]``, ``sha1dir://HASH[.dirname][/path][?query]``
        or a path (no ``scheme:/`` prefix).
    where : str
        Where the text came from (``"spec.yaml: studysets"``), put at the front
        of any error message; messages also quote ``text`` unless ``where`` is
        ``text`` itself.

    Returns
    -------
    KacheryUri | pathlib.Path

    Raises
    ------
    UriError
        Empty text, surrounding spaces, control characters, an unknown scheme,
        a hash that is not 40 lowercase hex digits, or a malformed query.
    """
    prefix = f"{where}: " if where else ""

    def fail(problem: str) -> UriError:
        if where == text:
            return UriError(f"{prefix}{problem}")
        shown = text if len(text) <= 80 else text[:77] + "..."
        return UriError(f"{prefix}{problem} (in {shown!r})")

    if not isinstance(text, str):
        raise UriError(f"{prefix}expected a URI or path as a string, got {type(text).__name__}")
    if not text:
        raise UriError(f"{prefix}expected a sha1:// URI or a path, got an empty string")
    if len(text) > MAX_URI_CHARS:
        raise UriError(f"{prefix}expected a URI or path of at most {MAX_URI_CHARS} characters, got {len(text)}")
    if text != text.strip():
        raise fail("leading or trailing whitespace")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text):
        raise fail("control characters are not allowed")
    scheme = _SCHEME.match(text)
    if scheme is None:
        return Path(text)
    name = scheme.group(1)
    if name not in _SCHEMES or not text.startswith(f"{name}://"):
        raise fail("expected a sha1:// or sha1dir:// URI or a local path")
    rest = text[len(name) + 3 :]
    rest, _, query_text = rest.partition("?")
    head, _, path = rest.partition("/")
    dir_name = ""
    if name == "sha1dir":
        head, _, dir_name = head.partition(".")
    if not _HASH.fullmatch(head):
        raise fail(f"expected 40 lowercase hex digits after {name}://")
    return KacheryUri(name, head, path, _parse_query(query_text, fail), dir_name)


def _parse_query(query_text: str, fail) -> dict[str, str]:
    """The query of a URI as a dict; repeated or malformed parameters fail."""
    if not query_text:
        return {}
    try:
        pairs = parse_qsl(query_text, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise fail("malformed query: expected name=value pairs joined by '&'") from None
    query: dict[str, str] = {}
    for key, value in pairs:
        if not key:
            raise fail("query parameter with an empty name")
        if key in query:
            raise fail(f"query parameter {key!r} appears twice")
        query[key] = value
    return query
