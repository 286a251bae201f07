"""Sortings, their canary check, and their comparison with ground truth.

One partition per (sorter, recording) pair the spec assigns.  The canary
check is declared on ``sorting`` itself and is blocking: the step starts one
worker process that sorts a short window first; its result is emitted as
soon as the worker decides it, and a classified failure ends the step before
the full sort starts.  Canary and full sort share the worker process, so a
sorter's import and compilation cost is paid once.
"""

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import NoReturn

import dagster as dg

from sf_assets.orchestration.assets.faults import fails_clearly_on_storage_faults
from sf_assets.orchestration.assets.history import latest_metadata
from sf_assets.orchestration.assets.keys import SORTING_KEY
from sf_assets.orchestration.assets.metadata import json_safe, table
from sf_assets.orchestration.assets.recordings import content_version, recording, ground_truth
from sf_assets.orchestration.assets.view_links import view_metadata
from sf_assets.core.errors import RecordingError, SfAssetsError, SortFailure, UriError
from sf_assets.core.labels import sorting_label
from sf_assets.core.records import SortingRecord
from sf_assets.core.sorter_catalog import require_runnable, resolve_sorter
from sf_assets.engines.engine import container_image_for, run_sort, work_dir_for
from sf_assets.engines.job import SORT_ENGINE_VERSION, CanaryReport, SortJob, SortReport
from sf_assets.engines.job_cache import job_cache_verdict
from sf_assets.engines.provenance import code_versions, ran_with
from sf_assets.engines.refused import REFUSED, refused_report
from sf_assets.engines.service_client import SortServiceError
from sf_assets.engines.work_dirs import claim_attempt_dir, holding_the_pair
from sf_assets.orchestration.partitions import recording_key, sorting_partitions, split_pair_key
from sf_assets.orchestration.planning import expected_cache_key
from sf_assets.orchestration.resources import KacheryResource, SortingEngineResource, StudysetResource
from sf_assets.orchestration.launches import launch_of

CANARY = "canary"
SORTING_FORMAT = "mda"
CONSOLE_TAIL_CHARS = 4000
# failure_class of a record marked errored because its comparison could not load its inputs.
COMPARISON_INPUT_FAILURE = "comparison_input"
# failure_class of a sort stopped by a full or read-only disk (see assets.faults).
STORAGE_FAILURE = "storage"

by_recording = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="recording")


def _assigned_pair(context, studyset: StudysetResource, kachery: KacheryResource):
    """The pair's sorter spec and recording; refuse at once a pair the spec does not assign."""
    sorter_name, label = split_pair_key(context.partition_key)
    try:
        return studyset.campaign(kachery).require_assigned(sorter_name, label)
    except SfAssetsError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc


def canary_check_result(report: CanaryReport) -> dg.AssetCheckResult:
    """The canary's verdict as the blocking check's result: a classified failure fails the check.

    Parameters
    ----------
    report : CanaryReport
        The canary's outcome.

    Returns
    -------
    AssetCheckResult
        Passed unless the canary failed; its metadata says window, units found, elapsed and class.
    """
    metadata = {
        "status": report.status,
        "window_s": report.window_s if report.window_s is not None else 0.0,
        "units_found": report.num_units if report.num_units is not None else -1,
        "elapsed_s": round(report.elapsed_s or 0.0, 2),
        "failure_class": report.failure_class or "none",
    }
    if report.message:
        metadata["message"] = report.message
    if report.retry_advice:
        metadata["advice"] = report.retry_advice
    return dg.AssetCheckResult(
        check_name=CANARY,
        passed=not report.blocks_full_sort,
        metadata=metadata,
        description=f"canary {report.status}",
    )


def _record(sorter_spec, rec, report: SortReport, console_uri: str | None) -> SortingRecord:
    output = None
    if not report.errored:
        output = {"sorting_format": SORTING_FORMAT, "data": {"sorting_object_uri": report.sorting_object_uri}}
    return SortingRecord(
        recording_name=rec.name,
        study_name=rec.study_name,
        sorter_name=sorter_spec.name,
        sorting_parameters=dict(sorter_spec.params or {}),
        console_out_uri=console_uri,
        cpu_time_sec=report.elapsed_s,
        errored=report.errored,
        start_time=report.start_time,
        end_time=report.end_time,
        sorting_output=output,
        recording_uri=rec.recording_uri,
        ground_truth_uri=rec.sorting_true_uri,
        provenance=report.details.get("provenance"),
    )


