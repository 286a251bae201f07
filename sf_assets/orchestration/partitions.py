"""Partitions: one per recording, one per sorter, and their (sorter, recording) grid.

Keys come from labels through :mod:`sf_assets.core.labels` (the one two-way
mapping), so they stay within ``[A-Za-z0-9_.-]``: Dagster 1.13 drops keys
containing ``|`` from multi-partition spaces, commas break UI backfills and
``/`` makes folders.  Labels stay the names people read.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import dagster as dg

# Dynamic multi-partitions, partitioned check specs and backfill policies are
# beta/preview in Dagster 1.13 and used on purpose; their warnings are noise.
for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category)

from sf_assets.core.labels import label_to_partition_key, partition_key_to_label, recording_label
from sf_assets.core.manifest import Recording

RECORDINGS = "recordings"
SORTERS = "sorters"

PARTITION_TAG = "dagster/partition"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"

recordings_partitions = dg.DynamicPartitionsDefinition(name=RECORDINGS)
sorters_partitions = dg.DynamicPartitionsDefinition(name=SORTERS)
sorting_partitions = dg.MultiPartitionsDefinition({"recording": recordings_partitions, "sorter": sorters_partitions})


def recording_key(recording: Recording) -> str:
    """A recording's partition key, from its label by the one two-way mapping.

    Parameters
    ----------
    recording : Recording
        The recording.

    Returns
    -------
    str
        The label with ``/`` as ``.`` and any other character outside ``[A-Za-z0-9_]`` escaped (:mod:`sf_assets.core.labels`).
    """
    return label_to_partition_key(recording_label(recording.study_name, recording.name))


def sorter_key(sorter_name: str) -> str:
    """A sorter's partition key.

    Parameters
    ----------
    sorter_name : str
        The sorter's name as the spec writes it.

    Returns
    -------
    str
        The name, escaped as labels are.
    """
    return label_to_partition_key(sorter_name)


def pair_key(sorter_name: str, recording: Recording) -> dg.MultiPartitionKey:
    """A (sorter, recording) pair's partition key in the sorting assets' two-dimensional space.

    Parameters
    ----------
    sorter_name : str
        The sorter.
    recording : Recording
        The recording.

    Returns
    -------
    MultiPartitionKey
        Its ``recording`` and ``sorter`` dimensions.
    """
    return dg.MultiPartitionKey({"recording": recording_key(recording), "sorter": sorter_key(sorter_name)})


def split_pair_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(sorter name, recording label) of a sorting partition key.

    Parameters
    ----------
    key : str or MultiPartitionKey
        A sorting partition key.

    Returns
    -------
    tuple[str, str]
        The sorter's name and the recording's label.
    """
    if not isinstance(key, dg.MultiPartitionKey):
        key = sorting_partitions.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return partition_key_to_label(dims["sorter"]), partition_key_to_label(dims["recording"])


def single_partition_of(run_tags: Mapping[str, str]) -> str | None:
    """The one partition a run materializes, from its tags; None for an unpartitioned run or a wider range.

    A run names its partition in ``dagster/partition`` or, when a backfill
    launched it, in a one-partition range (``BackfillPolicy.multi_run(1)``).

    Parameters
    ----------
    run_tags : Mapping[str, str]
        The run's tags.

    Returns
    -------
    str or None
        The partition key.
    """
    if PARTITION_TAG in run_tags:
        return run_tags[PARTITION_TAG]
    start = run_tags.get(RANGE_START_TAG)
    return start if start is not None and start == run_tags.get(RANGE_END_TAG) else None


def recording_label_of_key(key: str) -> str:
    """The recording label a recording partition key stands for.

    Parameters
    ----------
    key : str
        A recording partition key.

    Returns
    -------
    str
        ``STUDY/RECORDING``.
    """
    return partition_key_to_label(key)
