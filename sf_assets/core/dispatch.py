"""Which ready run an idle launch slot takes next: sorter affinity over warm workers.

A launch runs its partitions on a few slots (processes), each with a warm
sort worker that keeps the code of every sorter it has run compiled (see
``sf_assets.engines.warm_worker``).  Compiling is what a fresh sorter costs
most on small recordings (spykingcircus2 about 20 s, tridesclous2 about 40 s,
against a few seconds of sorting), so where a slot's next sort comes from
matters.  ``run_sorter_jobs`` hands jobs out in list order and every pool
process ends up compiling every sorter; this queue instead gives an idle slot,
in order of preference:

1. a recording run (the sorts waiting on it can then start);
2. a sort by a sorter this slot has already run (its code is warm there);
3. a sort by a sorter no slot has run yet (one slot compiles it, not all);
4. any sort (never idle while work is ready: the slot compiles it too).

Within each rule the earliest in plan order wins.  No Dagster import: the
launch (``sf_assets.launch``) owns the processes and the runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    """One run to dispatch: a recording run (``sorter`` None) or a sorting run."""

    key: str
    order: int
    sorter: str | None = None

    @property
    def is_recording(self) -> bool:
        return self.sorter is None


@dataclass
class AffinityQueue:
    """Ready tasks, and the sorters each slot has run."""

    ready: list[Task] = field(default_factory=list)
    seen: dict[int, set[str]] = field(default_factory=dict)

    def add(self, task: Task) -> None:
        self.ready.append(task)

    def __len__(self) -> int:
        return len(self.ready)

    def take(self, slot: int) -> Task | None:
        """The task ``slot`` should run next (removed from the queue), or None if none is ready."""
        if not self.ready:
            return None
        mine = self.seen.setdefault(slot, set())
        anyone = set().union(*self.seen.values())
        preferences = (
            lambda t: t.is_recording,
            lambda t: t.sorter in mine,
            lambda t: t.sorter not in anyone,
            lambda t: True,
        )
        for prefer in preferences:
            candidates = [t for t in self.ready if prefer(t)]
            if candidates:
                task = min(candidates, key=lambda t: t.order)
                self.ready.remove(task)
                if task.sorter is not None:
                    mine.add(task.sorter)
                return task
        return None
