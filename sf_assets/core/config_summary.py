"""The resolved configuration of a run, as plain data (what ``--check-config`` prints).

It answers "what would this manifest and spec make me sort?" without sorting:
the study sets, studies and recordings in play, the number of
(sorter, recording) jobs, and each sorter with its study sets and its params
merged over the catalog defaults, i.e. the params the sorter will receive,
and where each sorter can run from here (a spec may name sorters that cannot:
their pairs are counted, and end as errored records).
"""
from __future__ import annotations

from typing import Any

from sf_assets.core.manifest import Manifest
from sf_assets.core.sorter_catalog import CANNOT_RUN, CONTAINER_ONLY, LOCAL, availability, merge_params, resolve_sorter
from sf_assets.core.spec import Spec, sorting_jobs


def config_summary(manifest: Manifest, spec: Spec) -> dict[str, Any]:
    """The configuration ``spec`` resolves to over ``manifest`` (already validated).

    Parameters
    ----------
    manifest : Manifest
        The studysets manifest.
    spec : Spec
        The spec, validated against it.

    Returns
    -------
    dict
        JSON-serialisable: ``manifest_source``, ``spec_source``, ``study_sets``
        (declared in the spec), ``num_study_sets``, ``num_studies`` and
        ``num_recordings`` (within those study sets), ``num_sorting_jobs``,
        ``num_sorting_jobs_by_availability`` (``local``, ``container only``,
        ``cannot run here``), and ``sorters``: for each, ``name`` (as the
        spec writes it), ``catalog_name``, ``si_name``, ``availability`` and
        ``availability_reason`` (see
        :func:`~sf_assets.core.sorter_catalog.availability`), ``study_sets``,
        ``num_recordings`` and the merged ``params``.
    """
    declared = set(spec.studyset_names)
    studies = [study for study in manifest.studies() if study.study_set_name in declared]
    jobs = sorting_jobs(spec, manifest)
    sorters = []
    by_availability = {LOCAL: 0, CONTAINER_ONLY: 0, CANNOT_RUN: 0}
    for index, sorter in enumerate(spec.sorters):
        entry = resolve_sorter(sorter.name)
        where = availability(entry)
        num_recordings = sum(1 for s, _ in jobs if s is sorter)
        by_availability[where.status] += num_recordings
        sorters.append(
            {
                "name": sorter.name,
                "catalog_name": entry.name,
                "si_name": entry.si_name,
                "availability": where.status,
                "availability_reason": where.reason,
                "study_sets": list(sorter.studysets),
                "num_recordings": num_recordings,
                "params": merge_params(entry, sorter.params, f"{spec.source}: spike-sorters[{index}].params"),
            }
        )
    return {
        "manifest_source": manifest.source,
        "spec_source": spec.source,
        "study_sets": list(spec.studyset_names),
        "num_study_sets": len(spec.studyset_names),
        "num_studies": len(studies),
        "num_recordings": sum(len(study.recordings) for study in studies),
        "num_sorting_jobs": len(jobs),
        "num_sorting_jobs_by_availability": by_availability,
        "sorters": sorters,
    }
