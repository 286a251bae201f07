"""Fan-in results: the sorter summary table and the run_sortings.py records file.

Both read the latest per-partition metadata from the event log for the pairs
the spec assigns only, so an unassigned (sorter, recording) cell never holds
them back.
"""

import base64
import json
import os
import re
from datetime import datetime, timezone

import dagster as dg

from sf_assets.assets.history import latest_partition_events, plain_metadata
from sf_assets.assets.metadata import table
from sf_assets.assets.sortings import SORTING_KEY, sorting, sorting_comparison
from sf_assets.core.atomic import write_text_atomic
from sf_assets.core.campaign import Campaign
from sf_assets.core.comparison import COMPARISON_SETTINGS
from sf_assets.core.errors import SortFailure
from sf_assets.core.labels import sorting_label
from sf_assets.core.records import SortingRecord, write_records
from sf_assets.core.sorter_catalog import require_runnable, resolve_sorter
from sf_assets.engines.engine import EngineSettings, container_image_for
from sf_assets.partitions import pair_key
from sf_assets.report import results_page as page
from sf_assets.report.plots import accuracy_vs_snr_png
from sf_assets.resources import KacheryResource, OutputsResource, SortingEngineResource, StudysetResource
from sf_assets.viewer.links import view_command

RESULTS_PAGE = "results.html"
# A sort's failure class (sorting observation metadata) -> how the results page shows the pair.
_FAILURE_STATUS = {"timeout": page.TIMED_OUT, "environment": page.CANNOT_RUN}

# Re-run the fan-ins whenever a new sorting or comparison lands; never wait for
# every upstream partition (unassigned cells are missing forever), nor for sorts
# still running: they read what has landed from the event log, and a campaign's
# backfill keeps some sorting in progress until its very last sort.  Only one run
# of each fan-in at a time.
AS_RESULTS_LAND = (
    dg.AutomationCondition.any_deps_updated().since_last_handled() & ~dg.AutomationCondition.in_progress()
)


def _assigned_partitions(campaign: Campaign) -> dict[str, tuple]:
    return {str(pair_key(s.name, r)): (s, r) for s, r in campaign.jobs}


def collect_records(instance: dg.DagsterInstance, campaign: Campaign) -> list[SortingRecord]:
    """Latest record of every assigned pair that has run, errored ones included."""
    assigned = _assigned_partitions(campaign)
    latest = latest_partition_events(instance, SORTING_KEY, include_observations=True, partitions=assigned)
    records = []
    for partition in assigned:  # spec order
        if partition in latest:
            md = plain_metadata(latest[partition][1])
            if "record" in md:
                records.append(SortingRecord.from_json_dict(md["record"], where=f"sorting[{partition}]"))
    return records


def collect_comparisons(instance: dg.DagsterInstance, campaign: Campaign) -> list[dict]:
    assigned = _assigned_partitions(campaign)
    latest = latest_partition_events(instance, dg.AssetKey("sorting_comparison"), partitions=assigned)
    return [plain_metadata(latest[p][1]) for p in assigned if p in latest]


def _not_run_status(sorter_name: str, settings: EngineSettings) -> tuple[str, str]:
    """A pair with no sorting event yet: it cannot run here, or it has not run yet."""
    entry = resolve_sorter(sorter_name)
    try:
        require_runnable(entry, in_container=container_image_for(entry, settings) is not None)
    except SortFailure as exc:
        return page.CANNOT_RUN, str(exc)
    return page.NOT_RUN, ""


