"""Sort attempt folders: claimed while in use, cleaned up only when nobody uses them.

Every sort attempt works in a folder of its own (see
:mod:`sf_assets.core.folder_names`), so concurrent attempts at one pair never
share files.  What makes an old attempt folder safe to delete is a lock file
inside it, ``.in-use``: the step that owns the attempt holds a shared
``flock`` on it from the moment the folder appears until the step ends, and
the worker process holds one too while it sorts there (so a worker that
outlives its step still protects its folder).  A new attempt removes its
pair's other attempt folders whose lock it can take exclusively, that is,
those nobody holds; whatever the kernel says is in use stays.

A folder only appears under its final name with its lock already held: it is
made under a hidden staging name, locked, then renamed, so a cleaner never
sees an attempt folder between its creation and its first lock.  Entries
that are not attempt folders (hidden names, the pre-attempt layout's files)
are never touched.

A Slurm attempt whose allocation is lost under it tries again in a folder of
its own inside the attempt's (:func:`retry_dir`): a lost try's processes may
outlive the retry's start (a node the controller wrote off but that still
reaches the shared filesystem), and whatever they write then lands in the
folder nobody reads any more.

A pair's folder also holds :data:`PAIR_LOCK_FILE`: a launch holds it
exclusively from deciding whether to sort the pair (the job cache) to storing
the sorting, so two launches that planned the same pair at the same moment
sort it once; the second finds the first's sorting in the job cache.

On a filesystem without ``flock`` support (some NFS mounts), attempts still
get folders of their own, but nothing is cleaned up: in-use cannot be told.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from sf_assets.core.folder_names import is_attempt_name

IN_USE_FILE = ".in-use"
PAIR_LOCK_FILE = ".sorting"
"""In a pair's folder, followed by a digest of the job cache's name; names the run that holds it (see :func:`holding_the_pair`)."""
PAIR_LOCK_POLL_S = 0.25
RETRY_PREFIX = "retry-"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


class AttemptDir:
    """A claimed attempt folder; :meth:`release` (or leaving the ``with`` block) ends the claim.

    Attributes
    ----------
    path : Path
        The folder.
    locked : bool
        False where the filesystem has no ``flock``.
    removed : list[Path]
        The pair's finished attempt folders removed when this one was claimed.
    """

    def __init__(self, path: Path, fd: int | None, removed: list[Path]):
        self.path, self._fd, self.removed = path, fd, removed

    @property
    def locked(self) -> bool:
        """Does this process hold the folder's lock (False where the filesystem has no ``flock``)?"""
        return self._fd is not None

    def release(self) -> None:
        """Let go of the folder's lock, so that a later attempt may remove the folder."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "AttemptDir":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        # The claim also ends when its holder is collected (a step's generator that failed).
        try:
            self.release()
        except OSError:
            pass


def _lock(fd: int, operation: int) -> bool:
    """flock ``fd``; False where the filesystem has no flock."""
    try:
        fcntl.flock(fd, operation)
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return False
        raise
    return True


def _nobody_holds(fd: int) -> bool:
    """Take ``fd``'s lock exclusively if nobody holds it; False if held (or no flock here)."""
    try:
        return _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False


