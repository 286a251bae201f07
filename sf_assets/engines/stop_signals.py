"""Give back SIGTERM and SIGINT to a process that inherited them ignored.

A process started from a non-interactive shell's background job (``make ui &``,
a CI runner's script) inherits SIGINT ignored, and an ignored signal stays
ignored across ``exec``.  Dagster then makes it worse: wherever it runs a run
or a daemon in-process it maps SIGTERM to whatever SIGINT does
(``dagster._utils.interrupts``), so SIGTERM is ignored too, and so it is in
every process started from there.  A sort worker that ignores SIGTERM cannot
be stopped by a timeout, a hung canary or a terminate from the UI until the
grace runs out and SIGKILL ends it (10 s later, with its sorter still writing).

The sort service, its worker template and every worker call :func:`restore`
first, so whatever started them, SIGTERM stops them and SIGINT interrupts
them as in a terminal.
"""
from __future__ import annotations

import signal


def restore() -> None:
    """SIGTERM back to its default (end the process) and SIGINT to Python's (KeyboardInterrupt), where ignored.

    A handler someone installed on purpose is left alone; only an inherited
    "ignore" is undone.  Call from the main thread, before starting children.
    """
    if signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
