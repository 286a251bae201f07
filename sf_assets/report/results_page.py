"""The benchmark at a glance: one static HTML page, as SpikeForest's website showed it.

The page is a single file with everything inline (CSS, a few lines of
JavaScript, plots as base64 PNGs), so it opens from ``file://`` with no
server and no network.  It shows:

* the main table, study set x sorter: the mean accuracy over true units with
  SNR above the threshold, and the count of well-detected units, each cell
  coloured on a light-to-dark scale as SpikeForest coloured its cells;
* a drill-down per study set, study and recording, down to the true units;
* the accuracy-vs-SNR scatter of each sorter.

A cell is never imputed: a pair whose sort errored, timed out or cannot run
in this environment is shown as such, and an aggregate over several
recordings says how many of them it covers.  Every figure carries the
comparison settings and the versions (spikeinterface, each sorter) it used.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from typing import Iterable

OK = "ok"
ERRORED = "errored"
TIMED_OUT = "timed_out"
CANNOT_RUN = "cannot_run"
NOT_RUN = "not_run"
NOT_COMPARED = "not_compared"
STATUSES = (OK, ERRORED, TIMED_OUT, CANNOT_RUN, NOT_RUN, NOT_COMPARED)
FAILED = (ERRORED, TIMED_OUT, CANNOT_RUN)
STATUS_TEXT = {
    OK: "ok",
    ERRORED: "errored",
    TIMED_OUT: "timed out",
    CANNOT_RUN: "cannot run",
    NOT_RUN: "not run yet",
    NOT_COMPARED: "not compared yet",
}

# SpikeForest coloured a cell by its score from near-white (0) to dark blue-green (1).
_SCALE = ((0.0, (247, 252, 240)), (0.5, (123, 204, 196)), (0.8, (43, 140, 190)), (1.0, (8, 64, 129)))


@dataclass(frozen=True)
class PairResult:
    """The latest outcome of one assigned (sorter, recording) pair.

    Attributes
    ----------
    sorter, study_set, study, recording : str
        The pair's names.
    status : str
        One of :data:`STATUSES`.
    summary : dict or None
        For ``ok``: :func:`sf_assets.core.comparison.summarize`'s numbers.
    units : list of dict
        For ``ok``: the per-true-unit comparison rows (``true_unit_id``,
        ``best_unit_id``, ``accuracy``, ``precision``, ``recall``, ``snr``).
    message : str
        Why a failed pair failed (its failure class and error).
    view_command : str
        The command that opens this sorting in the viewer.
    """

    sorter: str
    study_set: str
    study: str
    recording: str
    status: str
    summary: dict | None = None
    units: list[dict] = field(default_factory=list)
    message: str = ""
    view_command: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"pair {self.sorter}/{self.study}/{self.recording}: status {self.status!r} "
                             f"is not one of {list(STATUSES)}")


@dataclass(frozen=True)
class PageContext:
    """What every figure states: the comparison settings and the versions used.

    Attributes
    ----------
    comparison_settings : dict
        Matching and summary settings (delta time, match mode, SNR threshold, ...).
    spikeinterface_version : str
    sorter_versions : dict
        ``{sorter: version}`` as installed where the page was written.
    generated_at : str
        When the page was written (ISO 8601).
    """

    comparison_settings: dict
    spikeinterface_version: str
    sorter_versions: dict
    generated_at: str


@dataclass(frozen=True)
class Cell:
    """An aggregate of pairs (one sorter, several recordings) as the table shows it."""

    status: str
    mean_accuracy: float | None
    num_well_detected: int
    num_true_units: int
    num_ok: int
    num_pairs: int
    counts: dict

    @property
    def label(self) -> str:
        """The cell's status in words, as the page shows it."""
        return STATUS_TEXT[self.status]


