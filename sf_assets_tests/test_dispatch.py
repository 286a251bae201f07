"""The order in which idle launch slots take ready runs (sorter affinity)."""
from __future__ import annotations

from sf_assets.core.dispatch import AffinityQueue, SorterTimes, Task


def _queue(*tasks: Task) -> AffinityQueue:
    queue = AffinityQueue()
    for task in tasks:
        queue.add(task)
    return queue


def _drain(queue: AffinityQueue, slots: int) -> dict[int, list[str]]:
    """Slots take turns (as if every run took equally long) until nothing is ready."""
    taken: dict[int, list[str]] = {slot: [] for slot in range(slots)}
    while len(queue):
        for slot in range(slots):
            task = queue.take(slot)
            if task is not None:
                taken[slot].append(task.key)
    return taken


def test_recording_runs_come_first():
    queue = _queue(Task("MS5/r1", 0, "MS5"), Task("r2", -1), Task("r1", -2))
    assert [queue.take(0).key, queue.take(0).key, queue.take(0).key] == ["r1", "r2", "MS5/r1"]


def test_each_sorter_stays_on_the_slot_that_compiled_it():
    # Plan order is sorter-major, as a spec lists them: run_sorter_jobs would hand out
    # MS5 to both processes first, then SC2 to both (each compiling both sorters).
    plan = [("MS5", r) for r in "1234"] + [("SC2", r) for r in "1234"]
    queue = _queue(*(Task(f"{s}/r{r}", i, s) for i, (s, r) in enumerate(plan)))
    assert _drain(queue, 2) == {
        0: ["MS5/r1", "MS5/r2", "MS5/r3", "MS5/r4"],
        1: ["SC2/r1", "SC2/r2", "SC2/r3", "SC2/r4"],
    }


def test_a_slot_is_never_idle_while_work_is_ready():
    queue = _queue(*(Task(f"MS5/r{i}", i, "MS5") for i in range(4)))
    assert _drain(queue, 2) == {0: ["MS5/r0", "MS5/r2"], 1: ["MS5/r1", "MS5/r3"]}
    # A slot whose own sorter ran out takes an unseen sorter first, then anyone's.
    queue = _queue(Task("A/1", 0, "A"), Task("B/1", 1, "B"), Task("C/1", 2, "C"), Task("B/2", 3, "B"))
    assert queue.take(0).key == "A/1"
    assert queue.take(1).key == "B/1"
    assert queue.take(0).key == "C/1", "C: compiled by no slot yet"
    assert queue.take(0).key == "B/2", "then B, although slot 1 has it warm"
    assert queue.take(1) is None


def test_sorts_added_later_still_follow_affinity():
    queue = _queue(Task("r1", -2), Task("r2", -1))
    assert queue.take(0).key == "r1" and queue.take(1).key == "r2"
    for i, key in enumerate(["SC2/r1", "MS5/r1"]):
        queue.add(Task(key, i * 2, key.split("/")[0]))
    assert queue.take(1).key == "SC2/r1" and queue.take(0).key == "MS5/r1"
    for i, key in enumerate(["SC2/r2", "MS5/r2"]):
        queue.add(Task(key, i * 2 + 1, key.split("/")[0]))
    assert queue.take(0).key == "MS5/r2" and queue.take(1).key == "SC2/r2"


def _warm_up(queue: AffinityQueue, slot: int, sorter: str, cold_s: float, warm_s: float, runs: int) -> None:
    """``slot`` runs ``runs`` sorts of ``sorter``: the first cold, the rest warm."""
    for i in range(runs):
        queue.add(Task(f"{sorter}/done{i}", -100 + i, sorter))
        assert queue.take(slot).key == f"{sorter}/done{i}"
        queue.finished(slot, cold_s if i == 0 else warm_s)


def test_the_last_sort_waits_for_its_warm_slot_rather_than_compile_again():
    queue = AffinityQueue()
    _warm_up(queue, 1, "SC2", cold_s=25.0, warm_s=7.0, runs=2)  # compiling SC2 costs 18 s
    _warm_up(queue, 0, "MS5", cold_s=8.0, warm_s=7.0, runs=2)
    queue.add(Task("SC2/r3", 0, "SC2"))
    queue.add(Task("SC2/r4", 1, "SC2"))
    assert queue.take(1).key == "SC2/r3"  # slot 1 busy with a warm SC2 sort
    # One SC2 sort queued: slot 1 is done with it in about 7 + 7 s; compiling here takes 25 s.
    assert queue.take(0) is None
    queue.finished(1, 7.0)
    assert queue.take(0) is None
    assert queue.take(1).key == "SC2/r4"


