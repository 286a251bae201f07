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
3. a sort by a sorter no slot has run yet (one slot compiles it, not all),
   or by a sorter whose compiled code the JIT cache holds
   (:attr:`AffinityQueue.cached`) while a CPU is spare (fewer slots busy
   than :attr:`AffinityQueue.cpus`): a new worker loads the code in a few
   tenths of a second of CPU (its template imported the sorter's libraries,
   ``sf_assets.engines.worker.SORTER_MODULES``), so the sort starts now rather than wait for a busy warm
   slot (perhaps an hour-long sort) or its copy.  Without a spare CPU the
   loading would slow the running sorts instead: on a node whose slots
   outnumber its CPUs, 32 new workers loading at once took 30 s each, where
   waiting for copies took 5;
4. a sort by a sorter another slot has warm, with a *copy* of that slot's
   worker, when the service can copy workers (:attr:`AffinityQueue.copies`)
   and the copy comes sooner than a compile would end;
5. a sort by a sorter another slot has warm, if compiling it here pays.

Rule 4: a warm worker forks a copy of itself between two sorts
(``sf_assets.engines.worker_clone``), compiled sorters included, in
milliseconds; the slot waits for the worker's current sort to end, not for a
compile.  The holder whose current sort should end first is copied; it
should end within the sorter's measured compile time (a holder busy with an
hour-long sort is not waited for), or, before one is measured, whenever.
A slot still waiting for its copy is never copied itself: its worker has
compiled nothing yet (at a campaign's start on a Slurm allocation's eight
slots, copying it made six of them compile after all).

Rule 5 is decided from this launch's own timings (:meth:`AffinityQueue.finished`):
a sorter's first sort on a slot (cold) against its later ones (warm) gives its
compile time.  Compiling here pays when the slots that have it warm would need
at least as long to end their current runs (the first of them to end) and then
sort its queued sorts as this slot needs to compile it and sort one: at the end
of a campaign, the last sort of a slow-compiling sorter waits a few seconds for
its warm slot instead of starting a 20-second compilation on an idle one.  A sort left waiting never waits for nothing: a
slot that has its sorter warm exists, and takes it by rule 2 as soon as it
is idle.

Before both are measured, an idle slot waits for the slot that has the
sorter, for at most as long as that sorter's cold sort had run (or took)
when this slot first found nothing else to do: compiling here would take at
least about that long, so waiting never costs more than compiling, and a
campaign's last few sorts of a slow-compiling sorter (spykingcircus2 on two
slots: 40-50 s cold against 6 s warm) go to its warm slot instead of a
second compile that ends after the warm slot would have finished them all.
Then the ready sort is taken, as ``run_sorter_jobs`` would; by then a cold
and a warm sort have usually been measured and the rule above decides.

That wait is at least :data:`FIRST_COMPILE_GRACE_S` from the sorter's very
first compile: runs reach the sort service a second or two apart (Dagster's
queue hands them out once a second), so the first sorts to arrive are often
of one sorter, and the sorts of the others are on their way.  A sort known to be on its way counts too
(:meth:`AffinityQueue.expect`: the sort service launched a sorting run and its
sort has not arrived yet): a slot that would compile a sorter a second time
waits for it instead, while its run's process lives.  Without these, a UI
backfill whose runs arrived sorter-major compiled each sorter on every slot.