def aggregate(pairs: list[PairResult]) -> Cell:
    """One table cell from the pairs of one sorter in one study set (or study, or recording).

    The mean accuracy is the mean of the recordings' means, as the summary
    table computes it, over the recordings that were sorted and compared
    only; the cell's status is the worst failure among its pairs (errored
    before timed out before cannot run), else not-run / not-compared when
    some pair has no result yet, else ``ok``.

    Parameters
    ----------
    pairs : list[PairResult]
        The cell's pairs.

    Returns
    -------
    Cell
        Status, mean accuracy, unit counts and how many recordings it covers.
    """
    counts = {s: sum(1 for p in pairs if p.status == s) for s in STATUSES}
    ok = [p for p in pairs if p.status == OK]
    means = [p.summary.get("mean_accuracy") for p in ok if p.summary]
    means = [m for m in means if m is not None and not (isinstance(m, float) and math.isnan(m))]
    status = next((s for s in (ERRORED, TIMED_OUT, CANNOT_RUN, NOT_RUN, NOT_COMPARED) if counts[s]), OK)
    return Cell(
        status=status,
        mean_accuracy=sum(means) / len(means) if means else None,
        num_well_detected=sum(int((p.summary or {}).get("num_well_detected", 0)) for p in ok),
        num_true_units=sum(int((p.summary or {}).get("num_true_units", 0)) for p in ok),
        num_ok=len(ok),
        num_pairs=len(pairs),
        counts=counts,
    )


def score_colour(score: float) -> tuple[str, str]:
    """Background and text colours of a cell scoring ``score`` (0..1).

    Parameters
    ----------
    score : float
        The mean accuracy (clipped to 0..1).

    Returns
    -------
    tuple[str, str]
        CSS colours: background, then dark or light text for contrast.
    """
    score = min(1.0, max(0.0, score))
    for (x0, c0), (x1, c1) in zip(_SCALE, _SCALE[1:]):
        if score <= x1:
            t = (score - x0) / (x1 - x0)
            rgb = tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))
            break
    text = "#ffffff" if score >= 0.65 else "#111111"
    return "#%02x%02x%02x" % rgb, text


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell_html(cell: Cell | None, sorter: str, scope: str, key: str) -> str:
    attrs = f'data-sorter="{_e(sorter)}" data-{scope}="{_e(key)}"'
    if cell is None:
        return f'<td class="cell unassigned" {attrs} data-status="unassigned" title="not assigned by the spec">·</td>'
    covered = f"{cell.num_ok} of {cell.num_pairs} recordings" if cell.num_pairs > 1 else ""
    if cell.status == OK:
        score = cell.mean_accuracy
        bg, fg = score_colour(score if score is not None else 0.0)
        style = f' style="background:{bg};color:{fg}"' if score is not None else ""
        title = f"{sorter} · {key}: mean accuracy {_fmt(score, 3)} (SNR above threshold), " \
                f"{cell.num_well_detected} of {cell.num_true_units} true units well detected"
        return (
            f'<td class="cell ok" {attrs} data-status="ok"{style} title="{_e(title)}">'
            f'<span class="acc">{_fmt(score)}</span>'
            f'<span class="wd">{cell.num_well_detected}/{cell.num_true_units}</span></td>'
        )
    parts = [f'{n} {STATUS_TEXT[s]}' for s, n in cell.counts.items() if n and s != OK]
    partial = ""
    if cell.num_ok:
        partial = (f'<span class="partial">{_fmt(cell.mean_accuracy)} · '
                   f'{cell.num_well_detected}/{cell.num_true_units} over {covered}</span>')
    title = f"{sorter} · {key}: " + ", ".join(parts)
    return (
        f'<td class="cell {cell.status}" {attrs} data-status="{cell.status}" title="{_e(title)}">'
        f'<span class="state">{_e(cell.label)}</span>{partial}</td>'
    )


def _settings_caption(context: PageContext, sorters: Iterable[str]) -> str:
    s = context.comparison_settings
    versions = ", ".join(f"{name} {context.sorter_versions.get(name, '?')}" for name in sorters)
    return (
        '<p class="caption">Comparison: spikes matched within '
        f'{_e(s.get("delta_time_ms"))} ms, match mode {_e(s.get("match_mode"))}; '
        f'means over true units with SNR &gt; {_e(s.get("snr_threshold"))}; well detected: accuracy &ge; '
        f'{_e(s.get("well_detected_accuracy"))}; SNR: {_e(s.get("snr_template"))} template peak over MAD noise, '
        f'{_e(s.get("snr_freq_min_hz"))}-{_e(s.get("snr_freq_max_hz"))} Hz. '
        f'Versions: spikeinterface {_e(context.spikeinterface_version)}; {_e(versions)}.</p>'
    )


