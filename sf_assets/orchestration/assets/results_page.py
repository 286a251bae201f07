"""The results page's data: every assigned pair's latest outcome, read from the event log.

The page itself is rendered by :mod:`sf_assets.report.results_page` (no
Dagster); this module decides each pair's status from what the ``sorting``
and ``sorting_comparison`` partitions recorded, and writes the page for
``sorter_summary``.
"""

import re
from datetime import datetime, timezone

import dagster as dg

from sf_assets.orchestration.assets.history import latest_partition_events, plain_metadata
from sf_assets.orchestration.assets.sortings import SORTING_KEY
from sf_assets.core.atomic import write_text_atomic
from sf_assets.core.comparison import COMPARISON_SETTINGS
from sf_assets.core.labels import sorting_label
from sf_assets.core.sorter_catalog import resolve_sorter
from sf_assets.orchestration.partitions import sorting_partitions
from sf_assets.report import results_page as page
from sf_assets.report.plots import accuracy_vs_snr_png
from sf_assets.stores.viewer_links import view_command

RESULTS_PAGE = "results.html"
# A sort's failure class (sorting observation metadata) -> how the results page shows the pair.
_FAILURE_STATUS = {"timeout": page.TIMED_OUT, "environment": page.CANNOT_RUN}


def collect_pair_results(instance: dg.DagsterInstance, assigned: dict[str, tuple], store) -> list[page.PairResult]:
    """The latest outcome of every assigned pair, as the results page shows it.

    ``assigned`` maps each assigned pair's ``sorting`` partition key to its
    (sorter spec, recording), in the spec's order.

    A pair is ``ok`` when its latest sorting event is a materialization and a
    comparison of it exists; an errored sort (an observation) is errored,
    timed out or cannot-run by its failure class; a pair with no sorting
    event is errored if its latest run failed before any sort was recorded
    (the engine refused it, say), else not run yet.
    """
    sortings = latest_partition_events(instance, SORTING_KEY, include_observations=True, partitions=assigned)
    comparisons = latest_partition_events(instance, dg.AssetKey("sorting_comparison"), partitions=assigned)
    # A run refused before its sort started (no Docker daemon, say) records no sorting event;
    # the partition status the UI shows still says that it failed.
    never_recorded = [key for key in assigned if key not in sortings]
    run_status = {}
    if never_recorded:
        run_status = instance.get_status_by_partition(SORTING_KEY, never_recorded, sorting_partitions) or {}
    results = []
    for partition, (sorter_spec, rec) in assigned.items():
        label = sorting_label(sorter_spec.name, rec.study_name, rec.name)
        names = dict(sorter=sorter_spec.name, study_set=rec.study_set_name, study=rec.study_name, recording=rec.name)
        summary, units, message = None, [], ""
        if partition not in sortings:
            status = page.NOT_RUN
            if run_status.get(partition) == dg.AssetPartitionStatus.FAILED:
                status, message = page.ERRORED, "its run failed before any sort was recorded: see the run in the UI"
        else:
            md = plain_metadata(sortings[partition][1])
            if md.get("errored"):
                failure = md.get("failure_class") or "unclassified"
                status = _FAILURE_STATUS.get(failure, page.ERRORED)
                # A failure outside the sorter (its comparison's inputs, a full disk) says why itself.
                message = f"{failure} failure: {md.get('error') or _console_error(store, md.get('console_out_uri'))}"
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