def test_a_long_queue_is_worth_compiling_on_an_idle_slot():
    queue = AffinityQueue()
    _warm_up(queue, 1, "SC2", cold_s=25.0, warm_s=7.0, runs=2)
    queue.add(Task("SC2/busy", 0, "SC2"))
    assert queue.take(1).key == "SC2/busy"
    for i in range(4):  # 4 x 7 s queued behind one warm slot: more than compiling (18 s) + one sort
        queue.add(Task(f"SC2/r{i}", i + 1, "SC2"))
    assert queue.take(0).key == "SC2/r0"
    assert queue.running[0] == (Task("SC2/r0", 1, "SC2"), True)


def test_without_timings_a_ready_sort_is_taken_and_with_them_it_waits_for_its_slot():
    queue = AffinityQueue()
    queue.add(Task("SC2/r1", 0, "SC2"))
    queue.add(Task("SC2/r2", 1, "SC2"))
    assert queue.take(1).key == "SC2/r1"
    assert queue.take(0).key == "SC2/r2", "nothing measured yet: as before, never idle"
    queue = AffinityQueue()
    _warm_up(queue, 1, "SC2", cold_s=25.0, warm_s=7.0, runs=2)
    queue.add(Task("SC2/r1", 0, "SC2"))
    # Both slots idle, slot 0 asked first (as the launch asks them): it leaves the sort to slot 1.
    assert queue.take(0) is None
    assert queue.take(1).key == "SC2/r1"


def test_an_idle_slot_that_has_the_sorter_warm_gets_it_even_when_asked_second():
    queue = AffinityQueue()
    queue.add(Task("TDC2/r1", 0, "TDC2"))
    assert queue.take(1).key == "TDC2/r1"
    queue.finished(1, 30.0)  # cold, and no warm time yet: nothing to judge by
    queue.add(Task("TDC2/r2", 1, "TDC2"))
    assert queue.take(0) is None, "slot 1 is idle and has TDC2 compiled"
    assert queue.take(1).key == "TDC2/r2"
    queue.add(Task("TDC2/r3", 2, "TDC2"))
    assert queue.take(0).key == "TDC2/r3", "slot 1 busy, nothing measured warm: as before, taken"


def test_a_group_at_its_limit_waits_while_other_groups_take_the_free_slots():
    launch = [Task(f"MS5/a{i}", i, "MS5", group="cli", group_limit=1) for i in range(3)]
    other = Task("MS5/b0", 10, "MS5", group="backfill")
    queue = _queue(*launch, other)
    assert queue.take(0).key == "MS5/a0"
    # The launch has its one sort running: the next free slot goes to the other group.
    assert queue.take(1).key == "MS5/b0"
    assert queue.take(2) is None
    queue.finished(0, 1.0)
    assert queue.take(0).key == "MS5/a1"  # one ended: the launch's next one starts


def test_no_group_or_a_zero_limit_means_only_the_slots_limit():
    queue = _queue(*(Task(f"MS5/r{i}", i, "MS5", group="cli" if i % 2 else None) for i in range(4)))
    assert [queue.take(slot).key for slot in range(4)] == ["MS5/r0", "MS5/r1", "MS5/r2", "MS5/r3"]


def test_a_slot_waits_for_a_sort_on_its_way_rather_than_compile_a_sorter_twice():
    """A UI backfill's runs reach the service sorter-major: SC2's sorts arrive first, MS5's on their way."""
    queue = AffinityQueue()
    queue.expect("run-ms5", "MS5", until=100.0)
    queue.add(Task("SC2/r1", 0, "SC2"))
    queue.add(Task("SC2/r2", 1, "SC2"))
    assert queue.take(0).key == "SC2/r1"
    assert queue.take(1) is None, "MS5, compiled by no slot, is on its way: SC2 is not compiled a second time"
    queue.add(Task("MS5/r1", 2, "MS5"))
    assert not queue.expected, "the run's sort arrived"
    assert queue.take(1).key == "MS5/r1"
    # Each slot goes on with the sorter it compiled.
    queue.finished(0, 20.0)
    assert queue.take(0).key == "SC2/r2"


