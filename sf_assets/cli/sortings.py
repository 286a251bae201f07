"""``sf-assets run-sortings``, ``prepare-workspace`` and ``sort-sf-recordings``.

The three SpikeForest scripts, with their flags, on the asset graph: sorting
runs go through :func:`sf_assets.cli.launch.launch_campaign` on the configured
Dagster instance (one run per partition), so every run shows in the UI, and
the job cache, the canary and the records are the assets' own.

- ``run-sortings`` sorts every pair the spec assigns and keeps ``-o`` up to
  date as sortings land (the file is replaced atomically; an existing file is
  refused before anything runs).
- ``prepare-workspace`` adds a records file's recordings, ground truths and
  sortings to a workspace, skipping labels already there and errored records.
- ``sort-sf-recordings`` sorts only the pairs whose sorting label the
  workspace lacks, and adds each result to it as soon as it lands.

Bad input (a missing file, a malformed manifest, spec or records file,
conflicting flags) is one line on stderr and exit code 2, with nothing
written; :func:`sf_assets.cli.entry.main` does that for every
:class:`~sf_assets.core.errors.SfAssetsError`.  A finished command exits 0,
or 1 when a run failed (its record says ``errored: true``).

Dagster and the asset graph are imported only when a command needs them, so
``--help``, ``--check-config`` and the other subcommands start at once.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from sf_assets.cli.environment import ensure_dagster_home, start_sort_service_early
from sf_assets.cli.flags import (
    add_config_flags,
    add_shared_flags,
    add_workspace_flags,
    dagster_log_level,
    run_option_values,
    run_options,
)
from sf_assets.cli.progress import one_line, print_line, progress_printer
from sf_assets.cli.records_file import RecordsFile, check_outfile
from sf_assets.core.campaign import Campaign
from sf_assets.core.config_summary import config_summary
from sf_assets.core.errors import RecordError
from sf_assets.core.labels import sorting_label
from sf_assets.core.records import SortingRecord, read_records
from sf_assets.core.settings import Settings, load_settings
from sf_assets.core.uris import is_kachery_uri
from sf_assets.core.workspace_plan import entries_from_records
from sf_assets.stores.inputs import load_config, read_source
from sf_assets.stores.kachery import KacheryStore
from sf_assets.stores.workspace import SyncReport, WorkspaceStore, choose_workspace

if TYPE_CHECKING:
    from sf_assets.cli.launch import RunOptions

EXIT_RUN_FAILED = 1


# -- flags ----------------------------------------------------------------------------------


def _shown_options(args: argparse.Namespace, options: "RunOptions") -> dict[str, Any]:
    """What --check-config prints about how the runs would go."""
    shown = {k: v for k, v in asdict(options).items() if k not in {"spec_source", "manifest_source"}}
    shown.update(workercount=args.workercount, verbose=args.verbose)
    return shown


def _print_json(document: dict[str, Any]) -> int:
    print(json.dumps(document, indent=2))
    return 0


# -- inputs ---------------------------------------------------------------------------------


def _store(settings: Settings) -> KacheryStore | None:
    """The project's kachery store for sha1:// sources, without creating its folder to find it empty."""
    if settings.kachery_dir.is_dir() or not settings.kachery_local_only:
        return KacheryStore(settings.kachery_dir, local_only=settings.kachery_local_only)
    return None


def _load_campaign(args: argparse.Namespace, settings: Settings) -> Campaign:
    return Campaign(*load_config(args.study_source_file, args.sorter_spec_file, _store(settings), strict=args.strict))


# -- reading results back -----------------------------------------------------------------


# -- running --------------------------------------------------------------------------------


def _launch(
    args: argparse.Namespace,
    campaign: Campaign,
    options: "RunOptions",
    pairs: list,
    on_record: Callable[[list[SortingRecord]], None],
) -> int:
    """Sort ``pairs`` on the Dagster instance; ``on_record`` gets records as they land (cached first)."""
    import dagster as dg

    from sf_assets.cli.launch import launch_campaign
    from sf_assets.cli.progress import LiveProgress
    from sf_assets.orchestration.assets.history import latest_sorting_record

    ensure_dagster_home()
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        if args.verbose:
            print_line(
                f"Dagster instance: {os.environ['DAGSTER_HOME']}; {len(pairs)} sorting(s) to do, "
                f"at most {args.workercount} of this launch's runs at a time"
            )

        def planned(plan) -> None:
            cached = [latest_sorting_record(instance, key) for key in plan.cached]
            if cached:
                on_record([r for r in cached if r is not None])

        def landed(outcome) -> None:
            if args.verbose:
                print_line(f"    run {outcome.run_id}")
            record = latest_sorting_record(instance, outcome.partition_key)
            if record is not None:
                on_record([record])

        with LiveProgress() as live:
            outcome = launch_campaign(
                instance,
                campaign,
                options,
                workers=args.workercount,
                pairs=pairs,
                progress=progress_printer(args.verbose, live.say),
                on_plan=planned,
                on_sorting_done=landed,
                on_counts=live.update,
            )
    failed = [o for o in outcome.recordings + outcome.sortings + outcome.comparisons + outcome.results if not o.success]
    for o in outcome.comparisons + outcome.results:  # recordings and sortings had their progress line
        if not o.success:
            print_line(one_line(f"[{o.job_name}] FAILED: {o.error}"))
    failed_results = sum(1 for o in outcome.comparisons + outcome.results if not o.success)
    print_line(
        f"{len(outcome.sortings) - len(outcome.failed_sortings)} sorted, {len(outcome.cached_pairs)} from the job "
        f"cache, {len(outcome.failed_sortings)} failed, {len(outcome.skipped_pairs)} skipped (recording failed)"
        f"{f', {failed_results} comparison or results run(s) FAILED' if failed_results else ''}; {time.monotonic() - started:.0f} s"
    )
    return EXIT_RUN_FAILED if failed else 0