def _grid(rows: list[tuple[str, str, dict[str, list[PairResult]]]], sorters: list[str], scope: str,
          header: str, table_id: str = "") -> str:
    """A table, one row per (row key, shown name), one column per sorter."""
    id_attr = f' id="{table_id}"' if table_id else ""
    out = [f'<table class="grid"{id_attr}><thead><tr><th>{_e(header)}</th>']
    out += [f'<th class="sorter">{_e(s)}</th>' for s in sorters]
    out.append("</tr></thead><tbody>")
    for key, shown, by_sorter in rows:
        out.append(f'<tr><th class="rowname">{shown}</th>')
        for sorter in sorters:
            pairs = by_sorter.get(sorter)
            out.append(_cell_html(aggregate(pairs) if pairs else None, sorter, scope, key))
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _units_table(pair: PairResult) -> str:
    if pair.status != OK:
        return f'<p class="failure"><b>{_e(STATUS_TEXT[pair.status])}</b>: {_e(pair.message or "no result")}</p>'
    rows = "".join(
        f"<tr><td>{_e(u.get('true_unit_id'))}</td><td>{_e(_fmt(u.get('best_unit_id')))}</td>"
        f"<td>{_fmt(u.get('snr'), 1)}</td>"
        f"<td style=\"background:{score_colour(u.get('accuracy') or 0.0)[0]};"
        f"color:{score_colour(u.get('accuracy') or 0.0)[1]}\">{_fmt(u.get('accuracy'))}</td>"
        f"<td>{_fmt(u.get('precision'))}</td><td>{_fmt(u.get('recall'))}</td></tr>"
        for u in sorted(pair.units, key=lambda u: -(u.get("snr") or 0.0))
    )
    return (
        '<table class="units"><thead><tr><th>true unit</th><th>matched unit</th><th>SNR</th>'
        f"<th>accuracy</th><th>precision</th><th>recall</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_results_page(pairs: list[PairResult], context: PageContext, scatter_pngs: dict[str, bytes]) -> str:
    """The whole page as one HTML string.

    Parameters
    ----------
    pairs : list of PairResult
        Every assigned pair, whatever its outcome.
    context : PageContext
        Settings and versions, printed under every figure.
    scatter_pngs : dict
        ``{sorter: PNG bytes}``: each sorter's accuracy-vs-SNR scatter; a
        sorter without one (nothing compared) gets a line saying why.

    Returns
    -------
    str
        A self-contained HTML document.
    """
    sorters = sorted({p.sorter for p in pairs})
    caption = _settings_caption(context, sorters)
    by_set: dict[str, dict[str, dict[str, list[PairResult]]]] = {}
    for p in pairs:
        by_set.setdefault(p.study_set, {}).setdefault(p.study, {}).setdefault(p.recording, []).append(p)

    def by_sorter(items: Iterable[PairResult]) -> dict[str, list[PairResult]]:
        grouped: dict[str, list[PairResult]] = {}
        for p in items:
            grouped.setdefault(p.sorter, []).append(p)
        return grouped

    main_rows = []
    for set_name in sorted(by_set):
        members = [p for study in by_set[set_name].values() for recs in study.values() for p in recs]
        link = f'<a href="#set-{_e(set_name)}">{_e(set_name)}</a>'
        main_rows.append((set_name, link, by_sorter(members)))
    body = [
        "<h1>Spike sorting benchmark</h1>",
        f'<p class="meta">Written {_e(context.generated_at)} · {len(pairs)} assigned sorter x recording pairs · '
        + ", ".join(f"{n} {STATUS_TEXT[s]}" for s, n in aggregate(pairs).counts.items() if n)
        + "</p>",
        "<h2>Study sets</h2>",
        '<p class="legend">Each cell: mean accuracy over true units above the SNR threshold (large) and '
        "well-detected / true units (small); darker is better. "
        + "".join(f'<span class="cell {s} key">{STATUS_TEXT[s]}</span>' for s in (ERRORED, TIMED_OUT, CANNOT_RUN, NOT_RUN))
        + " cells are shown as they are, never filled in.</p>",
        _grid(main_rows, sorters, "study-set", "study set", "main-table"),
        caption,
        "<h2>By study and recording</h2>",
    ]
    for set_name in sorted(by_set):
        studies = by_set[set_name]
        study_rows = [
            (study, _e(study), by_sorter(p for recs in studies[study].values() for p in recs)) for study in sorted(studies)
        ]
        body.append(f'<details class="set" id="set-{_e(set_name)}" open><summary>{_e(set_name)}</summary>')
        body.append(_grid(study_rows, sorters, "study", "study", f"studies-{_e(set_name)}"))
        for study in sorted(studies):
            recordings = studies[study]
            rec_rows = [(rec, _e(rec), by_sorter(recordings[rec])) for rec in sorted(recordings)]
            body.append(f'<details class="study"><summary>{_e(study)}</summary>')
            body.append(_grid(rec_rows, sorters, "recording", "recording"))
            for rec in sorted(recordings):
                for p in sorted(recordings[rec], key=lambda p: p.sorter):
                    body.append(
                        f'<details class="pair" data-pair="{_e(p.sorter)}/{_e(study)}/{_e(rec)}">'
                        f"<summary>{_e(p.sorter)} · {_e(rec)} · {_e(STATUS_TEXT[p.status])}</summary>"
                    )
                    if p.view_command:
                        body.append(f'<p>Open it: <code>{_e(p.view_command)}</code></p>')
                    body.append(_units_table(p))
                    body.append("</details>")
            body.append("</details>")
        body.append(caption)
        body.append("</details>")
    body.append("<h2>Accuracy vs SNR, per sorter</h2>")
    for sorter in sorters:
        png = scatter_pngs.get(sorter)
        own_caption = _settings_caption(context, [sorter])
        if png is None:
            counts = aggregate([p for p in pairs if p.sorter == sorter]).counts
            state = ", ".join(f"{n} {STATUS_TEXT[s]}" for s, n in counts.items() if n)
            body.append(
                f'<figure class="scatter empty" data-sorter="{_e(sorter)}"><figcaption>{_e(sorter)}</figcaption>'
                f"<p>No compared sorting to plot ({_e(state)}).</p>{own_caption}</figure>"
            )
            continue
        b64 = base64.b64encode(png).decode("ascii")
        body.append(
            f'<figure class="scatter" data-sorter="{_e(sorter)}"><img alt="accuracy vs SNR, {_e(sorter)}" '
            f'src="data:image/png;base64,{b64}"><figcaption>{_e(sorter)}</figcaption>{own_caption}</figure>'
        )
    return _PAGE.format(css=_CSS, body="\n".join(body))


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#111;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.meta,.legend,.caption{color:#444;font-size:13px}
table.grid{border-collapse:collapse;margin:8px 0}
table.grid th,table.grid td{border:1px solid #ccc;padding:6px 10px;text-align:center}
th.rowname{text-align:left;font-weight:600} th.sorter{min-width:110px}
td.cell{min-width:96px} td.cell .acc{display:block;font-size:17px;font-weight:600}
td.cell .wd,td.cell .partial{display:block;font-size:11px;opacity:.9}
.cell.errored{background:repeating-linear-gradient(45deg,#b2182b,#b2182b 6px,#c9404f 6px,#c9404f 12px);color:#fff}
.cell.timed_out{background:repeating-linear-gradient(45deg,#e08214,#e08214 6px,#f1a340 6px,#f1a340 12px);color:#fff}
.cell.cannot_run{background:repeating-linear-gradient(45deg,#777,#777 6px,#999 6px,#999 12px);color:#fff}
.cell.not_run,.cell.not_compared{background:#fff;color:#666;border:1px dashed #999}
.cell.unassigned{background:#fafafa;color:#bbb}
.cell .state{display:block;font-weight:700;text-transform:uppercase;font-size:12px;letter-spacing:.04em}
.cell.key{display:inline-block;padding:1px 6px;margin:0 3px;font-size:11px}
details{margin:6px 0 6px 14px} summary{cursor:pointer;font-weight:600}
details.set>summary{font-size:15px}
table.units{border-collapse:collapse;font-size:12px;margin:4px 0 8px}
table.units th,table.units td{border:1px solid #ddd;padding:2px 8px;text-align:right}
.failure{color:#b2182b} code{background:#f3f3f3;padding:1px 4px}
figure.scatter{display:inline-block;margin:8px;vertical-align:top;max-width:560px}
figure.scatter img{max-width:100%} figcaption{font-weight:600}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>Spike sorting benchmark</title><style>{css}</style></head>
<body>
{body}
</body></html>
"""