def test_a_sort_on_its_way_never_holds_back_a_sort_a_slot_would_take_anyway():
    queue = AffinityQueue()
    queue.expect("run-ms5", "MS5", until=100.0)
    queue.add(Task("SC2/r1", 0, "SC2"))
    assert queue.take(0).key == "SC2/r1", "rule 3: SC2 compiled by no slot"
    queue.finished(0, 20.0)
    queue.add(Task("SC2/r2", 1, "SC2"))
    assert queue.take(0).key == "SC2/r2", "rule 2: warm here"
    queue = AffinityQueue()
    queue.expect("run-sc2", "SC2", until=100.0)
    queue.add(Task("SC2/r1", 0, "SC2"))
    queue.add(Task("SC2/r2", 1, "SC2"))
    assert queue.take(0).key == "SC2/r1"
    assert queue.take(1).key == "SC2/r2", "the sort on its way is SC2 too: waiting for it would not spare a compile"


def test_a_slot_stops_waiting_for_a_sort_past_its_time_or_whose_run_ended():
    queue = AffinityQueue()
    queue.expect("late", "MS5", until=10.0)
    queue.expect("ended", "TDC2", until=100.0)
    queue.add(Task("SC2/r1", 0, "SC2"))
    queue.add(Task("SC2/r2", 1, "SC2"))
    assert queue.take(0).key == "SC2/r1"
    assert queue.take(1) is None
    assert not queue.forget(now=5.0), "neither is over yet"
    assert queue.forget(now=10.0) and set(queue.expected) == {"ended"}
    assert queue.take(1) is None
    assert queue.forget(now=11.0, gone=lambda key: key == "ended") and not queue.expected
    assert queue.take(1).key == "SC2/r2", "nothing on its way: compiled here, as before"


def test_a_second_compile_waits_a_moment_for_other_sorters_to_arrive():
    """Runs reach the service a second or so apart: the first two sorts are often of one sorter."""
    from sf_assets.core.dispatch import FIRST_COMPILE_GRACE_S

    queue = _queue(Task("SC2/r1", 0, "SC2"), Task("SC2/r2", 1, "SC2"))
    assert queue.take(0, now=100.0).key == "SC2/r1"
    assert queue.take(1, now=101.0) is None, "SC2's first compile only just started on slot 0"
    queue.add(Task("MS5/r1", 2, "MS5"))
    assert queue.take(1, now=101.5).key == "MS5/r1"
    # With nothing else arriving, the grace ends and the idle slot compiles SC2 too, as before.
    queue = _queue(Task("SC2/r1", 0, "SC2"), Task("SC2/r2", 1, "SC2"))
    assert queue.take(0, now=100.0).key == "SC2/r1"
    assert queue.take(1, now=100.5) is None
    assert queue.take(1, now=100.0 + FIRST_COMPILE_GRACE_S - 0.1) is None
    assert queue.take(1, now=100.0 + FIRST_COMPILE_GRACE_S).key == "SC2/r2"


def test_unmeasured_an_idle_slot_waits_for_the_warm_slot_no_longer_than_its_cold_sort_had_run():
    """make bench's campaign end: slot 0 is out of MountainSort5 sorts 47 s into slot 1's first SpykingCircus2.

    Compiling SpykingCircus2 on slot 0 took 31-43 s; slot 1, once warm, sorted
    the three left in 6 s each.  Slot 0 waits, and the measured times then say
    compiling does not pay.
    """
    queue = _queue(*(Task(f"SC2/r{i}", i, "SC2") for i in range(4)))
    assert queue.take(1, now=100.0).key == "SC2/r0"
    for i in range(4):
        queue.add(Task(f"MS5/r{i}", 10 + i, "MS5"))
    for i in range(4):
        assert queue.take(0, now=100.0 + 11 * i).key == f"MS5/r{i}"
        queue.finished(0, 11.0)
    assert queue.take(0, now=147.0) is None, "SC2's cold sort has run 47 s: compiling here costs at least that"
    queue.finished(1, 49.4)
    assert queue.take(1, now=149.4).key == "SC2/r1"
    assert queue.take(0, now=150.0) is None, "one cold SC2 measured, no warm one yet: still waiting"
    queue.finished(1, 5.5)
    assert queue.take(0, now=155.0) is None, "measured: 2 x 5.5 s on the warm slot against 44 + 5.5 s here"
    assert [queue.take(1, now=155.0).key] == ["SC2/r2"]
    # The wait is bounded: had nothing been measured by then, slot 0 compiles at 147 + 47 s.
    queue = _queue(*(Task(f"SC2/r{i}", i, "SC2") for i in range(3)))
    assert queue.take(1, now=100.0).key == "SC2/r0"
    assert queue.take(0, now=147.0) is None
    assert queue.take(0, now=193.9) is None
    assert queue.take(0, now=194.0).key == "SC2/r1"


