"""How people get to a viewer: the command that opens a label, and the URL of one running.

A running ``sf-assets view`` registers itself in a folder of small JSON files,
one per label (``<sha1 of the label>.json``: label, URL, process id), and
removes its file when it stops.  A file whose process is gone is ignored, so
a viewer killed without cleaning up never yields a dead link.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path

from sf_assets.core.atomic import write_text_atomic

VIEW_COMMAND = "sf-assets view"


def view_command(label: str) -> str:
    """The shell command that opens ``label`` (quoted for a POSIX shell)."""
    return f"{VIEW_COMMAND} {shlex.quote(label)}"


def _entry_path(registry_dir: Path, label: str) -> Path:
    return Path(registry_dir) / f"{hashlib.sha1(label.encode('utf-8')).hexdigest()}.json"


def register_viewer(registry_dir: Path, label: str, url: str, pid: int | None = None) -> Path:
    """Record that a viewer of ``label`` serves ``url``; returns the file to remove at exit.

    The file is replaced whole (:func:`write_text_atomic`), so a reader never sees half of it.
    """
    registry_dir = Path(registry_dir)
    registry_dir.mkdir(parents=True, exist_ok=True)
    path = _entry_path(registry_dir, label)
    write_text_atomic(path, json.dumps({"label": label, "url": url, "pid": pid or os.getpid()}))
    return path


def unregister_viewer(path: Path) -> None:
    """Remove a registration made by :func:`register_viewer` (absent: nothing to do)."""
    Path(path).unlink(missing_ok=True)


def running_viewer_url(registry_dir: Path, label: str) -> str | None:
    """The URL of a live viewer of ``label``, or None (no file, unreadable, or its process is gone)."""
    try:
        entry = json.loads(_entry_path(registry_dir, label).read_text())
        pid = int(entry["pid"])
        url = str(entry["url"])
        if entry.get("label") != label:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, owned by another user
        pass
    return url