def collect_pair_results(
    instance: dg.DagsterInstance, campaign: Campaign, store, settings: EngineSettings
) -> list[page.PairResult]:
    """The latest outcome of every assigned pair, as the results page shows it.

    A pair is ``ok`` when its latest sorting event is a materialization and a
    comparison of it exists; an errored sort (an observation) is errored,
    timed out or cannot-run by its failure class; a pair never sorted is
    cannot-run when the sorter cannot run with this engine, else not run yet.
    """
    assigned = _assigned_partitions(campaign)
    sortings = latest_partition_events(instance, SORTING_KEY, include_observations=True, partitions=assigned)
    comparisons = latest_partition_events(instance, dg.AssetKey("sorting_comparison"), partitions=assigned)
    results = []
    for partition, (sorter_spec, rec) in assigned.items():
        label = sorting_label(sorter_spec.name, rec.study_name, rec.name)
        names = dict(sorter=sorter_spec.name, study_set=rec.study_set_name, study=rec.study_name, recording=rec.name)
        summary, units, message = None, [], ""
        if partition not in sortings:
            status, message = _not_run_status(sorter_spec.name, settings)
        else:
            md = plain_metadata(sortings[partition][1])
            if md.get("errored"):
                failure = md.get("failure_class") or "unclassified"
                status = _FAILURE_STATUS.get(failure, page.ERRORED)
                message = f"{failure} failure: {_console_error(store, md.get('console_out_uri'))}"
            elif partition in comparisons and comparisons[partition][0] > sortings[partition][0]:
                compared = plain_metadata(comparisons[partition][1])
                status, summary = page.OK, compared["summary"]
                units = store.load_json(compared["comparison_uri"])["units"]
            else:
                status = page.NOT_COMPARED
        results.append(
            page.PairResult(**names, status=status, summary=summary, units=units, message=message,
                            view_command=view_command(label))
        )
    return results


_ERROR_LINE = re.compile(r"^\s*[A-Za-z_.]*(Error|Exception|Failure|Interrupt)\b.*:")


def _console_error(store, console_uri: str | None) -> str:
    """The last line of an errored sort's console that names an exception, and where the console is."""
    if not console_uri:
        return "no console output recorded"
    text = store.load_json(console_uri).get("text", "")
    lines = [line.strip() for line in text.splitlines() if _ERROR_LINE.match(line)]
    return f"{lines[-1] if lines else 'no exception named'} (console output {console_uri})"


def _versions(sorter_names: list[str]) -> tuple[str, dict[str, str]]:
    """spikeinterface's version and each sorter's, as installed in this process's environment."""
    from importlib.metadata import version

    from spikeinterface.sorters.sorterlist import sorter_dict

    versions = {}
    for name in sorter_names:
        try:
            versions[name] = str(sorter_dict[resolve_sorter(name).si_name].get_sorter_version())
        except Exception as exc:  # a sorter not installed here still gets its cell on the page
            versions[name] = f"unknown ({type(exc).__name__})"
    return version("spikeinterface"), versions


