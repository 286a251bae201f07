"""Which process launched a run, and whether that process still exists.

``sf-assets`` executes each partition's run inside its own launching process
(``launch_campaign``'s pool).  If that process is killed (SIGKILL, the OOM
killer, a lost node), Dagster never hears of it: the run stays STARTED and the
UI shows its partition in progress forever.  Each run therefore carries the
identity of the process executing it, ``HOST:PID:START``, where START is the
process's start time in clock ticks since boot (``/proc/PID/stat``, field 22),
so a PID the kernel has since reused for another process does not count as
the same one.  A later launch on the same host can then tell an orphaned run
from one another launch is still executing.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class LauncherIdentity:
    """One process, told apart from a later process that reuses its pid: host, pid and start time.

    A command line's runs carry it as their lease; the sort service ends them
    when this process is gone.
    """

    host: str
    pid: int
    start_ticks: int

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.start_ticks}"

    @classmethod
    def parse(cls, text: str) -> "LauncherIdentity | None":
        """The identity in a run's tag; None for anything else (then nothing is concluded).

        Parameters
        ----------
        text : str
            The tag's value, ``HOST:PID:START``.

        Returns
        -------
        LauncherIdentity or None
            The identity, or None when the text is not one.
        """
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]))

    def is_gone(self, this_host: str | None = None) -> bool:
        """True only when certain: same host, and no process with this PID and start time.

        Parameters
        ----------
        this_host : str or None
            This host's name (None: looked up).

        Returns
        -------
        bool
            False whenever in doubt: another host, or a process that may be it.
        """
        if self.host != (this_host or socket.gethostname()):
            return False
        return process_start_ticks(self.pid) != self.start_ticks


def process_start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot); None if there is no such process.

    Parameters
    ----------
    pid : int
        The process id.

    Returns
    -------
    int or None
        Field 22 of ``/proc/PID/stat``.
    """
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def this_process() -> LauncherIdentity:
    """The identity of the calling process.

    Returns
    -------
    LauncherIdentity
        This host, pid and the kernel's start time of the process (0 where unknown).
    """
    pid = os.getpid()
    return LauncherIdentity(socket.gethostname(), pid, process_start_ticks(pid) or 0)
