"""Recordings and their ground truth, fetched from kachery and verified."""

import dagster as dg

from sf_assets.orchestration.assets.faults import fails_clearly_on_storage_faults
from sf_assets.orchestration.assets.metadata import table
from sf_assets.core.labels import ground_truth_label
from sf_assets.core.uris import parse_uri
from sf_assets.orchestration.partitions import recording_label_of_key, recordings_partitions
from sf_assets.orchestration.resources import KacheryResource, StudysetResource


def content_version(uri: str) -> dg.DataVersion:
    """A kachery URI names its content's sha1: that is the data version."""
    return dg.DataVersion(parse_uri(uri).sha1)


@dg.asset(
    partitions_def=recordings_partitions,
    group_name="recordings",
    kinds={"spikeinterface", "kachery"},
    deps=["studysets"],
    description="One ground-truth recording (SpikeForest recording object: raw MDA, params, geometry), "
    "fetched from kachery, its sha1 verified and loaded with spikeinterface.",
)
@fails_clearly_on_storage_faults
def recording(context: dg.AssetExecutionContext, studyset: StudysetResource, kachery: KacheryResource):
    from sf_assets.stores.data import load_recording  # spikeinterface + numba: import when a step runs, not at load

    rec = studyset.campaign(kachery).recording(recording_label_of_key(context.partition_key))
    si_recording = load_recording(rec.recording_uri, kachery.store())
    return dg.MaterializeResult(
        data_version=content_version(rec.recording_uri),
        metadata={
            "label": rec.label,
            "study_set": rec.study_set_name,
            "recording_uri": rec.recording_uri,
            "num_channels": si_recording.get_num_channels(),
            "duration_s": float(si_recording.get_total_duration()),
            "sampling_frequency_hz": float(si_recording.get_sampling_frequency()),
        },
    )


@dg.asset(
    partitions_def=recordings_partitions,
    group_name="recordings",
    kinds={"spikeinterface", "kachery"},
    deps=[recording],
    description="The recording's ground-truth sorting, with each true unit's SNR "
    "(median-template peak over the noise of the 300-6000 Hz filtered recording).",
)
@fails_clearly_on_storage_faults
def ground_truth(context: dg.AssetExecutionContext, studyset: StudysetResource, kachery: KacheryResource):
    from sf_assets.core.comparison import true_unit_snrs
    from sf_assets.stores.data import load_recording, load_sorting_object

    store = kachery.store()
    rec = studyset.campaign(kachery).recording(recording_label_of_key(context.partition_key))
    si_recording = load_recording(rec.recording_uri, store)
    gt = load_sorting_object(rec.sorting_true_uri, store, si_recording.get_sampling_frequency())
    # A unit without usable spikes has no SNR: None, never NaN (JSON has no NaN).
    snrs = {str(u): (None if snr != snr else float(snr)) for u, snr in true_unit_snrs(si_recording, gt).items()}
    known = sorted(v for v in snrs.values() if v is not None)
    snrs_uri = store.store_json({"snr_by_unit": snrs}, label="true_unit_snrs.json")
    counts = gt.count_num_spikes_per_unit()
    rows = [{"unit": str(u), "snr": snrs[str(u)], "num_spikes": int(counts[u])} for u in gt.unit_ids]
    return dg.MaterializeResult(
        data_version=content_version(rec.sorting_true_uri),
        metadata={
            "label": ground_truth_label(rec.study_name, rec.name),
            "ground_truth_uri": rec.sorting_true_uri,
            "num_units": len(gt.unit_ids),
            "snrs_uri": snrs_uri,
            "median_snr": known[len(known) // 2] if known else 0.0,
            "units": table(rows, {"unit": "string", "snr": "float", "num_spikes": "int"}),
        },
    )