def run_sortings(args: argparse.Namespace) -> int:
    """``run-sortings``: sort every pair the spec assigns and write the records to ``-o`` as they land.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed flags.

    Returns
    -------
    int
        0 when every run succeeded, 1 when one failed.
    """
    settings = load_settings()
    outfile = check_outfile(args.outfile)
    campaign = _load_campaign(args, settings)
    values = run_option_values(args)
    if not args.check_config:
        # Every input is valid, so a launch follows: the service's start overlaps Dagster's import.
        start_sort_service_early()
    options = run_options(settings, values, log_level=dagster_log_level(args))
    if args.check_config:
        summary = config_summary(campaign.manifest, campaign.spec)
        return _print_json({**summary, "outfile": str(outfile), "options": _shown_options(args, options)})
    pairs = list(campaign.jobs)
    order = [sorting_label(s.name, r.study_name, r.name) for s, r in pairs]
    records = RecordsFile(outfile)
    code = _launch(args, campaign, options, pairs, records.add)
    records.flush(order)
    print_line(f"{len(records.records)} record(s) in {outfile}")
    return code


def _read_sortings(args: argparse.Namespace, settings: Settings) -> tuple[str, list[SortingRecord]]:
    if args.sortings_file is not None:
        raw, source = read_source(args.sortings_file, None)
    else:
        if not is_kachery_uri(args.sortings_file_kachery_uri):
            raise RecordError(f"{args.sortings_file_kachery_uri}: expected a sha1:// URI for -k")
        raw, source = read_source(args.sortings_file_kachery_uri, _store(settings))
    return source, read_records(raw, source)


def _workspace_config(args: argparse.Namespace, store: WorkspaceStore) -> dict[str, Any]:
    choose_workspace(store, args.workspace_uri, args.create_new_workspace, dry_run=True)  # validates, writes nothing
    return {
        "database": store.where,
        "workspace_uri": args.workspace_uri,
        "create_new_workspace": args.create_new_workspace,
        "dry_run": args.dry_run,
    }


def _report_sync(report: SyncReport, notes: list[str], verbose: int) -> None:
    verb = "would add" if report.dry_run else "added"
    for label in report.added:
        print_line(f"{verb} {label}")
    if verbose:
        for label in report.already_present:
            print_line(f"already present {label}")
    for note in notes:
        print_line(note)


def prepare_workspace(args: argparse.Namespace) -> int:
    """``prepare-workspace``: add a records file's recordings, ground truths and sortings to a workspace.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed flags.

    Returns
    -------
    int
        0.
    """
    settings = load_settings()
    source, records = _read_sortings(args, settings)
    entries, notes = entries_from_records(records)
    store = WorkspaceStore(settings.workspace_db_url)
    if args.check_config:
        errored = sum(1 for r in records if r.errored)
        return _print_json(
            {
                "sortings_source": source,
                "num_records": len(records),
                "num_errored": errored,
                "num_recordings": len({(r.study_name, r.recording_name) for r in records}),
                "num_sorting_jobs": len(records),
                "workspace": _workspace_config(args, store),
                "options": {"verbose": args.verbose},
            }
        )
    if not args.dry_run:
        # Every check before the first write: the flags and the workspace, then the instance
        # on which the sync is recorded.
        choose_workspace(store, args.workspace_uri, args.create_new_workspace, dry_run=True)
        ensure_dagster_home()
    uri = choose_workspace(store, args.workspace_uri, args.create_new_workspace, args.dry_run)
    if uri is None:  # a dry run of --create-new-workspace: everything would be added
        report = SyncReport(added=[e.label for e in entries], already_present=[], dry_run=True)
    else:
        report = store.sync(uri, entries, dry_run=args.dry_run)
    _report_sync(report, notes, args.verbose)
    where = uri or "a new workspace"
    verb = "would add" if args.dry_run else "added"
    print_line(
        f"{where}: {verb} {len(report.added)} entr{'y' if len(report.added) == 1 else 'ies'}; "
        f"{len(report.already_present)} already present; {len(notes)} errored or repeated record(s) skipped"
    )
    if not args.dry_run:
        _observe_sync(source, uri, report, len(notes))
    return 0