def test_an_idle_slot_takes_a_copy_of_the_busy_warm_worker_once_the_first_compile_had_its_grace():
    queue = AffinityQueue(copies=True)
    for i in range(3):
        queue.add(Task(f"SC2/r{i}", i, "SC2"))
    assert queue.take(0, now=0.0).key == "SC2/r0"  # slot 0 compiles SC2
    assert queue.take(1, now=1.0) is None, "within the grace: the sorts of other sorters may still arrive"
    assert 1 not in queue.copy_from
    task = queue.take(1, now=10.0)
    assert task.key == "SC2/r1"
    assert queue.copy_from[1] == (0, set()), "a copy of slot 0's worker; slot 1 had nothing compiled"
    assert queue.seen[1] == {"SC2"} and queue.running[1] == (task, False), "a copy's sort is warm"


def test_a_sorter_the_jit_cache_holds_starts_on_an_idle_slot_at_once_without_a_copy():
    # A campaign after the work root's first: slot 0 has just started the first Simple sort, whose
    # code a new worker loads from the JIT cache.  Slots 1 and 2 start the next ones at once on new
    # workers, neither waiting for slot 0's sort to end nor for a copy of its worker.
    queue = AffinityQueue(copies=True, cached={"Simple"}, cpus=8)
    for i in range(3):
        queue.add(Task(f"Simple/r{i}", i, "Simple"))
    queue.add(Task("SC2/r0", 3, "SC2"))
    queue.add(Task("SC2/r1", 4, "SC2"))
    assert queue.take(0, now=0.0).key == "Simple/r0"
    assert queue.take(1, now=0.1).key == "Simple/r1" and 1 not in queue.copy_from
    assert queue.take(2, now=0.2).key == "Simple/r2" and 2 not in queue.copy_from
    assert queue.running[1][1] is True, "a cold sort: its time measures what a new worker costs"
    assert queue.take(3, now=0.3).key == "SC2/r0", "a sorter nobody has compiled: one slot compiles it"
    assert queue.take(4, now=0.4) is None, "not cached: within the grace, the second waits as before"


def test_without_a_spare_cpu_a_cached_sorter_waits_for_a_copy_as_before():
    # Slots outnumber the CPUs: a new worker's loading would slow the sorts running.
    queue = AffinityQueue(copies=True, cached={"Simple"}, cpus=2)
    for i in range(4):
        queue.add(Task(f"Simple/r{i}", i, "Simple"))
    assert queue.take(0, now=0.0).key == "Simple/r0"
    assert queue.take(1, now=0.1).key == "Simple/r1" and 1 not in queue.copy_from, "the second CPU was spare"
    assert queue.take(2, now=0.2) is None, "both CPUs busy: within the grace, as before"
    assert queue.take(2, now=10.0).key == "Simple/r2" and queue.copy_from[2][0] in (0, 1), "then a copy"


def test_a_slot_still_waiting_for_its_copy_is_never_copied_itself():
    # Eight slots, one sorter, nothing compiled: what a Slurm allocation's service sees at a campaign's
    # start.  Slot 1 waits for a copy of slot 0's worker (rule 4); until that copy arrives slot 1's
    # worker has compiled nothing, so a third slot copies slot 0 too, never slot 1 (which started
    # later and so looked nearer its end).
    queue = AffinityQueue(copies=True)
    for i in range(4):
        queue.add(Task(f"Simple/r{i}", i, "Simple"))
    queue.take(0, now=0.0)  # slot 0 compiles Simple
    queue.take(1, now=4.0)
    assert queue.copy_from[1] == (0, set())
    queue.take(2, now=5.0)
    assert queue.copy_from[2] == (0, set()), "a copy of the compiling worker, not of slot 1's uncompiled one"
    queue.copied(1)  # slot 1's copy arrived: its worker has Simple compiled and may be copied now
    assert 1 not in queue.copy_from
    queue.take(3, now=6.0)
    assert queue.copy_from[3][0] in (0, 1)
    queue.finished(2, 0.2)
    assert 2 not in queue.copy_from


