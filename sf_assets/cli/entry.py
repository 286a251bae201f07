"""The ``sf-assets`` command line.

Each subcommand is registered by one ``_add_<name>(subparsers)`` function
listed in :data:`SUBCOMMANDS`; it sets ``run`` to a function taking the parsed
arguments and returning an exit code.  :func:`main` is the only place that
turns an :class:`~sf_assets.core.errors.SfAssetsError` into the one-line
``sf-assets: error: <file>: <problem>`` message and exit code 2, so every
subcommand reports bad input the same way, without a traceback; and a storage
fault (disk full, read-only folder, database I/O error) anywhere in an
exception's chain into ``sf-assets: error: storage fault: <path>: <cause>``
and exit code 3.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import Callable, Sequence

from sf_assets.cli.environment import start_sort_service_early, storage_locations
from sf_assets.cli.flags import add_config_flags
from sf_assets.core.config_summary import config_summary
from sf_assets.core.errors import EXIT_STORAGE_FAULT, SfAssetsError
from sf_assets.core.storage_faults import storage_fault
from sf_assets.stores.inputs import load_config

PROG = "sf-assets"
EXIT_BAD_INPUT = 2


def print_config(args: argparse.Namespace) -> int:
    """Print the resolved configuration of ``-s``/``-l`` as JSON on stdout.

    Parameters
    ----------
    args : argparse.Namespace
        ``study_source_file``, ``sorter_spec_file`` and ``strict``.

    Returns
    -------
    int
        0.
    """
    manifest, spec = load_config(args.study_source_file, args.sorter_spec_file, store=None, strict=args.strict)
    print(json.dumps(config_summary(manifest, spec), indent=2))
    return 0


def _add_check_config(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a manifest and a spec and print the resolved configuration",
        description=(
            "Check the manifest and spec against each other and the sorter catalog, then print "
            "the configuration they resolve to (study sets, recordings, sorting jobs, sorters "
            "with merged params) as JSON. Writes nothing."
        ),
    )
    add_config_flags(parser)
    parser.set_defaults(run=print_config)


def run_demo(args: argparse.Namespace) -> int:
    """Run ``sf-assets demo`` on the configured Dagster instance.

    Parameters
    ----------
    args : argparse.Namespace
        ``workercount`` and ``seed``.

    Returns
    -------
    int
        The demo's exit code.
    """
    start_sort_service_early()  # its run host loads while Dagster is imported and the studyset generated
    from sf_assets.cli.demo import run_demo as demo

    return demo(workers=args.workercount, seed=args.seed)


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="generate a synthetic ground-truth studyset and run the whole graph on it",
        description=(
            "Generate (once) a synthetic studyset in the local kachery store, materialize every asset "
            "for it on the configured Dagster instance (one run per partition), and print the sorter summary."
        ),
    )
    parser.add_argument(
        "-w", "--workercount", type=int, default=4, help="the demo's runs queued or running at once (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic studyset (default 0)")
    parser.set_defaults(run=run_demo)


def _add_sorting_commands(subparsers: argparse._SubParsersAction) -> None:
    # cli_sortings builds on this module's helpers: importing it here, not at the top, keeps
    # the import one-way.
    from sf_assets.cli.sortings import add_sorting_subcommands

    add_sorting_subcommands(subparsers)


def _add_compare_results(subparsers: argparse._SubParsersAction) -> None:
    from sf_assets.cli.compare import add_compare_results

    add_compare_results(subparsers)


def _add_view(subparsers: argparse._SubParsersAction) -> None:
    from sf_assets.cli.view import add_view_subcommand

    add_view_subcommand(subparsers)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_check_config,
    _add_demo,
    _add_sorting_commands,
    _add_compare_results,
    _add_view,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of :data:`SUBCOMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
        The ``sf-assets`` parser; each subcommand sets ``run``.
    """
    parser = argparse.ArgumentParser(prog=PROG, description="SpikeForest-style spike-sorting benchmarks on Dagster.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns its exit code (2 for bad input, after one line on stderr).

    Parameters
    ----------
    argv : Sequence[str] or None
        The arguments (None: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 done, 1 a run failed, 2 bad input, 3 a storage fault.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as exc:
        fault = storage_fault(exc, storage_locations())
        if fault is None and not isinstance(exc, SfAssetsError):
            raise
        message = " ".join(str(fault or exc).split())
        print(f"{PROG}: error: {'storage fault: ' if fault else ''}{message}", file=sys.stderr)
        return EXIT_STORAGE_FAULT if fault else EXIT_BAD_INPUT


def console_main() -> int:
    """The ``sf-assets`` command (console script and ``python -m sf_assets.cli``): :func:`main`, then a quick exit.

    After a launch the process holds Dagster, spikeinterface and the instance's
    objects; the garbage collector's passes over them while the interpreter
    shuts down took about a second of a command-line campaign (measured:
    1.1-1.2 s after the last run, on this project's two-core machine).  The
    command's work is done and its output flushed by then, and exit handlers
    (``atexit``, ``weakref.finalize``) still run, so the objects left are moved
    out of the collector's sight (:func:`gc.freeze`) instead.  Only the command
    does this: :func:`main` is also called in-process, by tests.

    Returns
    -------
    int
        :func:`main`'s exit code.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