def _jit_metadata(jit: dict | None) -> dict:
    if not jit:
        return {}
    return {"jit_functions_loaded": jit["loaded"], "jit_functions_compiled": jit["compiled"]}


def _failure_kind(report: SortReport) -> str:
    if report.details.get("stage") == REFUSED:
        return f"{report.failure_class} failure: "
    if report.failure_class and report.failure_class != "timeout":
        where = "canary" if report.canary and report.canary.blocks_full_sort else "sort"
        return f"{report.failure_class} failure ({where}): "
    return ""


def _console_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text[-CONSOLE_TAIL_CHARS:]


def _record_storage_fault(fault, context, studyset: StudysetResource, kachery: KacheryResource, **_) -> None:
    """A sort stopped by a storage fault (a read-only or full ``sorts/``) leaves an errored record.

    Without it the pair's previous successful sorting would still show as
    current in the records and the summary.  No console is stored: the
    store may be the faulty disk.
    """
    sorter_spec, rec = _assigned_pair(context, studyset, kachery)
    now = time.time()
    report = SortReport(
        errored=True, start_time=now, end_time=now, elapsed_s=0.0, cpu_time_s=None, console_path="",
        error_message=str(fault), failure_class=STORAGE_FAILURE,
    )
    record = _record(sorter_spec, rec, report, None)
    metadata = {
        "label": sorting_label(sorter_spec.name, rec.study_name, rec.name),
        "record": dg.MetadataValue.json(record.to_json_dict()),
        "errored": True,
        "failure_class": STORAGE_FAILURE,
        "error": str(fault),
    }
    context.log_event(dg.AssetObservation(asset_key=SORTING_KEY, partition=context.partition_key, metadata=metadata))


@dg.asset(
    partitions_def=sorting_partitions,
    group_name="sortings",
    kinds={"spikeinterface", "kachery"},
    deps=[dg.AssetDep(recording, partition_mapping=by_recording)],
    check_specs=[
        dg.AssetCheckSpec(
            CANARY,
            asset="sorting",
            blocking=True,
            # One canary result per (sorter, recording): partitioned check specs
            # are a preview feature in Dagster 1.13, used on purpose.
            partitions_def=sorting_partitions,
            description="Short-window smoke-test sort with the same sorter and params, run first; "
            "a classified failure stops the full sort.",
        )
    ],
    code_version=SORT_ENGINE_VERSION,
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    # A job-cache hit materializes nothing (see the body).
    output_required=False,
    description="One (sorter, recording) sort, run by spikeinterface in a supervised worker process "
    "(timeout, console capture); the sorting is stored in kachery.",
)
@fails_clearly_on_storage_faults(on_fault=_record_storage_fault)
def sorting(
    context: dg.AssetExecutionContext,
    studyset: StudysetResource,
    kachery: KacheryResource,
    sorting_engine: SortingEngineResource,
):
    """Sort one (sorter, recording) pair through the sort service, its canary first; or take it from the job cache."""
    sorter_spec, rec = _assigned_pair(context, studyset, kachery)
    settings = sorting_engine.settings()
    pair_dir = work_dir_for(settings, sorter_spec.name, rec.study_name, rec.name, context.run.run_id).parent
    # Two launches that planned the pair at the same moment (a UI backfill and a sensor tick) both
    # found it missing; the second waits for the first's sorting and then finds it in the job cache.
    # Without the cache, a forced sort runs beside any other (determinism checks sort a pair twice).
    one_at_a_time = (
        holding_the_pair(
            pair_dir,
            sorting_engine.job_cache,
            context.run.run_id,
            lambda holder: context.log.info(f"waiting for run {holder}, sorting this pair"),
        )
        if sorting_engine.use_job_cache
        else contextlib.nullcontext()
    )
    with one_at_a_time:
        yield from _sort_or_take_from_cache(context, sorting_engine, settings, kachery, sorter_spec, rec)


