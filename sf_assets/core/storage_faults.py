"""Tell a storage fault (disk full, read-only folder, database I/O error) from a bug.

A full disk or a read-only mount shows up deep inside whatever was writing:
an ``OSError`` from ``open``, kachery-cloud's copy, a sorter's output, or a
``sqlite3.OperationalError`` that SQLAlchemy or Dagster wrapped.  Left alone
it becomes a traceback storm (115 lines and four tracebacks for one full
disk).  :func:`storage_fault` recognises it anywhere in an exception's chain
and turns it into one :class:`~sf_assets.core.errors.StorageFault` line that
names the path and the cause; the command line and the assets each have one
handler that uses it.

Database drivers do not say which file they were writing, so for those the
candidate storage folders are examined (``statvfs``): the one on a full or
read-only filesystem is named, else all of them.
"""
from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from sf_assets.core.errors import StorageFault

_OS_CAUSES = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "disk I/O error",
}

# Errors that name no file are faults only when they can only be storage (EACCES from
# os.kill, say, is not).
_UNNAMED_OK = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}

_DB_MESSAGES = (
    ("database or disk is full", "the database's disk is full"),
    ("no space left on device", "the database's disk is full"),
    ("could not extend file", "the database's disk is full"),
    ("readonly database", "the database is read-only"),
    ("read-only file system", "the database is read-only"),
    ("disk i/o error", "database disk I/O error"),
    ("unable to open database file", "the database file cannot be opened"),
)


def _chain(exc: BaseException) -> Iterable[BaseException]:
    """``exc`` and every exception behind it: causes, contexts and drivers' originals (``.orig``)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for behind in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(behind, BaseException):
                todo.append(behind)


def _filesystem_problem(path: Path) -> str | None:
    """Why the filesystem holding ``path`` refuses writes (full or read-only), or None."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return "the filesystem is read-only"
    if stats.f_bavail == 0:
        return "no space left on the device (the disk is full)"
    return None


def _database_fault(exc: BaseException, candidates: list[Path]) -> StorageFault:
    text = " ".join(str(exc).split()).lower()
    cause = next((said for marker, said in _DB_MESSAGES if marker in text), "database I/O error")
    for path in candidates:
        problem = _filesystem_problem(path)
        if problem is not None:
            return StorageFault(f"{path}: {problem} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
    where = ", ".join(str(p) for p in candidates) or "the configured databases"
    return StorageFault(f"{cause} in one of: {where} ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")


def storage_fault(exc: BaseException, candidates: Iterable[str | Path] = ()) -> StorageFault | None:
    """The one-line :class:`StorageFault` behind ``exc``, or None when ``exc`` is something else.

    Parameters
    ----------
    exc : BaseException
        Any exception; its whole chain is searched.
    candidates : iterable of str or Path
        Folders and database files the failing code may have been writing
        (the Dagster storage, the workspace database, ...): named when the
        error itself names no path.

    Returns
    -------
    StorageFault | None
        For an ``OSError`` whose errno is ENOSPC, EDQUOT, EROFS or EIO, or
        EACCES or EPERM on a named file: ``"<path>: <cause>"``; for a
        ``sqlite3.OperationalError`` or a PostgreSQL driver's error (bare or
        wrapped by SQLAlchemy or Dagster) that says the disk is full,
        read-only or failing: the candidate on a full or read-only
        filesystem, and the cause.
    """
    if isinstance(exc, StorageFault):
        return exc
    paths = [Path(p) for p in candidates]
    for current in _chain(exc):
        if isinstance(current, StorageFault):
            return current
        if isinstance(current, OSError) and current.errno in _OS_CAUSES:
            if current.filename is not None:
                return StorageFault(f"{current.filename}: {_OS_CAUSES[current.errno]}")
            if current.errno in _UNNAMED_OK:  # a write to an open file names no path
                where = next((str(p) for p in paths if _filesystem_problem(p)), None)
                return StorageFault(f"{where or 'a file being written'}: {_OS_CAUSES[current.errno]}")
        is_driver_error = isinstance(current, sqlite3.OperationalError) or type(current).__module__.startswith(
            ("psycopg2", "psycopg")
        )
        if is_driver_error and _says_storage(current):
            return _database_fault(current, paths)
    return None


def _says_storage(exc: BaseException) -> bool:
    """Whether a database driver's message is about storage (not a lock, a missing table, bad SQL)."""
    text = " ".join(str(exc).split()).lower()
    return any(marker in text for marker, _ in _DB_MESSAGES)