def write_results_page(path, pairs: list[page.PairResult]) -> None:
    """Render the results page to ``path``, replaced whole (temporary file, then rename)."""
    sorters = sorted({p.sorter for p in pairs})
    si_version, sorter_versions = _versions(sorters)
    context = page.PageContext(
        comparison_settings=dict(COMPARISON_SETTINGS),
        spikeinterface_version=si_version,
        sorter_versions=sorter_versions,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    units = {sorter: [u for p in pairs if p.sorter == sorter for u in p.units] for sorter in sorters}
    scatters = {
        sorter: accuracy_vs_snr_png({sorter: units[sorter]}, title=f"{sorter}: accuracy vs SNR")
        for sorter in sorters
        if units[sorter]
    }
    write_text_atomic(path, page.render_results_page(pairs, context, scatters))


def summary_frame(comparisons: list[dict]):
    """One row per (sorter, study set, study): the SpikeForest summary numbers."""
    import pandas as pd

    rows = []
    for md in comparisons:
        s = md["summary"]
        rows.append(
            {
                "sorter": md["sorter"],
                "study_set": md["study_set"],
                "study": md["study"],
                "recordings": 1,
                "mean_accuracy": s.get("mean_accuracy"),
                "mean_precision": s.get("mean_precision"),
                "mean_recall": s.get("mean_recall"),
                "num_well_detected": s.get("num_well_detected", 0),
                "num_true_units": s.get("num_true_units", 0),
            }
        )
    if not rows:
        return pd.DataFrame(
            columns=[
                "sorter",
                "study_set",
                "study",
                "recordings",
                "mean_accuracy",
                "mean_precision",
                "mean_recall",
                "num_well_detected",
                "num_true_units",
            ]
        )
    df = pd.DataFrame(rows)
    grouped = df.groupby(["sorter", "study_set", "study"], as_index=False).agg(
        recordings=("recordings", "sum"),
        mean_accuracy=("mean_accuracy", "mean"),
        mean_precision=("mean_precision", "mean"),
        mean_recall=("mean_recall", "mean"),
        num_well_detected=("num_well_detected", "sum"),
        num_true_units=("num_true_units", "sum"),
    )
    return grouped.sort_values(["sorter", "study_set", "study"]).reset_index(drop=True)


def _summary_table(df) -> dg.MetadataValue:
    types = {"sorter": "string", "study_set": "string", "study": "string", "recordings": "int"}
    columns = {c: types.get(c, "float" if c.startswith("mean") else "int") for c in df.columns}
    return table(df.to_dict(orient="records"), columns)


@dg.asset(
    group_name="results",
    kinds={"pandas", "matplotlib"},
    deps=[sorting_comparison],
    automation_condition=AS_RESULTS_LAND,
    description="One table, sorter x study set/study: mean accuracy, precision and recall over "
    "true units with SNR above 8, and well-detected counts (accuracy >= 0.8); plus accuracy vs SNR, "
    "and the static results page (outputs/results.html) with failed pairs shown as such.",
)
def sorter_summary(
    context: dg.AssetExecutionContext,
    studyset: StudysetResource,
    kachery: KacheryResource,
    outputs: OutputsResource,
    sorting_engine: SortingEngineResource,
):
    store = kachery.store()
    campaign = studyset.campaign(kachery)
    comparisons = collect_comparisons(context.instance, campaign)
    pairs = collect_pair_results(context.instance, campaign, store, sorting_engine.settings())
    units_by_sorter: dict[str, list[dict]] = {}
    for pair in pairs:
        units_by_sorter.setdefault(pair.sorter, []).extend(pair.units)
    df = summary_frame(comparisons)
    png = accuracy_vs_snr_png(units_by_sorter)
    folder = outputs.path()
    csv_path = folder / "sorter_summary.csv"
    df.to_csv(csv_path, index=False)
    (folder / "accuracy_vs_snr.png").write_bytes(png)
    page_path = folder / RESULTS_PAGE
    write_results_page(page_path, pairs)
    plot_md = f"![accuracy vs SNR](data:image/png;base64,{base64.b64encode(png).decode()})"
    return dg.MaterializeResult(
        metadata={
            "summary": _summary_table(df),
            "accuracy_vs_snr": dg.MetadataValue.md(plot_md),
            "num_comparisons": len(comparisons),
            "csv": dg.MetadataValue.path(str(csv_path)),
            "results_page": dg.MetadataValue.url(page_path.resolve().as_uri()),
            "pairs_by_status": dg.MetadataValue.json(
                {page.STATUS_TEXT[s]: sum(1 for p in pairs if p.status == s) for s in page.STATUSES}
            ),
            "text": dg.MetadataValue.md("```\n" + df.to_string(index=False) + "\n```"),
        }
    )


@dg.asset(
    group_name="results",
    kinds={"json", "kachery"},
    deps=[sorting],
    automation_condition=AS_RESULTS_LAND,
    description="The run_sortings.py output: one record per assigned (sorter, recording) that has run, "
    "errored ones included, written to a file and to kachery for the old tools.",
)
def sorting_records(
    context: dg.AssetExecutionContext, studyset: StudysetResource, kachery: KacheryResource, outputs: OutputsResource
):
    campaign = studyset.campaign(kachery)
    records = collect_records(context.instance, campaign)
    store = kachery.store()
    payload = [r.to_json_dict() for r in records]
    uri = store.store_json(payload, label="sorting_records.json")
    path = outputs.path() / "sorting_records.json"
    # This file is the asset's own: it is replaced whole, never appended; the
    # temporary name is per process so two overlapping runs cannot collide.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    tmp.unlink(missing_ok=True)
    write_records(tmp, records)
    tmp.replace(path)
    return dg.MaterializeResult(
        metadata={
            "num_records": len(records),
            "num_errored": sum(1 for r in records if r.errored),
            "records_uri": uri,
            "path": dg.MetadataValue.path(str(path)),
            "preview": dg.MetadataValue.json(json.loads(json.dumps(payload[:3]))),
        }
    )
