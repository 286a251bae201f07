"""Keep a workspace in step with the sortings: add only the labels it is missing."""

import dagster as dg

from sf_assets.orchestration.assets.automation import AS_RESULTS_LAND
from sf_assets.orchestration.assets.faults import fails_clearly_on_storage_faults
from sf_assets.orchestration.assets.results import collect_records
from sf_assets.orchestration.assets.sortings import sorting
from sf_assets.orchestration.assets.view_links import labels_to_view
from sf_assets.core.workspace_plan import GROUND_TRUTH, SORTING, entries_from_records
from sf_assets.orchestration.resources import KacheryResource, StudysetResource, WorkspaceResource

DEFAULT_WORKSPACE_NAME = "default"


def resolve_workspace_uri(workspace: WorkspaceResource) -> str:
    """The configured workspace, or the instance's default one (created once)."""
    store = workspace.store()
    if workspace.workspace_uri:
        store.require_workspace(workspace.workspace_uri)
        return workspace.workspace_uri
    return store.named_workspace(DEFAULT_WORKSPACE_NAME)


@dg.asset(
    group_name="results",
    kinds={"sqlite", "postgres"},
    deps=["recording", "ground_truth", sorting],
    automation_condition=AS_RESULTS_LAND,
    description="Adds the recordings, ground truths and sortings that have landed to the workspace "
    "database, by label only: labels already present are left alone; errored sortings are skipped "
    "with a note. A dry run reports what would be added and writes nothing.",
)
@fails_clearly_on_storage_faults
def workspace_sync(
    context: dg.AssetExecutionContext,
    studyset: StudysetResource,
    kachery: KacheryResource,
    workspace: WorkspaceResource,
):
    records = collect_records(context.instance, studyset.campaign(kachery))
    entries, notes = entries_from_records(records)
    for note in notes:
        context.log.info(note)
    uri = resolve_workspace_uri(workspace)
    report = workspace.store().sync(uri, entries, dry_run=workspace.dry_run)
    viewable = [e.label for e in workspace.store().list_entries(uri) if e.kind in (GROUND_TRUTH, SORTING)]
    return dg.MaterializeResult(
        metadata={
            "workspace_uri": uri,
            "added": len(report.added),
            "already_present": len(report.already_present),
            "skipped_errored": len(notes),
            "dry_run": workspace.dry_run,
            "added_labels": dg.MetadataValue.md("\n".join(f"- `{x}`" for x in report.added[:200]) or "(none)"),
            "labels_to_view": labels_to_view(viewable),
        }
    )