Within each rule the earliest in plan order wins.  A task may belong to a
*group* (one launch: a command line's, or a backfill) with a limit on its
sorts at once (``-w``): a task whose group has that many running is not
taken until one of them ends, so a launch can queue more runs than it may
sort at once and the next one is already waiting when a slot frees.  No Dagster import: the
launch (``sf_assets.cli.launch``) owns the processes and the runs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import mean

# How long an idle slot leaves a sorter whose first compile runs on another slot to the sorts
# still arriving (rule 5): Dagster's queue hands out runs once a second and a run takes about
# as long to reach its sort step.  Costs at most this, once per sorter, where no other comes.
FIRST_COMPILE_GRACE_S = 3.0


@dataclass(frozen=True)
class Task:
    """One run to dispatch: a recording run (``sorter`` None) or a sorting run.

    ``group`` and ``group_limit``: at most ``group_limit`` tasks of ``group``
    run at once (0 or no group: no limit but the slots).
    """

    key: str
    order: float
    sorter: str | None = None
    group: str | None = None
    group_limit: int = 0

    @property
    def is_recording(self) -> bool:
        """A recording's task (no sorter): it goes to any idle slot."""
        return self.sorter is None


@dataclass
class SorterTimes:
    """Seconds of finished sorts of one sorter: first ones on their slot (cold) and later ones (warm)."""

    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)

    def compile_and_sort_s(self) -> tuple[float, float] | None:
        """(compile seconds, warm sort seconds), once both kinds were measured.

        Returns
        -------
        tuple[float, float] or None
            The mean extra time of a cold sort (compiling) and the mean warm sort, in seconds; None until
            both a cold and a warm sort finished.
        """
        if not self.cold or not self.warm:
            return None
        warm = mean(self.warm)
        return max(0.0, mean(self.cold) - warm), warm


@dataclass(frozen=True)
class Expected:
    """A sort on its way: its run was launched; ``until`` (monotonic s) is when to stop waiting for it."""

    key: str
    sorter: str
    until: float