def _sort_or_take_from_cache(
    context: dg.AssetExecutionContext,
    sorting_engine: SortingEngineResource,
    settings,
    kachery: KacheryResource,
    sorter_spec,
    rec,
):
    """The sorting step's work once it may decide for its pair: a job-cache hit, or a sort and its result."""
    entry = resolve_sorter(sorter_spec.name)
    image = container_image_for(entry, settings)
    installed = code_versions(entry.package, in_container=image is not None)
    key = expected_cache_key(sorter_spec, rec, settings, versions=installed)
    store = kachery.store()

    cache_miss = None
    if sorting_engine.use_job_cache:
        previous = latest_metadata(context.instance, SORTING_KEY, context.partition_key, include_observations=True)
        verdict = job_cache_verdict(previous, key, store)
        if not verdict.hit:
            cache_miss = verdict.reason
            context.log.info(f"job cache {sorting_engine.job_cache!r}: sorting: {verdict.reason}")
        else:
            # Skipped as every launcher skips it (sf_assets.orchestration.planning): no new materialization,
            # so nothing downstream in this run runs again either.
            context.log.info(
                f"job cache {sorting_engine.job_cache!r}: {verdict.reason}; the latest sorting of these "
                "inputs is current, not sorting again"
            )
            # Dagster requires the blocking check's result in every execution of this step.
            yield dg.AssetCheckResult(
                check_name=CANARY, passed=True, metadata={"status": "job cache hit"}, description="not sorted again"
            )
            return

    label = sorting_label(sorter_spec.name, rec.study_name, rec.name)
    job = SortJob(
        sorter_name=sorter_spec.name,
        si_sorter_name=entry.si_name,
        params=dict(sorter_spec.params or {}),
        recording_uri=rec.recording_uri,
        label=label,
        kachery_dir=str(store.root_dir),
        work_dir=str(
            work_dir_for(settings, sorter_spec.name, rec.study_name, rec.name, context.run.run_id, context.retry_number)
        ),
        canary_first_n_s=settings.canary_first_n_s,
        container_image=image,
        container_engine=settings.container_engine,
        kachery_local_only=store.local_only,
        # Fixed and recorded: a score must not depend on how many sorts ran beside it. On Slurm
        # the worker keeps the threads it was started with: in the pool's allocations, the
        # allocation's sort service gives each slot its CPUs divided by its slots
        # (engines/slurm_service.py); in allocations a user holds, the step's own CPUs
        # (engines/slurm_step.py).
        threads=settings.threads_per_sort if settings.slurm is None else None,
        jit_cache_dir=settings.jit_cache_dir,
    )
    context.log.info(f"sorting {label} on the {settings.kind} engine (work folder {job.work_dir})")
    report: SortReport | None = None
    worker: dict = {}
    # closing(): an interrupt while Dagster handles the canary result must still
    # stop the worker now, not whenever the generator is garbage-collected.
    try:
        attempt = claim_attempt_dir(Path(job.work_dir))  # this attempt's alone; held until the step ends
        require_runnable(entry, in_container=image is not None)
        submitted_at = context.instance.get_run_record_by_id(context.run.run_id).create_timestamp.timestamp()
        launch = launch_of(context.run.run_id, context.run.tags)
        with contextlib.closing(run_sort(job, settings, launch=launch, submitted_at=submitted_at)) as events:
            for event in events:
                if isinstance(event, CanaryReport):
                    if not event.blocks_full_sort:
                        context.log.info(f"{label}: stage: full sort (canary {event.status})")
                    yield canary_check_result(event)
                elif isinstance(event, SortReport):
                    report = event
                    context.log.info(f"{label}: stage: storing the {'console' if event.errored else 'sorting'}")
                else:  # the sort service's slot took it
                    worker = event
                    context.log.info(
                        f"{label}: sort service slot {event['slot']}, worker pid {event['worker_pid']} "
                        f"({'warm: ' + entry.si_name + ' already compiled' if event['warm'] else 'cold'}"
                        f"{'; a copy of worker ' + str(event['copy_of']) if event.get('copy_of') else ''}); "
                        f"stage: {'canary' if job.canary_first_n_s else 'full sort'}"
                    )
    except SortFailure as exc:  # refused before starting (no wrapper, no Docker daemon): an errored record says why
        report = refused_report(job, exc)
    except SortServiceError as exc:
        raise dg.Failure(description=f"{label}: {exc}", allow_retries=False) from exc
    assert report is not None
    console_text = _console_tail(report.console_path) if report.errored else None
    with open(report.console_path, "rb") as f:
        console_uri = store.store_json(
            {"label": label, "text": f.read().decode("utf-8", errors="replace")}, label="console_out.json"
        )
    attempt.release()  # what this step needed from its folder is read; the next attempt may clean it up
    record = _record(sorter_spec, rec, report, console_uri)
    reported = (record.provenance or {}).get("versions")
    if reported:
        # Keyed by the code that sorted: a worker started before an upgrade ran the old release.
        ran_versions = ran_with(reported, entry.package, in_container=image is not None)
        ran = expected_cache_key(sorter_spec, rec, settings, versions=ran_versions)
        if ran != key:
            context.log.warning(
                f"{label}: the worker ran {dict(ran_versions)}, where {dict(installed)} was installed when this "
                "step began (an upgrade during the campaign); the sorting is kept under the versions that made "
                "it, and its next launch sorts it again"
            )
            key = ran
    common = {
        "label": label,
        **view_metadata(label),
        "record": dg.MetadataValue.json(record.to_json_dict()),
        "console_out_uri": console_uri,
        "cpu_time_s": report.cpu_time_s if report.cpu_time_s is not None else -1.0,
        "elapsed_s": round(report.elapsed_s, 2),
        "engine": settings.kind,
        "threads_per_sort": settings.threads_per_sort,
        **({"worker_pid": worker["worker_pid"], "warm_worker": worker["warm"]} if worker else {}),
        **({"worker_copied_from": worker["copy_of"]} if worker and worker.get("copy_of") else {}),
        # What the sorter's numba functions cost this sort: loaded from the JIT cache, or compiled.
        **_jit_metadata(report.details.get("jit_cache")),
        "cache_key": key,
        "errored": report.errored,
        "work_dir": str(attempt.path),
        **({"job_cache_miss": cache_miss} if cache_miss else {}),
    }
    if record.provenance is not None:  # seeds, threads, versions, image (see core.records)
        common["provenance"] = dg.MetadataValue.json(record.provenance)
    if report.errored:
        # The partition fails; the errored record is kept as an observation so
        # sorting_records and the old tools still see it, with its console.
        observed = {**common, "failure_class": report.failure_class or "unclassified"}
        context.log_event(dg.AssetObservation(asset_key=SORTING_KEY, partition=context.partition_key, metadata=observed))
        raise dg.Failure(
            description=f"{label}: {_failure_kind(report)}{report.error_message}",
            metadata={
                "failure_class": report.failure_class or "unclassified",
                "console_tail": dg.MetadataValue.md(f"```\n{console_text}\n```"),
                "console_out_uri": console_uri,
            },
            allow_retries=False,
        )
    yield dg.MaterializeResult(
        data_version=content_version(report.sorting_object_uri),
        metadata={**common, "sorting_object_uri": report.sorting_object_uri, "num_units": report.num_units},
    )


