"""The names people see (labels) and the keys Dagster stores (partition keys).

Labels are the SpikeForest workspace names: ``STUDY/RECORDING``,
``Ground-Truth/STUDY/RECORDING`` and ``SORTER/STUDY/RECORDING``.  They cannot be
partition keys as they are: ``/`` nests folders in the filesystem IO manager,
``|`` breaks multi-partition keys and ``,`` breaks backfills in the UI.  So every
label maps to a key limited to ``[A-Za-z0-9_.-]`` by one two-way mapping:

===========================  ===========================
label character              key text
===========================  ===========================
``A-Z a-z 0-9 _``            itself
``/``                        ``.``
``.``                        ``-d``
``-``                        ``--``
anything else                ``-xHH`` per UTF-8 byte
===========================  ===========================

Every label has exactly one key and every key exactly one label; keys that
could not have come from a label (``-x41`` for ``A``, a dangling ``-``) are
refused, so a key read back from Dagster always means one recording.

The rules for the names inside a label live here too (:func:`name_problem`):
the manifest applies them, so no label can be ambiguous or escape a folder.
"""
from __future__ import annotations

import re
import unicodedata

MAX_NAME_CHARS = 128
"""Longest accepted study set, study or recording name (real ones are under 40)."""

GROUND_TRUTH = "Ground-Truth"
"""First part of a ground-truth label; sorts before every sorter name in SpikeForest."""

_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_ESCAPES = {"/": ".", ".": "-d", "-": "--"}
_KEY_TOKEN = re.compile(r"[A-Za-z0-9_]+|\.|-d|--|(?:-x[0-9a-f]{2})+")
_REFUSED_CATEGORIES = ("Cc", "Cs", "Zl", "Zp")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one part of a label, or ``None`` if it can.

    A name must be a non-empty string of at most :data:`MAX_NAME_CHARS`
    characters, without ``/`` (it separates label parts), without control or
    line-break characters, and must not be ``.`` or ``..`` (path traversal
    where labels become folders).

    Parameters
    ----------
    name : str
        A study set, study, recording or sorter name.

    Returns
    -------
    str | None
        A phrase such as ``"contains '/'"``, or ``None``.
    """
    if not isinstance(name, str):
        return "is not a string"
    if not name:
        return "is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name)} characters long (at most {MAX_NAME_CHARS})"
    if name in (".", ".."):
        return f"is {name!r}"
    if "/" in name:
        return "contains '/'"
    for ch in name:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return f"contains the control character U+{ord(ch):04X}"
    return None


def _join(*names: str) -> str:
    for name in names:
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"label part {name!r} {problem}")
    return "/".join(names)


def recording_label(study: str, recording: str) -> str:
    """``STUDY/RECORDING``: the workspace name of a recording.

    Parameters
    ----------
    study : str
        The study's name.
    recording : str
        The recording's name.

    Returns
    -------
    str
        The label.
    """
    return _join(study, recording)


def ground_truth_label(study: str, recording: str) -> str:
    """``Ground-Truth/STUDY/RECORDING``: the workspace name of a ground-truth sorting.

    Parameters
    ----------
    study : str
        The study's name.
    recording : str
        The recording's name.

    Returns
    -------
    str
        The label.
    """
    return _join(GROUND_TRUTH, study, recording)


def sorting_label(sorter: str, study: str, recording: str) -> str:
    """``SORTER/STUDY/RECORDING``: the workspace name of one sorter's sorting.

    Parameters
    ----------
    sorter : str
        The sorter's name as the spec writes it.
    study : str
        The study's name.
    recording : str
        The recording's name.

    Returns
    -------
    str
        The label.
    """
    return _join(sorter, study, recording)


def label_to_partition_key(label: str) -> str:
    """The partition key of ``label`` (see the table in this module's docstring).

    Parameters
    ----------
    label : str
        A workspace label or a sorter name.

    Returns
    -------
    str
        Its key, within ``[A-Za-z0-9_.-]``.

    Raises
    ------
    ValueError
        For an empty label, or one that is not valid Unicode (a lone surrogate).
    """
    if not label:
        raise ValueError("cannot make a partition key from an empty label")
    parts = []
    for ch in label:
        if ch in _PLAIN:
            parts.append(ch)
        elif ch in _ESCAPES:
            parts.append(_ESCAPES[ch])
        else:
            parts.append("".join(f"-x{byte:02x}" for byte in ch.encode("utf-8")))
    return "".join(parts)


def partition_key_to_label(key: str) -> str:
    """The label whose partition key is ``key``: the inverse of :func:`label_to_partition_key`.

    Parameters
    ----------
    key : str
        A partition key.

    Returns
    -------
    str
        The label.

    Raises
    ------
    ValueError
        When ``key`` is not the key of any label: characters outside
        ``[A-Za-z0-9_.-]``, a ``-`` not followed by ``-``, ``d`` or ``xHH``
        (lowercase hex), bytes that are not UTF-8, or an escape used where
        the plain character is required.
    """
    if not key:
        raise ValueError("a partition key cannot be empty")
    parts = []
    position = 0
    while position < len(key):
        token = _KEY_TOKEN.match(key, position)
        if token is None:
            raise ValueError(f"malformed partition key {key!r} at character {position}")
        text = token.group()
        if text == ".":
            parts.append("/")
        elif text == "-d":
            parts.append(".")
        elif text == "--":
            parts.append("-")
        elif text.startswith("-x"):
            try:
                parts.append(bytes.fromhex(text.replace("-x", "")).decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError(f"partition key {key!r} escapes bytes that are not UTF-8: {text}") from None
        else:
            parts.append(text)
        position = token.end()
    label = "".join(parts)
    if label_to_partition_key(label) != key:
        raise ValueError(f"partition key {key!r} is not in canonical form (expected {label_to_partition_key(label)!r})")
    return label