def _observe_sync(source: str, uri: str, report: SyncReport, skipped: int) -> None:
    """Record the sync on the ``workspace_sync`` asset, so it shows in the UI like the asset's own."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key="workspace_sync",
                description="sf-assets prepare-workspace",
                metadata={
                    "sortings_source": source,
                    "workspace_uri": uri,
                    "added": len(report.added),
                    "already_present": len(report.already_present),
                    "skipped_errored": skipped,
                },
            )
        )


def sort_sf_recordings(args: argparse.Namespace) -> int:
    """``sort-sf-recordings``: sort the pairs the workspace lacks and add each result as it lands.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed flags.

    Returns
    -------
    int
        0 when every run succeeded, 1 when one failed.
    """
    settings = load_settings()
    outfile = check_outfile(args.outfile) if args.outfile else None
    campaign = _load_campaign(args, settings)
    store = WorkspaceStore(settings.workspace_db_url)
    options = run_options(settings, run_option_values(args), log_level=dagster_log_level(args))
    if args.check_config:
        summary = config_summary(campaign.manifest, campaign.spec)
        return _print_json(
            {
                **summary,
                "outfile": None if outfile is None else str(outfile),
                "workspace": _workspace_config(args, store),
                "options": _shown_options(args, options),
            }
        )
    uri = choose_workspace(store, args.workspace_uri, args.create_new_workspace, args.dry_run)
    present = store.existing_labels(uri) if uri else set()
    pairs = [(s, r) for s, r in campaign.jobs if sorting_label(s.name, r.study_name, r.name) not in present]
    in_workspace = len(campaign.jobs) - len(pairs)
    if args.dry_run:
        for s, r in pairs:
            print_line(f"would sort and add {sorting_label(s.name, r.study_name, r.name)}")
        print_line(f"{uri or 'a new workspace'}: would sort {len(pairs)} pair(s); {in_workspace} already in the workspace")
        return 0
    if uri != args.workspace_uri:
        print_line(f"created workspace {uri}")
    if not pairs:
        print_line(f"{uri}: all {len(campaign.jobs)} sortings are in the workspace; nothing to sort")
        return 0
    print_line(f"{uri}: {len(pairs)} sorting(s) missing, {in_workspace} already in the workspace")
    start_sort_service_early()
    records = RecordsFile(outfile) if outfile else None

    def landed(new_records: list[SortingRecord]) -> None:
        entries, notes = entries_from_records(new_records)
        _report_sync(store.sync(uri, entries), notes, args.verbose)
        if records is not None:
            records.add(new_records)

    code = _launch(args, campaign, replace(options, workspace_uri=uri), pairs, landed)
    if records is not None:
        records.flush([sorting_label(s.name, r.study_name, r.name) for s, r in pairs])
        print_line(f"{len(records.records)} record(s) in {outfile}")
    return code


# -- registration ---------------------------------------------------------------------------


def _add_run_sortings(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run-sortings",
        help="sort every (sorter, recording) pair the spec assigns and write the records file",
        description="Sort every pair the spec assigns (one Dagster run each, on the configured instance) and "
        "write the run_sortings.py records to -o as sortings land. Pairs the job cache holds are not sorted again.",
    )
    add_config_flags(parser)
    parser.add_argument(
        "-o",
        "--outfile",
        required=True,
        metavar="PATH",
        help="records file to create (never overwritten; /dev/null ok)",
    )
    add_shared_flags(parser)
    parser.set_defaults(run=run_sortings)


def _add_prepare_workspace(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-workspace",
        help="add a records file's recordings, ground truths and sortings to a workspace",
        description="Add the recordings, ground truths and sortings named by a run-sortings records file to a "
        "workspace, by label: labels already present are skipped, errored records are skipped with a note.",
    )
    sortings = parser.add_mutually_exclusive_group(required=True)
    sortings.add_argument("-s", "--sortings-file", metavar="PATH", help="records file written by run-sortings")
    sortings.add_argument(
        "-k", "--sortings-file-kachery-uri", metavar="URI", help="records file in kachery (sha1://...)"
    )
    add_workspace_flags(parser)
    add_shared_flags(parser)
    parser.set_defaults(run=prepare_workspace)


def _add_sort_sf_recordings(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sort-sf-recordings",
        help="sort the pairs a workspace lacks and add each result as it lands",
        description="Sort only the (sorter, recording) pairs whose sorting label the workspace lacks, adding "
        "each result (with its recording and ground truth) to the workspace as soon as it lands.",
    )
    add_config_flags(parser)
    parser.add_argument(
        "-o", "--outfile", metavar="PATH", help="also write the records of these sortings (never overwritten)"
    )
    add_workspace_flags(parser)
    add_shared_flags(parser)
    parser.set_defaults(run=sort_sf_recordings)


def add_sorting_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``run-sortings``, ``prepare-workspace`` and ``sort-sf-recordings``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The command line's subcommands.
    """
    for add in (_add_run_sortings, _add_prepare_workspace, _add_sort_sf_recordings):
        add(subparsers)