def _comparison_inputs(rec, sorted_md: dict, gt_md: dict, store):
    """The sorting, the ground truth and the true units' SNRs, each loaded and sha1-verified."""
    from sf_assets.stores.data import load_recording, load_sorting_object

    fs = rec.sample_rate_hz or load_recording(rec.recording_uri, store).get_sampling_frequency()
    sorted_units = load_sorting_object(sorted_md["sorting_object_uri"], store, fs)
    gt = load_sorting_object(rec.sorting_true_uri, store, fs)
    return sorted_units, gt, store.load_json(gt_md["snrs_uri"])["snr_by_unit"]


def _fail_as_errored(context: dg.AssetExecutionContext, sorted_md: dict, exc: Exception) -> NoReturn:
    """A comparison whose inputs do not load: mark it and its sorting's record errored, then fail.

    The sorting itself may be intact (a corrupt ground truth), but a record
    that stays ``errored: false`` would vouch for a benchmark cell nobody can
    score; so the pair's latest record becomes errored, naming the cause,
    and the job cache no longer counts it as a hit (the next launch sorts and
    compares it again).  The comparison gets an errored observation, and the
    summary drops the pair's older comparison (see results.collect_comparisons).
    """
    label = sorted_md.get("label", context.partition_key)
    error = f"comparison failed: {' '.join(str(exc).split())}"
    record = SortingRecord.from_json_dict(sorted_md["record"], where=f"sorting[{context.partition_key}]")
    errored = dataclasses.replace(record, errored=True, sorting_output=None)
    common = {"label": label, "errored": True, "failure_class": COMPARISON_INPUT_FAILURE, "error": error}
    partition = context.partition_key
    context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=partition, metadata=common))
    context.log_event(
        dg.AssetObservation(
            asset_key=SORTING_KEY,
            partition=context.partition_key,
            metadata={**common, "record": dg.MetadataValue.json(errored.to_json_dict())},
        )
    )
    raise dg.Failure(description=f"{label}: {error}", allow_retries=False) from None


