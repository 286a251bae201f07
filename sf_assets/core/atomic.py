"""Files replaced whole: a reader sees the old content or the new, never half of either.

Every file sf-assets rewrites in place (records, the results page, a worker's
report, the sort service's key, a cached listing) goes through
:func:`replace_atomically`: the content is written to a temporary file in the
same folder, then renamed over the target, which is atomic on POSIX file
systems.  The temporary name carries the process and thread ids, so two
writers (two runs, two threads of one service) never share one, and it is
removed whatever happens.
"""
from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)


def temporary_path(path: Path) -> Path:
    """The temporary file beside ``path`` that this process and thread write before the rename.

    Parameters
    ----------
    path : Path
        The file to be replaced.

    Returns
    -------
    Path
        A hidden name in the same folder (a rename across file systems is not atomic).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")


def replace_atomically(path: Path, write: Callable[[Path], None], *, durable: bool = False) -> None:
    """Let ``write`` make the new file under a temporary name, then rename it over ``path``.

    For writers that take a path themselves (pandas, :func:`~sf_assets.core.records.write_records`).

    Parameters
    ----------
    path : Path
        The file to replace (or create).
    write : callable
        Called with a temporary path that does not exist yet; it must create the file there.
    durable : bool
        Also flush the new file to disk before the rename, so that a power loss
        leaves the old content or the whole new one (for files that are
        written once and read for a long time).
    """
    path = Path(path)
    tmp = temporary_path(path)
    tmp.unlink(missing_ok=True)  # left by a killed writer of the same pid and thread id
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes, *, mode: int = 0o666, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` whole (see :func:`replace_atomically`).

    Parameters
    ----------
    path : Path
        The file to replace (or create).
    data : bytes
        Its new content.
    mode : int
        Permission bits of the new file, before the umask (``0o600`` for a secret).
    durable : bool
        Flush to disk before the rename.
    """

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    replace_atomically(path, write, durable=durable)


def write_text_atomic(path: Path, text: str, *, durable: bool = False) -> None:
    """Replace ``path`` with ``text`` in UTF-8, whole.

    Parameters
    ----------
    path : Path
        The file to replace (or create).
    text : str
        Its new content.
    durable : bool
        Flush to disk before the rename.
    """
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON (keys sorted; dates and paths as strings), whole.

    Workers, steps and services exchange their state through such files, and
    a reader polling one must never parse half of it.

    Parameters
    ----------
    path : Path
        The file to replace (or create).
    obj : Any
        What to write; values JSON cannot hold are written as their ``str``.
    """
    write_text_atomic(path, json.dumps(obj, sort_keys=True, default=str))


def create_json_once(path: Path, obj: Any) -> bool:
    """Create ``path`` holding ``obj`` as JSON, whole, unless it exists already.

    For a decision two processes race to make, each from its own side: the
    first to create the file decides, and the other reads the file instead of
    acting on its own view.  A sort's canary is one: the worker's result
    against its supervisor's "hung" verdict.

    Parameters
    ----------
    path : Path
        The file to create.
    obj : Any
        What to write (as :func:`write_json_atomic` writes it).

    Returns
    -------
    bool
        True: this call created it; False: it was there first, left as it was
        (or, where the filesystem has no hard links, is being written: it
        appears whole in a moment).
    """
    path = Path(path)
    tmp = temporary_path(path)
    tmp.unlink(missing_ok=True)
    try:
        tmp.write_text(json.dumps(obj, sort_keys=True, default=str))
        try:
            os.link(tmp, path)  # fails, atomically, where the name exists: unlike a rename
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            # No hard links here (some FUSE and SMB mounts): the first to make the claim folder
            # decides, as atomically, and renames its file into place.
            os.mkdir(path.parent / f".{path.name}.claim")
            os.replace(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
