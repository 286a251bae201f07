"""A warm worker copies itself between two sorts: another slot gets its compiled sorters in milliseconds.

Why: a sorter's first sort in a worker pays its numba compilation
(spykingcircus2 30-45 s of CPU, against 4-8 s for a sort of a minute of
recording once warm).  Affinity (:mod:`sf_assets.core.dispatch`) keeps a
sorter's sorts on the slot that compiled it, but at a campaign's end, or
when many slots start at once (a Slurm allocation's eight), the other slots
either wait or compile the same code again.  Forking the warm worker gives
them its compiled code at once.

The sort service asks for a copy by writing a ``fork`` command on the warm
worker's command stream, so the copy is made when the worker reaches it:
between sorts, never during one.  The copy:

* is forked twice over, so it is orphaned at once and adopted by the
  template, which is the service's child subreaper: the template reaps it and
  reports its exit and CPU time, as for the workers it forks itself;
* leads its own process group (a timeout stops the group);
* reads its commands from a FIFO the service created, and says its pid
  through a pipe once it has opened it;
* takes the requested environment (the slot's), though libraries already
  started keep what they read at start: the service only asks for copies
  between slots whose environments match.

A copy is refused (and the slot compiles the sorter itself) when the worker
is not forked from a template, or when numba runs on a threading layer that
does not survive a fork (OpenMP; see :mod:`sf_assets.engines.threads`), or
once CUDA is initialised in it, or while it has child processes other than
Python's resource trackers: a process pool a sort left running (joblib's
loky executor, which hdbscan starts in spikeinterface's ``simple`` on a
300 s recording) would be the copy's too, without the threads that feed
it, and the copy's next sort waited on it for good.
"""
from __future__ import annotations

import json
import os
import select
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from sf_assets.core.atomic import write_json_atomic
from sf_assets.engines.threads import FORK_SAFE_NUMBA_LAYER, NUMBA_LAYER_VAR

FORK_COMMAND = "fork "
# How long the worker waits for its copy to open its command FIFO and say its pid.
COPY_START_S = 10.0


def exit_with(body: Callable[[], int]) -> NoReturn:
    """End a forked child with ``body()``'s exit code (1 if it raised), never returning into the parent's code.

    Parameters
    ----------
    body : Callable[[], int]
        What the child does.
    """
    code = 1
    try:
        code = body()
    except BaseException:  # noqa: BLE001 - the child must end here whatever happened
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def fork_command(fifo: Path, reply: Path, env: dict[str, str]) -> str:
    """The command line that asks a warm worker for a copy of itself.

    Parameters
    ----------
    fifo : Path
        The copy's command stream (a FIFO the service opened for writing).
    reply : Path
        Where the worker writes ``{"pid": ...}`` or ``{"error": ...}``.
    env : dict[str, str]
        The copy's environment.

    Returns
    -------
    str
        One line, newline included.
    """
    return FORK_COMMAND + json.dumps({"fifo": str(fifo), "reply": str(reply), "env": env}) + "\n"


def why_not_copyable(template_pid: int | None) -> str | None:
    """Why this worker may not fork a copy of itself now, or None when it may.

    Parameters
    ----------
    template_pid : int or None
        The template that forked this worker (None: not forked from one).

    Returns
    -------
    str or None
        The reason, for the service's log.
    """
    if template_pid is None:
        return "not forked from a template, which would adopt the copy"
    if os.environ.get(NUMBA_LAYER_VAR) != FORK_SAFE_NUMBA_LAYER:
        return f"numba's threading layer is not {FORK_SAFE_NUMBA_LAYER!r} ({NUMBA_LAYER_VAR})"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised in it"
    try:
        pools = child_processes()
    except OSError as exc:  # a kernel without the children files: nothing says a copy is safe
        return f"its child processes cannot be listed ({exc})"
    if pools:
        return f"it has child processes a copy could not use (a process pool?): {', '.join(pools)}"
    return None


def child_processes() -> list[str]:
    """This process's live children, but for Python's resource trackers: ``pid name`` each.

    A resource tracker only receives names over a pipe, which a copy may
    share; anything else (a pool's worker processes) is driven by threads
    of this process that a fork does not copy.

    Returns
    -------
    list[str]
        Empty when a copy may be forked.
    """
    found = []
    for child in _children():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if cmdline.strip() and "resource_tracker" not in cmdline:  # a zombie's is empty: it runs nothing
            found.append(f"{child} {cmdline.strip()[:80]}")
    return found


def _children() -> set[int]:
    """This process's children, from the kernel's ``children`` file of each of its threads."""
    pid = os.getpid()
    return {int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()}


def fork_copy(line: str, template_pid: int | None, serve: Callable[[object, int], int], commands) -> None:
    """Answer a ``fork`` command: fork a copy that serves its own command FIFO, and write its pid.

    Parameters
    ----------
    line : str
        The command (:func:`fork_command`).
    template_pid : int or None
        The template that forked this worker; the copy's adopter.
    serve : Callable
        What the copy runs: ``serve(commands, source_pid)`` with its FIFO and this worker's pid; it
        watches the template (the copy dies with it) and serves the FIFO's jobs.
    commands : file
        This worker's command stream, which the copy closes.
    """
    request = json.loads(line[len(FORK_COMMAND):])
    reply = Path(request["reply"])
    refusal = why_not_copyable(template_pid)
    if refusal is not None:
        _answer(reply, {"error": refusal})
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    said, say = os.pipe()
    source = os.getpid()
    middle = os.fork()
    if middle == 0:  # pragma: no cover - runs in the forked processes
        try:
            if os.fork() == 0:
                os.close(said)
                _become_copy(request, template_pid, commands, say, lambda stream: serve(stream, source))
        finally:
            os._exit(0)
    os.close(say)
    os.waitpid(middle, 0)
    ready, _, _ = select.select([said], [], [], COPY_START_S)
    text = os.read(said, 64).decode() if ready else ""
    os.close(said)
    _answer(reply, {"pid": int(text)} if text.strip().isdigit() else {"error": "the copy did not start"})


def _answer(reply: Path, answer: dict) -> None:
    try:
        write_json_atomic(reply, answer)
    except OSError:
        pass  # the service stopped waiting and removed the folder; a copy, if any, finds no FIFO and exits


def _become_copy(request: dict, template_pid: int, commands, say: int, serve) -> None:  # pragma: no cover
    """In the copy: own group, adopted by the template, commands from the FIFO; never returns."""

    def copy() -> int:
        os.setpgid(0, 0)
        commands.close()
        deadline = time.monotonic() + COPY_START_S
        while os.getppid() != template_pid:  # its parent, the middle process, is exiting
            if time.monotonic() > deadline:
                return 1  # not adopted by the template: nobody would reap it
            time.sleep(0.001)
        stream = open(request["fifo"], encoding="utf-8")
        os.environ.clear()
        os.environ.update(request["env"])
        os.write(say, str(os.getpid()).encode())
        os.close(say)
        with stream:
            return serve(stream)

    exit_with(copy)
