"""Load what a label names and serve it in the browser with spikeinterface-gui (Panel).

Two steps, so that every failure comes before anything is served:

1. :func:`load_view` reads and verifies the content (kachery checks each
   file's sha1), builds or loads the cached analyzer and the agreement
   columns, or reads an errored sorting's console output;
2. :func:`serve_view` serves the page on 127.0.0.1 until interrupted, and
   registers its URL (:mod:`sf_assets.stores.viewer_links`) while it runs.
"""
from __future__ import annotations

import html
import math
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sf_assets.core.comparison import COMPARISON_SETTINGS
from sf_assets.core.errors import RecordingError, UriError, ViewerError
from sf_assets.core.uris import parse_uri
from sf_assets.stores.kachery import KacheryStore
from sf_assets.viewer.agreement import agreement_rows, sorted_unit_agreement, true_unit_agreement
from sf_assets.stores.viewer_links import register_viewer, unregister_viewer
from sf_assets.viewer.target import ERRORED_SORTING, GROUND_TRUTH_KIND, ViewTarget

TITLE = "sf-assets viewer"
# The views people open first: the unit table, templates/waveforms, correlograms, probe, traces.
LAYOUT = dict(
    zone1=["unitlist"],
    zone2=[],
    zone3=["trace", "spikeamplitude"],
    zone4=[],
    zone5=["probe"],
    zone6=["similarity"],
    zone7=["waveform", "waveformheatmap"],
    zone8=["correlogram", "isi", "metrics"],
)


@dataclass
class LoadedView:
    """What :func:`serve_view` shows for one label."""

    target: ViewTarget
    header_html: str
    analyzer: object = None
    unit_properties: dict = field(default_factory=dict)
    console_text: str = ""
    timing: str = ""
    cache_dir: Path | None = None


def load_view(target: ViewTarget, store: KacheryStore, cache_root: Path) -> LoadedView:
    """Load and check everything ``target`` needs; build its analyzer if not cached.

    Raises
    ------
    ViewerError
        A missing or corrupt object (the message names its URI), or a
        comparison that does not fit the sorting.
    """
    try:
        if target.kind == ERRORED_SORTING:
            return _console_view(target, store)
        return _analyzer_view(target, store, cache_root)
    except (UriError, RecordingError) as exc:
        raise ViewerError(f"{target.label}: {exc}") from None


def _console_view(target: ViewTarget, store: KacheryStore) -> LoadedView:
    if not target.console_out_uri:
        raise ViewerError(f"{target.label}: the sort errored ({target.failure}) and recorded no console output")
    console = store.load_json(target.console_out_uri)
    text = console.get("text", "") if isinstance(console, dict) else ""
    header = (
        f"<h2>{html.escape(target.label)}: the sort errored ({html.escape(target.failure)} failure)</h2>"
        f"<p>Its console output ({html.escape(target.console_out_uri)}):</p>"
    )
    return LoadedView(target, header, console_text=text, timing="console output")


def _analyzer_view(target: ViewTarget, store: KacheryStore, cache_root: Path) -> LoadedView:
    from sf_assets.stores.data import load_recording, load_sorting_object
    from sf_assets.viewer.analyzer import open_analyzer

    recording = load_recording(target.recording_uri, store)
    sorting = load_sorting_object(target.sorting_uri, store, recording.get_sampling_frequency())
    if sorting.get_num_units() == 0:
        raise ViewerError(f"{target.label}: the sorting {target.sorting_uri} has no units to show")
    opened = open_analyzer(
        sorting, recording, cache_root, parse_uri(target.sorting_uri).sha1, parse_uri(target.recording_uri).sha1
    )
    unit_ids = list(opened.analyzer.unit_ids)
    snr_by_unit = store.load_json(target.snrs_uri)["snr_by_unit"] if target.snrs_uri else {}
    if target.kind == GROUND_TRUTH_KIND:
        comparisons = {sorter: store.load_json(uri)["units"] for sorter, uri in target.comparisons.items()}
        properties = true_unit_agreement(unit_ids, snr_by_unit, comparisons)
        settings = next((store.load_json(u)["settings"] for u in target.comparisons.values()), None)
        table = _true_units_table(unit_ids, properties)
    elif target.comparison_uri:
        comparison = store.load_json(target.comparison_uri)
        properties = sorted_unit_agreement(unit_ids, comparison["units"])
        settings = comparison.get("settings")
        table = _agreement_table(agreement_rows(comparison["units"]))
    else:
        properties, settings = {}, None
        table = "<p>No comparison with the ground truth is recorded for this sorting yet.</p>"
    how = "built" if opened.built else "loaded from the cache"
    timing = f"analyzer {how} in {opened.seconds:.2f} s ({opened.folder})"
    header = (
        f"<h2>{html.escape(target.label)}</h2>"
        f"<p class=\"unit-count\">{len(unit_ids)} units · {html.escape(timing)}</p>"
        f"<details open><summary>Ground-truth agreement</summary>{table}{_settings_line(settings)}</details>"
    )
    return LoadedView(target, header, analyzer=opened.analyzer, unit_properties=properties, timing=timing,
                      cache_dir=Path(cache_root))


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else html.escape(str(value))


