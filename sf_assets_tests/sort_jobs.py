"""A :class:`SortJob` for the first recording of the session's synthetic studyset, as the tests build it."""
from __future__ import annotations

from pathlib import Path

from sf_assets.core.manifest import parse_manifest
from sf_assets.engines.job import SortJob


def sort_job(
    synthetic_studyset, work_dir: Path, sorter: tuple[str, str] = ("MountainSort5", "mountainsort5"), **changes
) -> SortJob:
    """A job sorting the first recording with ``sorter`` (catalog and spikeinterface names), a 3 s canary.

    Parameters
    ----------
    synthetic_studyset : SyntheticStudyset
        The ``synthetic_studyset`` fixture.
    work_dir : Path
        The job's work folder.
    sorter : tuple[str, str]
        Its catalog name and spikeinterface's name.
    **changes
        Other fields of the job.

    Returns
    -------
    SortJob
        The job.
    """
    manifest = parse_manifest(synthetic_studyset.manifest_path.read_bytes(), str(synthetic_studyset.manifest_path))
    rec = manifest.recordings()[0]
    base = dict(
        sorter_name=sorter[0],
        si_sorter_name=sorter[1],
        params={},
        recording_uri=rec.recording_uri,
        label=f"{sorter[0]}/{rec.study_name}/{rec.name}",
        kachery_dir=str(synthetic_studyset.store.root_dir),
        work_dir=str(work_dir),
        canary_first_n_s=3.0,
    )
    return SortJob(**{**base, **changes})
