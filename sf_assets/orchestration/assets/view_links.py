"""Metadata that opens a label in the viewer: the command, and the URL of a viewer running now."""
from __future__ import annotations

import dagster as dg

from sf_assets.core.settings import load_settings
from sf_assets.stores.viewer_links import running_viewer_url, view_command

NO_VIEWER = "none running (run the view command)"
MAX_LISTED_LABELS = 500
"""Labels listed in the workspace asset's metadata (a UI page, not an export)."""


def view_metadata(label: str) -> dict[str, dg.MetadataValue]:
    """``view``: the command that opens ``label``; ``viewer_url``: the URL of a viewer of it running now.

    Both keys are always set, so metadata copied from an earlier event (the
    job cache) never keeps the URL of a viewer that has stopped.
    """
    url = running_viewer_url(load_settings().viewers_dir, label)
    return {
        "view": dg.MetadataValue.text(view_command(label)),
        "viewer_url": dg.MetadataValue.url(url) if url else dg.MetadataValue.text(NO_VIEWER),
    }


def labels_to_view(labels: list[str]) -> dg.MetadataValue:
    """A markdown table of labels, each with the command (or URL) that opens it."""
    viewers_dir = load_settings().viewers_dir
    rows = ["| label | open it |", "|---|---|"]
    for label in labels[:MAX_LISTED_LABELS]:
        url = running_viewer_url(viewers_dir, label)
        opener = f"[{url}]({url})" if url else f"`{view_command(label)}`"
        rows.append(f"| `{label}` | {opener} |")
    if len(labels) > MAX_LISTED_LABELS:
        rows.append(f"| ... {len(labels) - MAX_LISTED_LABELS} more | |")
    return dg.MetadataValue.md("\n".join(rows))
