"""``sf-assets view LABEL``: open one workspace label in the browser.

Resolves the label (workspace database, Dagster event log), loads and checks
its content and builds or loads its cached analyzer, all before serving; a
problem on the way is one line on stderr and exit code 2 (see
:func:`sf_assets.cli.entry.main`).
"""
from __future__ import annotations

import argparse
import importlib.util
import time


def run_view(args: argparse.Namespace) -> int:
    import dagster as dg

    from sf_assets.cli.environment import ensure_dagster_home
    from sf_assets.core.settings import load_settings
    from sf_assets.stores.kachery import KacheryStore
    from sf_assets.stores.workspace import WorkspaceStore
    from sf_assets.viewer.app import load_view, serve_view
    from sf_assets.viewer.resolve import resolve_target
    from sf_assets.core.errors import ViewerError

    missing = [name for name in ("spikeinterface_gui", "panel") if importlib.util.find_spec(name) is None]
    if missing:
        raise ViewerError(
            f"the viewer needs {', '.join(missing)}, which are not installed: install the 'viewer' extra "
            "(pip install -c constraints.txt -e '.[viewer]'; make install does)"
        )
    settings = load_settings()
    started = time.perf_counter()
    ensure_dagster_home()
    store = WorkspaceStore(settings.workspace_db_url)
    try:
        with dg.DagsterInstance.get() as instance:
            target = resolve_target(args.label, store, instance, workspace_uri=args.workspace_uri or "")
    finally:
        store.dispose()
    kachery = KacheryStore(settings.kachery_dir, local_only=settings.kachery_local_only)
    view = load_view(target, kachery, kachery.cache_dir("analyzers"))
    print(f"{args.label}: ready in {time.perf_counter() - started:.2f} s", flush=True)
    serve_view(view, args.port, settings.viewers_dir, say=lambda line: print(line, flush=True))
    return 0


def add_view_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "view",
        help="open a sorting or a ground truth of the workspace in the browser",
        description=(
            "Serve spikeinterface-gui on 127.0.0.1 for one workspace label: SORTER/STUDY/RECORDING (with its "
            "ground-truth agreement: matched true unit, accuracy, SNR) or Ground-Truth/STUDY/RECORDING. The "
            "analyzer (templates, waveforms, unit locations, correlograms, quality metrics) is built on the "
            "first open and cached by content. An errored sorting shows its console output."
        ),
    )
    parser.add_argument("label", help="e.g. MountainSort5/STUDY/RECORDING or Ground-Truth/STUDY/RECORDING")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument(
        "-W", "--workspace-uri", metavar="URI", default="",
        help="workspace://... to look the label up in (default: the workspace workspace_sync fills)",
    )
    parser.set_defaults(run=run_view)
