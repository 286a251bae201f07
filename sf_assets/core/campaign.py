"""A validated manifest + spec: the grid of (sorter, recording) sorts to run.

Everything that asks "is this pair assigned?", "which recording is this
label?" or "which params does this sorter get?" asks a :class:`Campaign`, so
the assets, the sensor, the schedule and the command line agree.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from sf_assets.core.errors import SpecError
from sf_assets.core.labels import recording_label, sorting_label
from sf_assets.core.manifest import Manifest, Recording
from sf_assets.core.spec import SorterSpec, Spec, sorting_jobs


@dataclass(frozen=True)
class Campaign:
    """A manifest and a spec validated against each other, with the (sorter, recording) jobs they give.

    Every launcher (command line, sensor, schedule, assets) asks the same object
    which pairs exist, so a pair outside the spec is refused the same way everywhere.
    """

    manifest: Manifest
    spec: Spec
    jobs: tuple[tuple[SorterSpec, Recording], ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "jobs", tuple(sorting_jobs(self.spec, self.manifest)))
        object.__setattr__(self, "_recordings", {r.label: r for r in self.manifest.recordings()})
        object.__setattr__(self, "_sorters", {s.name: s for s in self.spec.sorters})
        object.__setattr__(self, "_pairs", {(s.name, r.label) for s, r in self.jobs})

    def digest(self) -> str:
        """What the campaign asks for, as 40 hex digits: two launchers given the same spec and manifest agree.

        Independent of where the files were read from (a command line's
        relative path, the sensor's absolute one): the (sorter, params,
        recording, URIs) of every job, in order.

        Returns
        -------
        str
            A sha1 hex digest.
        """
        jobs = [[s.name, s.params, r.label, r.recording_uri, r.sorting_true_uri] for s, r in self.jobs]
        return hashlib.sha1(json.dumps(jobs, sort_keys=True, default=str).encode()).hexdigest()

    def recording(self, label: str) -> Recording:
        """The manifest's recording with this label.

        Parameters
        ----------
        label : str
            ``STUDY/RECORDING``.

        Returns
        -------
        Recording
            The recording.

        Raises
        ------
        SpecError
            If the manifest has no such recording.
        """
        try:
            return self._recordings[label]
        except KeyError:
            raise SpecError(f"{self.manifest.source}: no recording labelled {label!r} in the manifest") from None

    def sorter(self, name: str) -> SorterSpec:
        """The spec's sorter of this name.

        Parameters
        ----------
        name : str
            The sorter's name as the spec writes it.

        Returns
        -------
        SorterSpec
            Its spec entry.

        Raises
        ------
        SpecError
            If the spec does not list it (naming those it lists).
        """
        try:
            return self._sorters[name]
        except KeyError:
            raise SpecError(
                f"{self.spec.source}: sorter {name!r} is not in spike-sorters (spec'd: {sorted(self._sorters)})"
            ) from None

    def is_assigned(self, sorter_name: str, label: str) -> bool:
        """Does the spec assign this recording to this sorter?

        Parameters
        ----------
        sorter_name : str
            The sorter.
        label : str
            The recording's ``STUDY/RECORDING`` label.

        Returns
        -------
        bool
            True when the pair is one of :attr:`jobs`.
        """
        return (sorter_name, label) in self._pairs

    def require_assigned(self, sorter_name: str, label: str) -> tuple[SorterSpec, Recording]:
        """The pair's sorter spec and recording, or a SpecError saying why it may not run.

        Parameters
        ----------
        sorter_name : str
            The sorter.
        label : str
            The recording's ``STUDY/RECORDING`` label.

        Returns
        -------
        tuple[SorterSpec, Recording]
            The sorter's spec entry and the recording.

        Raises
        ------
        SpecError
            If either is unknown, or the spec does not assign the recording's study set to the sorter
            (naming the sorter's study sets).
        """
        sorter = self.sorter(sorter_name)
        recording = self.recording(label)
        if not self.is_assigned(sorter_name, label):
            raise SpecError(
                f"{self.spec.source}: {sorting_label(sorter_name, recording.study_name, recording.name)} is not "
                f"assigned: sorter {sorter_name!r} runs only on study sets {list(sorter.studysets)}, and "
                f"{recording_label(recording.study_name, recording.name)} belongs to {recording.study_set_name!r}"
            )
        return sorter, recording

    def recordings(self) -> list[Recording]:
        """Every recording of the manifest, in its order.

        Returns
        -------
        list[Recording]
            A new list: callers may change it.
        """
        return list(self._recordings.values())