def draws_seeded(sorting_md: dict) -> bool:
    """Did the worker seed this sorting's unseeded random draws (its provenance's ``unseeded_draws_seed``)?

    Parameters
    ----------
    sorting_md : dict
        A ``sorting`` materialization's metadata.

    Returns
    -------
    bool
        False for a sort in a container, or one made before the seeding existed.
    """
    return (sorting_md.get("provenance") or {}).get("unseeded_draws_seed") is not None


@dg.asset(
    partitions_def=sorting_partitions,
    group_name="sortings",
    kinds={"spikeinterface"},
    deps=[sorting, dg.AssetDep(ground_truth, partition_mapping=by_recording)],
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    description="Per-true-unit accuracy, precision and recall of one sorting against its ground truth, "
    "with the matching settings recorded next to the result.",
)
@fails_clearly_on_storage_faults
def sorting_comparison(context: dg.AssetExecutionContext, studyset: StudysetResource, kachery: KacheryResource):
    """Compare one pair's sorting with its recording's ground truth (accuracy, precision, recall per true unit)."""
    from sf_assets.core.comparison import compare_to_ground_truth, summarize

    sorter_spec, rec = _assigned_pair(context, studyset, kachery)
    store = kachery.store()
    sorted_md = latest_metadata(context.instance, SORTING_KEY, context.partition_key)
    if not sorted_md or not sorted_md.get("sorting_object_uri"):
        raise dg.Failure(description=f"{context.partition_key}: no successful sorting to compare yet")
    gt_md = latest_metadata(context.instance, dg.AssetKey("ground_truth"), recording_key(rec))
    if not gt_md:
        raise dg.Failure(description=f"{rec.label}: ground_truth has not been materialized")
    if gt_md.get("ground_truth_uri") != rec.sorting_true_uri:
        # Its SNRs are the old ground truth's: comparing against the new one would mix the two.
        raise dg.Failure(
            description=f"{rec.label}: the manifest's sortingTrueUri is {rec.sorting_true_uri}, but ground_truth "
            f"was materialized from {gt_md.get('ground_truth_uri')}: materialize ground_truth {recording_key(rec)} "
            "first (the studyset sensor and `sf-assets run-sortings` do)"
        )
    try:
        sorted_units, gt, snrs = _comparison_inputs(rec, sorted_md, gt_md, store)
    except (UriError, RecordingError) as exc:
        _fail_as_errored(context, sorted_md, exc)
    result = compare_to_ground_truth(sorted_units, gt)
    per_unit = result.per_unit.copy()
    per_unit["snr"] = [snrs.get(str(u)) for u in per_unit["true_unit_id"]]
    per_unit["snr"] = per_unit["snr"].astype(float)  # a unit without an SNR: NaN here
    summary = summarize(per_unit)
    units = [{k: json_safe(v) for k, v in row.items()} for row in per_unit.to_dict(orient="records")]
    per_unit_uri = store.store_json(
        {"label": sorted_md.get("label"), "settings": result.settings, "units": units},
        label="comparison.json",
    )
    return dg.MaterializeResult(
        metadata={
            "label": sorted_md.get("label"),
            "sorter": sorter_spec.name,
            "study": rec.study_name,
            "study_set": rec.study_set_name,
            "recording": rec.name,
            **view_metadata(sorted_md.get("label")),
            "comparison_uri": per_unit_uri,
            "ground_truth_uri": rec.sorting_true_uri,  # what it was compared against (the planner checks it)
            # what the score regression check compares: the sorting's inputs and library versions
            "sorting_cache_key": sorted_md.get("cache_key") or "",
            "sorting_versions": dg.MetadataValue.json((sorted_md.get("provenance") or {}).get("versions") or {}),
            # whether the worker seeded the sort's unseeded draws (the summary's `reproducible` needs it)
            "sorting_draws_seeded": draws_seeded(sorted_md),
            "settings": dg.MetadataValue.json(result.settings),
            "summary": dg.MetadataValue.json({k: json_safe(v) for k, v in summary.items()}),
            "units": table(
                [{**u, "true_unit": str(u["true_unit_id"])} for u in units],
                {"true_unit": "string", "snr": "float", "accuracy": "float", "precision": "float", "recall": "float"},
            ),
        }
    )
