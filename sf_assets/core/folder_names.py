"""Folder and file names derived from labels, bounded by what the filesystem accepts.

Names the manifest accepts are up to 128 characters each
(:data:`~sf_assets.core.labels.MAX_NAME_CHARS`), and a partition key escapes
every byte outside ``[A-Za-z0-9_]`` as ``-xHH`` (four characters), so the key
of one ``STUDY/RECORDING`` label can reach about 4,000 characters; Linux
filesystems refuse a path component over 255 bytes (``File name too long``).
:func:`bounded_name` keeps a name that fits and shortens one that does not to a
readable prefix plus a hash of the whole name, so every accepted label still
gets its own folder.

The sort work folders are laid out here too: one folder per (sorter,
recording) pair, and inside it one folder per sort attempt, named after the
Dagster run and the step's retry number, so two attempts never share a
console, a CPU-time account or a sorter output folder.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sf_assets.core.labels import label_to_partition_key, recording_label

MAX_NAME_BYTES = 255
"""Longest file or folder name (bytes) on ext4, XFS, btrfs, tmpfs and NFS."""

HASH_CHARS = 16
"""Hex digits of the sha1 that end a shortened name (64 bits: no collision among millions of names)."""

HASH_MARK = "+"
"""Separates a shortened name's prefix from its hash; never part of a partition key, so a
shortened name cannot equal a name kept whole."""

_ATTEMPT_NAME = re.compile(r"^(?P<run_id>[A-Za-z0-9_-]{1,64})-a(?P<attempt>[0-9]{1,6})$")


def bounded_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` if its UTF-8 form fits in ``max_bytes``, else a readable prefix and a hash.

    Parameters
    ----------
    name : str
        A non-empty folder or file name (no ``/``).
    max_bytes : int, default: 255
        The limit, in bytes of UTF-8.

    Returns
    -------
    str
        ``name`` itself, or ``PREFIX+HHHHHHHHHHHHHHHH``: the longest prefix of
        ``name`` (whole characters) that leaves room for the mark and the first
        16 hex digits of the sha1 of the whole name.  Different names give
        different results; the same name always gives the same result.
    """
    encoded = name.encode("utf-8")
    if len(encoded) <= max_bytes:
        return name
    suffix = HASH_MARK + hashlib.sha1(encoded).hexdigest()[:HASH_CHARS]
    prefix = encoded[: max_bytes - len(suffix)].decode("utf-8", errors="ignore")
    return prefix + suffix


def pair_folder(work_root: str | Path, sorter_name: str, study_name: str, recording_name: str) -> Path:
    """The folder that holds every sort attempt of one (sorter, recording) pair.

    ``WORK_ROOT/<sorter key>/<recording key>``, each part the partition key
    (see :mod:`sf_assets.core.labels`) bounded by :func:`bounded_name`.

    Parameters
    ----------
    work_root : str or Path
        The sort work root.
    sorter_name : str
        The sorter.
    study_name : str
        The recording's study.
    recording_name : str
        The recording.

    Returns
    -------
    Path
        The folder (not created).
    """
    sorter_part = bounded_name(label_to_partition_key(sorter_name))
    recording_part = bounded_name(label_to_partition_key(recording_label(study_name, recording_name)))
    return Path(work_root) / sorter_part / recording_part


def attempt_name(run_id: str, attempt: int) -> str:
    """The folder name of one sort attempt: the Dagster run id and the step's retry number.

    Parameters
    ----------
    run_id : str
        The run's id (a UUID in Dagster).
    attempt : int
        The step's retry number within the run (0 for the first try).

    Returns
    -------
    str
        ``<run id>-<attempt>``.

    Raises
    ------
    ValueError
        ``run_id`` is not 1-64 characters of ``[A-Za-z0-9_-]``, or ``attempt``
        is negative.
    """
    name = f"{run_id}-a{attempt}"
    if attempt < 0 or not _ATTEMPT_NAME.match(name):
        raise ValueError(f"cannot name a sort attempt after run id {run_id!r} and attempt {attempt!r}")
    return name


def is_attempt_name(name: str) -> bool:
    """Whether ``name`` is one :func:`attempt_name` makes (other entries are never cleaned up).

    Parameters
    ----------
    name : str
        A folder name.

    Returns
    -------
    bool
        True for an attempt folder's name.
    """
    return _ATTEMPT_NAME.match(name) is not None
