"""Real full and read-only filesystems for the disk-fault tests.

``chmod`` does not stop root, so these mount a small tmpfs (this machine's
tests run as root, as the Slurm and PostgreSQL tests already need) and fill
it, or remount it read-only.  Every mount is undone when its ``with`` block
ends, even when the test failed.
"""
from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, text=True)


@contextmanager
def tmpfs(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created if missing) for the block's duration."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)
        if _is_mounted(path):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    return any(line.split()[1] == target for line in Path("/proc/mounts").read_text().splitlines())


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """Remount the tmpfs at ``path`` read-only for the block, then writable again."""
    _run("mount", "-o", "remount,ro", str(path))
    try:
        yield path
    finally:
        _run("mount", "-o", "remount,rw", str(path))


def fill(path: Path) -> Path:
    """Fill the filesystem holding ``path`` to the last byte; returns the filler file."""
    filler = path / ".filler"
    with open(filler, "wb", buffering=0) as f:
        for block in (b"\0" * 65536, b"\0" * 512, b"\0"):  # then the last partial block
            try:
                while True:
                    f.write(block)
            except OSError:
                pass
    return filler