def test_without_copies_the_idle_slot_waits_for_the_warm_slot_as_before():
    queue = AffinityQueue()
    for i in range(3):
        queue.add(Task(f"SC2/r{i}", i, "SC2"))
    queue.take(0, now=0.0)
    assert queue.take(1, now=10.0) is None and not queue.copy_from


def test_a_holder_busy_for_longer_than_a_compile_is_not_copied():
    queue = AffinityQueue(copies=True)
    queue.times["SC2"] = SorterTimes(cold=[40.0], warm=[10.0])  # compiling: 30 s
    queue.times["Long"] = SorterTimes(cold=[600.0], warm=[500.0])
    queue.seen[0] = {"SC2", "Long"}
    queue.add(Task("Long/r0", 0, "Long"))
    queue.take(0, now=0.0)  # slot 0 sorts for about 500 s
    for i in range(4):
        queue.add(Task(f"SC2/r{i}", 1 + i, "SC2"))
    assert queue.take(1, now=1.0).key == "SC2/r0", "compiled here (rule 5), not waiting 499 s for a copy"
    assert 1 not in queue.copy_from and queue.running[1][1] is True


def test_a_failed_copy_makes_the_sort_cold_on_the_slots_own_worker():
    queue = AffinityQueue(copies=True)
    queue.add(Task("SC2/r0", 0, "SC2"))
    queue.add(Task("SC2/r1", 1, "SC2"))
    queue.seen[1] = {"MS5"}
    queue.take(0, now=0.0)
    task = queue.take(1, now=10.0)
    assert queue.copy_from.pop(1) == (0, {"MS5"})
    queue.copy_failed(1, {"MS5", "SC2"})
    assert queue.seen[1] == {"MS5", "SC2"} and queue.running[1] == (task, True)


def test_a_task_whose_client_left_before_it_ran_records_no_time_and_compiles_nothing():
    queue = AffinityQueue()
    for i in range(3):
        queue.add(Task(f"SC2/r{i}", i, "SC2"))
    queue.seen[1] = {"MS5"}
    queue.take(0, now=0.0)  # cold: slot 0 would compile SC2
    queue.finished(0, None)  # its client left before the sort started
    assert "SC2" not in queue.seen[0] and "SC2" not in queue.times
    queue.seen[0] = {"SC2"}
    queue.take(0, now=1.0)  # warm this time
    queue.finished(0, None)
    assert queue.seen[0] == {"SC2"} and "SC2" not in queue.times


def test_a_sort_whose_warm_slot_is_busy_with_a_long_sort_of_another_sorter_compiles_here():
    queue = AffinityQueue()  # no copies: rule 5 alone
    queue.times["SC2"] = SorterTimes(cold=[40.0], warm=[10.0])  # compiling: 30 s
    queue.times["Long"] = SorterTimes(cold=[600.0], warm=[500.0])
    queue.seen[0] = {"SC2", "Long"}
    queue.add(Task("Long/r0", 0, "Long"))
    queue.take(0, now=0.0)  # slot 0 sorts for about 500 s more
    queue.add(Task("SC2/r0", 1, "SC2"))
    # One SC2 sort queued: 10 s of work for the warm slot, but only after its 499 s.
    assert queue.take(1, now=1.0).key == "SC2/r0"
    assert queue.running[1][1] is True, "a cold sort: compiled here"


def test_a_sort_whose_warm_slot_ends_its_sort_soon_waits_for_it():
    queue = AffinityQueue()
    queue.times["SC2"] = SorterTimes(cold=[40.0], warm=[10.0])
    queue.seen[0] = {"SC2"}
    queue.add(Task("SC2/r0", 0, "SC2"))
    queue.take(0, now=0.0)  # a warm SC2 sort, about 10 s
    queue.add(Task("SC2/r1", 1, "SC2"))
    assert queue.take(1, now=5.0) is None  # 5 s left + 10 s of queue < 30 s compile + 10 s