def claim_attempt_dir(work_dir: Path) -> AttemptDir:
    """Create attempt folder ``work_dir`` with its lock held, then clean up its pair's finished attempts.

    Parameters
    ----------
    work_dir : Path
        ``PAIR_FOLDER/ATTEMPT`` (see :func:`~sf_assets.engines.engine.work_dir_for`);
        the attempt's name is unique to it, the pair's folder is created if missing.

    Returns
    -------
    AttemptDir
        Holding a shared lock on the folder until released.

    Raises
    ------
    FileExistsError
        The attempt folder already exists (an attempt is claimed once).
    OSError
        The folder cannot be created (read-only or full filesystem).
    """
    pair_dir, name = work_dir.parent, work_dir.name
    pair_dir.mkdir(parents=True, exist_ok=True)
    final = work_dir
    if final.exists():
        raise FileExistsError(errno.EEXIST, "sort attempt folder already claimed", str(final))
    staging = pair_dir / f".{name}.claim"
    staging.mkdir()
    fd = os.open(staging / IN_USE_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        locked = _lock(fd, fcntl.LOCK_SH)
        os.rename(staging, final)
    except BaseException:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not locked:
        os.close(fd)
        return AttemptDir(final, None, [])
    return AttemptDir(final, fd, remove_finished_attempts(pair_dir, keep=name))


def remove_finished_attempts(pair_dir: Path, keep: str) -> list[Path]:
    """Remove the attempt folders of ``pair_dir`` that nobody holds, except ``keep``.

    Parameters
    ----------
    pair_dir : Path
        A pair's folder.
    keep : str
        The attempt folder being claimed.

    Returns
    -------
    list[Path]
        The folders removed.  A folder in use (its lock held by a step or a
        worker) is left alone, and so is anything that is not an attempt folder.
    """
    removed = []
    for entry in sorted(pair_dir.iterdir()):
        if entry.name == keep or not is_attempt_name(entry.name) or not entry.is_dir():
            continue
        try:
            fd = os.open(entry / IN_USE_FILE, os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # a removal cut short: nobody can hold a lock on a file that is gone
        try:
            if fd is not None and not _nobody_holds(fd):
                continue
            shutil.rmtree(entry, ignore_errors=True)  # best effort: another cleaner may be at it too
            if not entry.exists():
                removed.append(entry)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def retry_dir(attempt_dir: Path, retry: int) -> Path:
    """The folder of an attempt's ``retry``-th try (1 for the first retry), inside the attempt's folder.

    Parameters
    ----------
    attempt_dir : Path
        The attempt's folder (its first try's).
    retry : int
        1, 2, ...

    Returns
    -------
    Path
        ``attempt_dir/retry-N`` (not created here).
    """
    return Path(attempt_dir) / f"{RETRY_PREFIX}{retry}"


def attempt_of(work_dir: Path) -> Path:
    """The attempt folder a try works in: ``work_dir`` itself, or the attempt that holds a retry's folder.

    Parameters
    ----------
    work_dir : Path
        A try's folder.

    Returns
    -------
    Path
        The folder whose lock file guards it.
    """
    work_dir = Path(work_dir)
    suffix = work_dir.name[len(RETRY_PREFIX) :]
    return work_dir.parent if work_dir.name.startswith(RETRY_PREFIX) and suffix.isdigit() else work_dir


@contextmanager
def attempt_in_use(work_dir: Path) -> Iterator[None]:
    """Hold a shared lock on ``work_dir``'s attempt while a worker sorts in it.

    Best effort: a folder without a readable lock file (a job prepared by
    hand, a container user who cannot read it) or a filesystem without flock
    is used without one; the owning step's lock still protects it.

    Parameters
    ----------
    work_dir : Path
        The try's folder: the attempt's, or a retry's inside it (:func:`retry_dir`).

    Yields
    ------
    None
        While the worker sorts.
    """
    try:
        fd = os.open(attempt_of(work_dir) / IN_USE_FILE, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            _lock(fd, fcntl.LOCK_SH)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)


@contextmanager
def holding_the_pair(pair_dir: Path, job_cache: str, holder: str, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold the pair's lock: one launch at a time decides whether to sort the pair, and sorts it.

    One lock per job cache name: launches under two names share no hits, so
    they have nothing to wait for.  The lock is polled, not waited on in the
    kernel: a run terminated while it waits gets its interrupt at the next poll.

    Parameters
    ----------
    pair_dir : Path
        The pair's folder (created if missing).
    job_cache : str
        The job cache's name.
    holder : str
        Written into the lock file for whoever waits next (a run id).
    on_wait : Callable[[str], None]
        Called once, with the holder the file names, when another launch holds the pair.

    Yields
    ------
    None
        With the pair held (where the filesystem has no ``flock``, without a lock).
    """
    pair_dir.mkdir(parents=True, exist_ok=True)
    path = pair_dir / f"{PAIR_LOCK_FILE}-{hashlib.sha1(job_cache.encode()).hexdigest()[:8]}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        waited = False
        while True:
            try:
                if _lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, holder.encode(), 0)
                break
            except BlockingIOError:
                if not waited:
                    waited = True
                    on_wait(path.read_text(errors="replace").strip() or "another run")
                time.sleep(PAIR_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)