def _agreement_table(rows: list[dict]) -> str:
    body = "".join(
        f"<tr><td>{_fmt(r.get('true_unit_id'))}</td><td>{_fmt(r.get('snr'), 1)}</td>"
        f"<td>{_fmt(r.get('best_unit_id'))}</td><td>{_fmt(r.get('accuracy'))}</td>"
        f"<td>{_fmt(r.get('precision'))}</td><td>{_fmt(r.get('recall'))}</td></tr>"
        for r in rows
    )
    return (
        '<table class="agreement"><thead><tr><th>true unit</th><th>SNR</th><th>matched unit</th>'
        f"<th>accuracy</th><th>precision</th><th>recall</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _true_units_table(unit_ids: list, columns: dict[str, list]) -> str:
    names = list(columns)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{_fmt(u)}</td>" + "".join(f"<td>{_fmt(columns[n][i])}</td>" for n in names) + "</tr>"
        for i, u in enumerate(unit_ids)
    )
    return f'<table class="agreement"><thead><tr><th>true unit</th>{head}</tr></thead><tbody>{body}</tbody></table>'


def _settings_line(settings: dict | None) -> str:
    if not settings:
        return ""
    shown = ", ".join(f"{html.escape(str(k))} {html.escape(str(v))}" for k, v in settings.items())
    return (
        f"<p class=\"settings\">Comparison settings: {shown}; SNR threshold {COMPARISON_SETTINGS['snr_threshold']}, "
        f"well detected at accuracy &ge; {COMPARISON_SETTINGS['well_detected_accuracy']}.</p>"
    )


_CSS = """
table.agreement{border-collapse:collapse;font-size:12px}
table.agreement th,table.agreement td{border:1px solid #ccc;padding:2px 8px;text-align:right}
pre.console{background:#111;color:#eee;padding:12px;font-size:12px;white-space:pre-wrap;max-width:1400px}
p.settings{font-size:12px;color:#444}
"""


def _page(view: LoadedView):
    """The Panel layout of ``view`` (built in the serving process)."""
    import numpy as np
    import panel as pn

    header = pn.pane.HTML(f"<style>{_CSS}</style>{view.header_html}", sizing_mode="stretch_width")
    if view.analyzer is None:
        console = pn.pane.HTML(f'<style>{_CSS}</style><pre class="console">{html.escape(view.console_text)}</pre>',
                               sizing_mode="stretch_width")
        return pn.Column(header, console, sizing_mode="stretch_width")
    from spikeinterface_gui import run_mainwindow

    from sf_assets.viewer.gui_adapters import use_cached_palette, use_offline_shortcuts

    use_offline_shortcuts()
    use_cached_palette(view.cache_dir)
    window = run_mainwindow(
        view.analyzer,
        mode="web",
        start_app=False,
        panel_window_servable=False,
        layout=LAYOUT,
        extra_unit_properties={k: np.asarray(v) for k, v in view.unit_properties.items()} or None,
        user_settings={},
        disable_save_settings_button=True,
    )
    return pn.Column(header, window.main_layout, sizing_mode="stretch_both")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_view(view: LoadedView, port: int, viewers_dir: Path, say: Callable[[str], None] = print) -> None:
    """Serve ``view`` on ``http://127.0.0.1:PORT/`` until SIGINT or SIGTERM.

    Parameters
    ----------
    port : int
        0: any free port.
    viewers_dir : Path
        Where the running viewer registers its URL (removed at exit).
    """
    import panel as pn

    port = port or free_port()
    layout = _page(view)
    try:
        server = pn.serve(
            {"/": layout},
            address="127.0.0.1",
            port=port,
            websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"],
            show=False,
            start=False,
            title=f"{view.target.label} · {TITLE}",
        )
    except OSError as exc:
        raise ViewerError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; choose another --port") from None
    url = f"http://127.0.0.1:{port}/"
    registration = register_viewer(viewers_dir, view.target.label, url)

    def stop(_signum, _frame):
        server.io_loop.add_callback_from_signal(server.io_loop.stop)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        say(f"{view.target.label}: {view.timing}")
        say(f"serving {url} (Ctrl-C to stop)")
        server.io_loop.start()
    finally:
        unregister_viewer(registration)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
