"""Partitions: one per recording, one per sorter, and their (sorter, recording) grid.

Keys come from labels through :mod:`sf_assets.core.labels` (the one two-way
mapping), so they stay within ``[A-Za-z0-9_.-]``: Dagster 1.13 drops keys
containing ``|`` from multi-partition spaces, commas break UI backfills and
``/`` makes folders.  Labels stay the names people read.
"""
from __future__ import annotations

import warnings

import dagster as dg

# Dynamic multi-partitions, partitioned check specs and backfill policies are
# beta/preview in Dagster 1.13 and used on purpose; their warnings are noise.
for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category)

from sf_assets.core.labels import label_to_partition_key, partition_key_to_label, recording_label
from sf_assets.core.manifest import Recording

RECORDINGS = "recordings"
SORTERS = "sorters"

recordings_partitions = dg.DynamicPartitionsDefinition(name=RECORDINGS)
sorters_partitions = dg.DynamicPartitionsDefinition(name=SORTERS)
sorting_partitions = dg.MultiPartitionsDefinition({"recording": recordings_partitions, "sorter": sorters_partitions})


def recording_key(recording: Recording) -> str:
    return label_to_partition_key(recording_label(recording.study_name, recording.name))


def sorter_key(sorter_name: str) -> str:
    return label_to_partition_key(sorter_name)


def pair_key(sorter_name: str, recording: Recording) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"recording": recording_key(recording), "sorter": sorter_key(sorter_name)})


def split_pair_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(sorter name, recording label) of a sorting partition key."""
    if not isinstance(key, dg.MultiPartitionKey):
        key = sorting_partitions.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return partition_key_to_label(dims["sorter"]), partition_key_to_label(dims["recording"])


def recording_label_of_key(key: str) -> str:
    return partition_key_to_label(key)