@dataclass
class AffinityQueue:
    """Ready tasks, the sorters each slot has run, what each slot runs now, and the sorts on their way."""

    ready: list[Task] = field(default_factory=list)
    seen: dict[int, set[str]] = field(default_factory=dict)
    running: dict[int, tuple[Task, bool]] = field(default_factory=dict)
    times: dict[str, SorterTimes] = field(default_factory=dict)
    expected: dict[str, Expected] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)
    # (slot, sorter): when that idle slot may compile the sorter while nothing measured says whether it pays.
    compile_after: dict[tuple[int, str], float] = field(default_factory=dict)
    # Can a slot get a copy of another slot's warm worker (rule 4)?  The service says.
    copies: bool = False
    # Slot -> (the slot whose worker it is to copy, the sorters it had before): rule 4's choices, read by
    # the service, kept until the copy arrives (:meth:`copied`), fails, or the slot's task ends.  Such a
    # slot counts as having the sorter (rule 2, rule 5) but its worker has compiled nothing yet: it is
    # never the source of another copy, which would copy that uncompiled worker and compile again.
    copy_from: dict[int, tuple[int, set[str]]] = field(default_factory=dict)
    # Sorters whose compiled code a new worker loads from the JIT cache, and the CPUs the slots
    # share (rule 3): the service says; no CPUs, no such start.
    cached: set[str] = field(default_factory=set)
    cpus: int = 0

    def add(self, task: Task) -> None:
        """Queue a task; :meth:`take` decides which slot runs it.

        Parameters
        ----------
        task : Task
            The task.
        """
        self.ready.append(task)
        if task.sorter is not None:
            # The sort a launched run was expected to send (the oldest of its sorter's).
            on_its_way = [e for e in self.expected.values() if e.sorter == task.sorter]
            if on_its_way:
                del self.expected[min(on_its_way, key=lambda e: e.until).key]

    def expect(self, key: str, sorter: str, until: float) -> None:
        """A sort of ``sorter`` is on its way (a sorting run ``key`` was launched); wait for it until ``until``.

        Parameters
        ----------
        key : str
            What names the expectation (the run's id), for :meth:`forget`.
        sorter : str
            The sorter of the sort it will send.
        until : float
            Monotonic seconds after which slots stop waiting for it.
        """
        self.expected[key] = Expected(key, sorter, until)

    def forget(self, now: float, gone: Callable[[str], bool] = lambda _key: False) -> bool:
        """Stop expecting sorts past their time or whose run ``gone(key)`` says ended without sending one.

        Parameters
        ----------
        now : float
            Monotonic seconds.
        gone : Callable[[str], bool]
            Whether an expectation's run has ended.

        Returns
        -------
        bool
            True when an expectation was dropped (an idle slot may now take what it waited beside).
        """
        dropped = [k for k, e in self.expected.items() if e.until <= now or gone(k)]
        for key in dropped:
            del self.expected[key]
        return bool(dropped)

    def __len__(self) -> int:
        return len(self.ready)

    def take(self, slot: int, now: float | None = None) -> Task | None:
        """The task ``slot`` should run next (removed from the queue), or None if it should wait.

        Parameters
        ----------
        slot : int
            An idle slot.
        now : float or None
            Monotonic seconds, for the first-compile grace; None: no grace (a caller without a clock).

        Returns
        -------
        Task or None
            The task, by the module's five rules.
        """
        eligible = self._within_group_limits()
        if not eligible:
            return None
        mine = self.seen.setdefault(slot, set())
        anyone = set().union(*self.seen.values())
        # A sort this slot has warm, or one nobody has compiled, on its way: no second compile (rule 5) or copy (rule 4) now.
        awaited = any(e.sorter in mine or e.sorter not in anyone for e in self.expected.values())
        copyable = {} if awaited or not self.copies else self._copy_sources(slot, eligible, now)
        preferences = (
            lambda t: t.is_recording,
            lambda t: t.sorter in mine,
            lambda t: t.sorter not in anyone or (t.sorter in self.cached and len(self.running) < self.cpus),
            lambda t: t.sorter in copyable,
            lambda t: not awaited and self._worth_compiling(slot, t, now),
        )
        for prefer in preferences:
            candidates = [t for t in eligible if prefer(t)]
            if candidates:
                task = min(candidates, key=lambda t: t.order)
                if prefer is preferences[3]:
                    self.copy_from[slot] = (copyable[task.sorter], set(mine))
                    self.seen[slot] = set(self.seen[copyable[task.sorter]])
                return self._start(slot, task, now)
        # Whatever is left waits for a slot that has its sorter warm: that slot takes it
        # when idle (rule 2), now in this same round or when its current run ends.
        return None

    def copied(self, slot: int) -> None:
        """``slot`` got its copy (rule 4): its worker now has the copied sorters compiled, and may be copied.

        Parameters
        ----------
        slot : int
            The slot.
        """
        self.copy_from.pop(slot, None)

    def copy_failed(self, slot: int, sorters: set[str]) -> None:
        """``slot`` got no copy (rule 4) and sorts on a worker that has compiled ``sorters``: a cold sort.

        Parameters
        ----------
        slot : int
            The slot.
        sorters : set[str]
            What its worker has compiled, its current sort's sorter included.
        """
        self.copy_from.pop(slot, None)
        self.seen[slot] = set(sorters)
        task, _ = self.running[slot]
        self.running[slot] = (task, True)

    def _copy_sources(self, slot: int, eligible: list[Task], now: float | None) -> dict[str, int]:
        """Rule 4: sorter -> the busy slot whose worker ``slot`` should copy for it."""
        sources = {}
        for sorter in {t.sorter for t in eligible if t.sorter is not None}:
            holding = [s for s, sorters in self.seen.items() if sorter in sorters and s != slot and s not in self.copy_from]
            if not holding or any(s not in self.running for s in holding):
                continue  # an idle slot that has it warm takes it in this same round
            until = {s: self._between_jobs_in(s, now) for s in holding}
            holder = min(holding, key=lambda s: (until[s], s))
            estimate = self.times.get(sorter, SorterTimes()).compile_and_sort_s()
            if estimate is None:
                # Its first compile is under way: as before a compile here (rule 5), the sorts of
                # other sorters still arriving get the grace, rather than a slot waiting for a copy.
                cold_starts = [self.started[s] for s in holding if s in self.started and self.running[s] == (self.running[s][0], True) and self.running[s][0].sorter == sorter]
                if now is None or not cold_starts or now >= min(cold_starts) + FIRST_COMPILE_GRACE_S:
                    sources[sorter] = holder
            elif until[holder] <= estimate[0]:
                sources[sorter] = holder
        return sources

    def _between_jobs_in(self, slot: int, now: float | None) -> float:
        """Seconds until busy ``slot``'s current task should end: its sorter's measured time, else as long again."""
        if now is None or slot not in self.started:
            return 0.0
        task, cold = self.running[slot]
        ran_s = now - self.started[slot]
        times = self.times.get(task.sorter, SorterTimes()) if task.sorter is not None else SorterTimes()
        measured = times.cold if cold else times.warm
        return max(0.0, (mean(measured) if measured else 2 * ran_s) - ran_s)

    def _within_group_limits(self) -> list[Task]:
        """The ready tasks whose group may start one more."""
        running: dict[str, int] = {}
        for task, _cold in self.running.values():
            if task.group is not None:
                running[task.group] = running.get(task.group, 0) + 1
        return [
            t for t in self.ready if t.group is None or t.group_limit <= 0 or running.get(t.group, 0) < t.group_limit
        ]

    def finished(self, slot: int, elapsed_s: float | None) -> None:
        """``slot``'s task ended after ``elapsed_s`` seconds (a sort's time feeds rule 5).

        Parameters
        ----------
        slot : int
            The slot.
        elapsed_s : float or None
            Seconds its task took; None when it never ran (its client left
            while it waited): no time is recorded, and a sorter it would have
            compiled is not counted as this slot's.
        """
        task, cold = self.running.pop(slot)
        self.started.pop(slot, None)
        self.copy_from.pop(slot, None)
        if task.sorter is None:
            return
        if elapsed_s is None:
            if cold:
                self.seen.get(slot, set()).discard(task.sorter)
            return
        times = self.times.setdefault(task.sorter, SorterTimes())
        (times.cold if cold else times.warm).append(elapsed_s)

    def _start(self, slot: int, task: Task, now: float | None) -> Task:
        self.ready.remove(task)
        self.compile_after = {k: t for k, t in self.compile_after.items() if k[0] != slot}
        if now is not None:
            self.started[slot] = now
        cold = False
        if task.sorter is not None:
            mine = self.seen.setdefault(slot, set())
            cold = task.sorter not in mine  # a copy's sorters were set by take (rule 4)
            mine.add(task.sorter)
        self.running[slot] = (task, cold)
        return task

    def _worth_compiling(self, slot: int, task: Task, now: float | None) -> bool:
        holding = [s for s, sorters in self.seen.items() if task.sorter in sorters]
        if any(s not in self.running for s in holding):
            return False  # a slot that has it warm is idle: it takes it in this same round
        estimate = self.times.get(task.sorter, SorterTimes()).compile_and_sort_s()
        if estimate is None:
            # Nothing measured (no clock: take it, as run_sorter_jobs would).
            return now is None or now >= self._compile_after(slot, task.sorter, holding, now)
        compile_s, sort_s = estimate
        queued = sum(1 for t in self.ready if t.sorter == task.sorter)
        # The warm slots first end what they run now: maybe an hour-long sort of another sorter.
        free_in = min(self._between_jobs_in(s, now) for s in holding)
        return free_in + queued * sort_s / len(holding) >= compile_s + sort_s

    def _compile_after(self, slot: int, sorter: str, holding: list[int], now: float) -> float:
        """When idle ``slot`` may compile ``sorter`` itself, fixed the first time it is asked (rule 5, unmeasured).

        It waits as long as the sorter's cold sort had run, or took, by then
        (what compiling here costs at least), and at least the grace from its
        first compile's start.
        """
        key = (slot, sorter)
        if key not in self.compile_after:
            cold_starts = [
                self.started[s] for s in holding if s in self.started and self.running[s][0].sorter == sorter and self.running[s][1]
            ]
            cold_s = max([now - start for start in cold_starts] + self.times.get(sorter, SorterTimes()).cold, default=0.0)
            first_compile = min(cold_starts, default=now - FIRST_COMPILE_GRACE_S)
            self.compile_after[key] = max(now + cold_s, first_compile + FIRST_COMPILE_GRACE_S)
        return self.compile_after[key]
