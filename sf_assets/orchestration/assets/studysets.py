"""The validated studyset: the root of the graph, and the partitions' source."""

import dagster as dg

from sf_assets.orchestration.assets.metadata import table
from sf_assets.core.campaign import Campaign
from sf_assets.orchestration.partitions import RECORDINGS, SORTERS, recording_key, sorter_key
from sf_assets.orchestration.resources import KacheryResource, StudysetResource


def register_partitions(instance: dg.DagsterInstance, campaign: Campaign) -> tuple[list[str], list[str]]:
    """Add the campaign's missing recording and sorter partitions; return the new keys.

    One read and at most one insert per partitions definition: 888 recordings
    take a few milliseconds, where checking key by key (as Dagster's sensor
    daemon does with a sensor's partition requests) takes about 2 s.
    """
    added = []
    for name, wanted in (
        (RECORDINGS, [recording_key(r) for r in campaign.recordings()]),
        (SORTERS, [sorter_key(s.name) for s in campaign.spec.sorters]),
    ):
        existing = set(instance.get_dynamic_partitions(name))
        new = [key for key in dict.fromkeys(wanted) if key not in existing]
        if new:
            instance.add_dynamic_partitions(name, new)
        added.append(new)
    return added[0], added[1]


def campaign_table(campaign: Campaign) -> dg.MetadataValue:
    rows = [
        {
            "sorter": s.name,
            "study_sets": ", ".join(s.studysets),
            "params": str(s.params or {}),
            "sorting_jobs": sum(1 for js, _ in campaign.jobs if js.name == s.name),
        }
        for s in campaign.spec.sorters
    ]
    return table(rows, {"sorter": "string", "study_sets": "string", "params": "string", "sorting_jobs": "int"})


@dg.asset(
    group_name="studyset",
    kinds={"json", "yaml"},
    description="The studysets manifest and the spec, validated against each other. "
    "Materializing it registers their recording and sorter partitions.",
)
def studysets(context: dg.AssetExecutionContext, studyset: StudysetResource, kachery: KacheryResource):
    campaign = studyset.campaign(kachery)
    new_recordings, new_sorters = register_partitions(context.instance, campaign)
    return dg.MaterializeResult(
        metadata={
            "manifest": campaign.manifest.source,
            "spec": campaign.spec.source,
            "num_study_sets": len(campaign.manifest.study_sets),
            "num_recordings": len(campaign.recordings()),
            "num_sorting_jobs": len(campaign.jobs),
            "new_recording_partitions": len(new_recordings),
            "new_sorter_partitions": len(new_sorters),
            "sorters": campaign_table(campaign),
        }
    )
